package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
)

// redisDB is this package's database of the test Redis.
const redisDB = 10

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// build compiles couponhold once for the package's tests.
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "couponhold")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "couponhold")
		out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// app is a set of couponhold listener processes on one Redis.
type app struct {
	t     *testing.T
	bin   string
	url   string
	rdb   redis.UniversalClient
	sched *expiry.Scheduler
	extra []string // flags of every listener
	dir   string   // the listeners' logs

	mu    sync.Mutex
	procs map[string]*exec.Cmd
	n     int
}

func newApp(t *testing.T, url string, rdb redis.UniversalClient, extra ...string) *app {
	a := &app{t: t, bin: build(t), url: url, rdb: rdb, extra: extra, procs: map[string]*exec.Cmd{}, dir: t.TempDir(),
		sched: expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: prefix})}
	t.Cleanup(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, c := range a.procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	return a
}

// start starts one more listener and returns its ID.
func (a *app) start(extra ...string) string {
	a.t.Helper()
	a.mu.Lock()
	a.n++
	id := "L" + strconv.Itoa(a.n)
	a.mu.Unlock()
	args := append([]string{"listen", "--redis-url", a.url, "--id", id}, a.extra...)
	c := exec.Command(a.bin, append(args, extra...)...)
	logf, err := os.Create(a.logPath(id))
	if err != nil {
		a.t.Fatal(err)
	}
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	a.procs[id] = c
	a.mu.Unlock()
	return id
}

// stop ends listener id with sig and waits for it to exit.
func (a *app) stop(id string, sig syscall.Signal) {
	a.t.Helper()
	a.mu.Lock()
	c := a.procs[id]
	delete(a.procs, id)
	a.mu.Unlock()
	_ = c.Process.Signal(sig)
	err := c.Wait()
	if sig == syscall.SIGTERM && err != nil {
		out, _ := os.ReadFile(a.logPath(id))
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		a.t.Errorf("listener %s did not stop cleanly on SIGTERM: %v; its last lines:\n%s", id, err,
			strings.Join(lines[max(0, len(lines)-10):], "\n"))
	}
}

func (a *app) logPath(id string) string { return filepath.Join(a.dir, id+".log") }

// logLines logs the lines of every listener's log that contain snippet,
// with the listener's id, for a failure's story.
func (a *app) logLines(snippet string) {
	a.t.Helper()
	logs, _ := filepath.Glob(filepath.Join(a.dir, "*.log"))
	for _, path := range logs {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(raw)) {
			if strings.Contains(line, snippet) {
				a.t.Logf("%s: %s", strings.TrimSuffix(filepath.Base(path), ".log"), strings.TrimSpace(line))
			}
		}
	}
}

func (a *app) running() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id := range a.procs {
		ids = append(ids, id)
	}
	return ids
}

// waitShared waits until n listeners hold every shard between them.
func (a *app) waitShared(n int) {
	a.t.Helper()
	testkit.WaitFor(a.t, 30*time.Second, fmt.Sprintf("%d listeners sharing every shard", n), func() bool {
		st, err := a.sched.Inspect(context.Background())
		if err != nil || len(st.Listeners) != n {
			return false
		}
		for _, sh := range st.Shards {
			if sh.Holder == "" {
				return false
			}
		}
		return true
	})
}

// released returns how many times each code was released.
func (a *app) released() map[string]int {
	m, err := a.rdb.HGetAll(context.Background(), "{"+prefix+"pool}:released").Result()
	if err != nil {
		a.t.Fatal(err)
	}
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k], _ = strconv.Atoi(v)
	}
	return out
}

// stream holds n codes through the Scheduler ("t-<i>") and n with a plain
// SET … PX ("p-<i>"), spread over d, each for 300 ms to 1.3 s, and returns
// when the last is set.
func (a *app) stream(n int, d time.Duration) {
	a.t.Helper()
	ctx := context.Background()
	step := d / time.Duration(n)
	for i := range n {
		hold := 300*time.Millisecond + rand.N(time.Second)
		if err := a.sched.Schedule(ctx, prefix+"hold:t-"+strconv.Itoa(i), time.Now().Add(hold)); err != nil {
			a.t.Fatal(err)
		}
		if err := a.rdb.Set(ctx, prefix+"hold:p-"+strconv.Itoa(i), "1", hold).Err(); err != nil {
			a.t.Fatal(err)
		}
		time.Sleep(step) // pacing the stream, not synchronisation
	}
}

// waitAll waits until every code of a stream of n was released, and returns
// the counts; when some are missing it says which, and where their timers
// are.
func (a *app) waitAll(n int) map[string]int {
	a.t.Helper()
	var got map[string]int
	deadline := time.Now().Add(testkit.Scale(60 * time.Second))
	for got = a.released(); len(got) < 2*n; got = a.released() {
		if time.Now().After(deadline) {
			ctx := context.Background()
			var missing []string
			for _, kind := range []string{"t-", "p-"} {
				for i := range n {
					code := kind + strconv.Itoa(i)
					if got[code] == 0 {
						key := prefix + "hold:" + code
						score, err := a.rdb.ZScore(ctx, prefix+"expiry:due:{"+strconv.Itoa(a.sched.ShardOf(key))+"}", key).Result()
						missing = append(missing, fmt.Sprintf("%s(shard %d, index %v %v, ttl %v)", code, a.sched.ShardOf(key),
							score, err, a.rdb.PTTL(ctx, key).Val()))
					}
				}
			}
			a.t.Fatalf("%d of %d holds never released: %v", len(missing), 2*n, missing[:min(len(missing), 30)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	return got
}

func singleURL() string { return "redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB) }

// onRedisAndCluster runs scenario on a single Redis and on a Cluster.
func onRedisAndCluster(t *testing.T, scenario func(*testing.T, *app)) {
	t.Run("redis", func(t *testing.T) { scenario(t, newApp(t, singleURL(), testkit.Redis(t, redisDB))) })
	t.Run("cluster", func(t *testing.T) { scenario(t, newApp(t, testkit.ClusterURL(), testkit.Cluster(t, prefix))) })
}

// startShared starts n listeners and waits until they share every shard.
func (a *app) startShared(n int) {
	a.t.Helper()
	for range n {
		a.start()
	}
	a.waitShared(n)
}

// streamAsync runs stream(n, d) on a goroutine; the channel is closed when
// the last hold is set.
func (a *app) streamAsync(n int, d time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.stream(n, d)
	}()
	return done
}

// Holds released across 20 SIGTERM handovers and rebalances (a listener
// stops, another joins) during a stream of 1,000 scheduled and 1,000 plain
// holds: every one released, none twice.
func TestHandoversReleaseEachHoldOnce(t *testing.T) {
	onRedisAndCluster(t, func(t *testing.T, a *app) {
		a.startShared(3)
		const n = 1000
		done := a.streamAsync(n, 12*time.Second)
		for i := range 20 {
			ids := a.running()
			a.stop(ids[i%len(ids)], syscall.SIGTERM) // its shards go to the two others
			a.start()                                // and are rebalanced when it joins
			a.waitShared(3)
		}
		<-done
		got := a.waitAll(n)
		var twice []string
		for code, c := range got {
			if c != 1 {
				twice = append(twice, fmt.Sprintf("%s×%d", code, c))
				a.logLines(`"code":"` + code + `"`)
			}
		}
		if len(twice) > 0 {
			t.Fatalf("%d of %d holds released more than once (their stories above): %v", len(twice), 2*n, twice[:min(len(twice), 20)])
		}
		st, err := a.sched.Inspect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if timers, _ := st.Timers(); timers != 0 {
			t.Fatalf("%d timers left in the due index", timers)
		}
	})
}

// A listener killed (kill -9) while holds expire on its shards loses none:
// the survivors take its shards and release what it left, the plain keys
// included (at least once).
func TestKilledHolderLosesNoHold(t *testing.T) {
	onRedisAndCluster(t, func(t *testing.T, a *app) {
		a.startShared(3)
		const n = 500
		done := a.streamAsync(n, 4*time.Second)
		testkit.WaitFor(t, 30*time.Second, "mid-stream: a fifth of the holds released", func() bool { return len(a.released()) >= 2*n/5 })
		a.stop(a.running()[0], syscall.SIGKILL)
		<-done
		got := a.waitAll(n)
		twice := 0
		for _, c := range got {
			if c > 1 {
				twice++
			}
		}
		t.Logf("all %d holds released; %d of them twice (at least once after kill -9)", 2*n, twice)
	})
}

// A release that keeps failing is retried from Redis, through a restart of
// every listener, and parked in the dead set after --max-attempts; re-arming
// it, with the pool working again, releases it.
func TestFailingReleaseEndsDeadAndRearms(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	a := newApp(t, singleURL(), rdb, "--max-attempts", "4", "--retry-delay", "2s")
	for range 3 {
		a.start("--reject", "bad-")
	}
	a.waitShared(3)
	ctx := context.Background()
	if err := a.sched.Schedule(ctx, prefix+"hold:bad-1", time.Now().Add(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	attempts := func() (int, bool) {
		dead, _ := a.sched.Dead(ctx, 0)
		for _, d := range dead {
			if d.Key == prefix+"hold:bad-1" {
				return d.Attempts, true
			}
		}
		n, _ := rdb.HGet(ctx, prefix+"expiry:due:{"+strconv.Itoa(a.sched.ShardOf(prefix+"hold:bad-1"))+"}:attempts", prefix+"hold:bad-1").Int()
		return n, false
	}
	testkit.WaitFor(t, 20*time.Second, "a first failed attempt", func() bool { n, _ := attempts(); return n >= 1 })
	for _, id := range a.running() { // every listener restarts; the retry waits in Redis
		a.stop(id, syscall.SIGTERM)
	}
	if n, dead := attempts(); dead || n >= 4 {
		t.Fatalf("the hold died (%d attempts) before the listeners restarted: the test needs a longer --retry-delay", n)
	}
	for range 3 {
		a.start("--reject", "bad-")
	}
	a.waitShared(3)
	testkit.WaitFor(t, 30*time.Second, "the hold in the dead set after 4 attempts", func() bool {
		n, dead := attempts()
		return dead && n == 4
	})
	dead, err := a.sched.Dead(ctx, 0)
	if err != nil || len(dead) != 1 || !strings.Contains(dead[0].LastError, "refused") {
		t.Fatalf("dead set %+v (%v), want bad-1 with the pool's error", dead, err)
	}
	st, err := a.sched.Inspect(ctx)
	if err != nil || st.Dead() != 1 {
		t.Fatalf("Inspect counts %d dead (%v), want 1", st.Dead(), err)
	}
	if got := a.released()["bad-1"]; got != 0 {
		t.Fatalf("bad-1 released %d times while the pool refused it", got)
	}

	for _, id := range a.running() { // the pool works again
		a.stop(id, syscall.SIGTERM)
	}
	for range 3 {
		a.start()
	}
	a.waitShared(3)
	out, err := exec.Command(a.bin, "rearm", "--redis-url", a.url, "--code", "bad-1").CombinedOutput()
	if err != nil {
		t.Fatalf("couponhold rearm: %v\n%s", err, out)
	}
	testkit.WaitFor(t, 20*time.Second, "the re-armed hold released", func() bool { return a.released()["bad-1"] == 1 })
	testkit.WaitFor(t, 10*time.Second, "its attempts forgotten", func() bool { n, dead := attempts(); return n == 0 && !dead })
	if err := exec.Command(a.bin, "rearm", "--redis-url", a.url, "--code", "bad-1").Run(); err == nil {
		t.Fatal("rearm of a hold that is not dead succeeded")
	}
}
