package expiry_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
)

// replicas are listeners sharing one Scheduler's index, each recording the
// keys it handled.
type replicas struct {
	mu      sync.Mutex
	byKey   map[string]int
	byID    map[string]int
	l       []*expiry.Listener
	stop    []func() error
	sweeps  []*atomic.Int64
	onShard atomic.Int64
}

// startReplica starts one more listener on client, sharing index.
func (r *replicas) start(t *testing.T, client redis.UniversalClient, index string, cfg expiry.ListenerConfig) *expiry.Listener {
	t.Helper()
	i := len(r.l)
	sweeps := new(atomic.Int64)
	r.sweeps = append(r.sweeps, sweeps)
	id := "replica-" + strconv.Itoa(i)
	h := expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error {
		r.mu.Lock()
		r.byKey[ev.Key]++
		r.byID[id]++
		r.mu.Unlock()
		return nil
	})
	cfg.ID = id
	cfg.Scheduler = expiry.NewScheduler(client, expiry.SchedulerConfig{KeyPrefix: "app:", Index: index})
	cfg.Logger = testLogger(t)
	cfg.OnShards = func([]string, bool) { r.onShard.Add(1) }
	if cfg.Interval > 0 {
		cfg.OnInterval = func(context.Context) { sweeps.Add(1) }
	}
	l := expiry.NewListener(client, h, cfg)
	r.l = append(r.l, l)
	r.stop = append(r.stop, run(t, l))
	return l
}

func newReplicas() *replicas {
	return &replicas{byKey: map[string]int{}, byID: map[string]int{}}
}

// waitSpread waits until the given listeners hold all 16 shards between
// them, evenly, and one of them the sweep.
func waitSpread(t *testing.T, timeout time.Duration, ls ...*expiry.Listener) {
	t.Helper()
	testkit.WaitFor(t, timeout, fmt.Sprintf("16 shards spread over %d listeners", len(ls)), func() bool {
		total, sweepers := 0, 0
		for _, l := range ls {
			s := l.Stats()
			if s.Shards < 16/len(ls) || s.Listeners != len(ls) {
				return false
			}
			total += s.Shards
			if s.Sweeps {
				sweepers++
			}
		}
		return total == 16 && sweepers == 1
	})
}

// Three listeners on one Redis share a burst: every timer (and every key
// written without the Scheduler) is handled once, by one of them, and none
// does most of the work.
func TestReplicasShareTheWork(t *testing.T) {
	rdb := setup(t)
	r := newReplicas()
	for range 3 {
		r.start(t, rdb, "share:due", expiry.ListenerConfig{})
	}
	waitSpread(t, 10*time.Second, r.l...)

	const timers, plain = 3000, 300
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "app:", Index: "share:due"})
	deadline := time.Now().Add(200 * time.Millisecond)
	var ts []expiry.Timer
	for i := range timers {
		ts = append(ts, expiry.Timer{Key: "app:t:" + strconv.Itoa(i), Deadline: deadline})
	}
	ctx := context.Background()
	if err := sched.ScheduleMany(ctx, ts...); err != nil {
		t.Fatal(err)
	}
	for i := range plain { // as another program writes them: no index entry
		if err := rdb.Set(ctx, "app:p:"+strconv.Itoa(i), "1", 200*time.Millisecond).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Every listener hears every event: once each has heard them all and its
	// queue is empty, nothing more is coming.
	testkit.WaitFor(t, 30*time.Second, "every listener heard every expiry and finished", func() bool {
		for _, l := range r.l {
			s := l.Stats()
			if s.Received < timers+plain || s.QueueDepth > 0 || s.InFlight > 0 {
				return false
			}
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.byKey) == timers+plain
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, n := range r.byKey {
		if n != 1 {
			t.Errorf("%s handled %d times", k, n)
		}
	}
	for id, n := range r.byID {
		if n > (timers+plain)*6/10 {
			t.Errorf("%s handled %d of %d keys", id, n, timers+plain)
		}
	}
	var skipped, repeated, reaped uint64
	for _, l := range r.l {
		s := l.Stats()
		skipped, repeated, reaped = skipped+s.Skipped, repeated+s.Repeated, reaped+s.Reaped
	}
	// Two listeners of three skip each event, but a listener that released a
	// shard moments before parks its events instead, for a moment
	// (handoverOverlap): this burst falls due right after the spread.
	if skipped > 2*(timers+plain) || skipped < timers+plain || reaped < timers-repeated {
		t.Errorf("skipped %d events (want at most %d: two listeners of three skip each, and at least %d), reaped %d, repeated %d",
			skipped, 2*(timers+plain), timers+plain, reaped, repeated)
	}
	t.Logf("by listener %v; events skipped %d, repeated after a reap %d; timers reaped %d", r.byID, skipped, repeated, reaped)
}

// A listener joining takes its share from the others at once, and one
// leaving hands its shards over at once: neither waits for a lease to lapse
// (the lease TTL here is far longer than the test's wait).
func TestReplicasRebalanceOnJoinAndLeave(t *testing.T) {
	rdb := setup(t)
	r := newReplicas()
	cfg := expiry.ListenerConfig{LeaseTTL: time.Minute, Interval: 20 * time.Millisecond}
	a, b := r.start(t, rdb, "join:due", cfg), r.start(t, rdb, "join:due", cfg)
	waitSpread(t, 10*time.Second, a, b)
	c := r.start(t, rdb, "join:due", cfg)
	waitSpread(t, 5*time.Second, a, b, c)

	// Inspect sees what the listeners say they hold.
	st, err := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: "join:due"}).Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Listeners) != 3 || len(st.Shards) != 16 {
		t.Fatalf("inspect: %d listeners, %d shards", len(st.Listeners), len(st.Shards))
	}
	for _, ls := range st.Listeners {
		for _, l := range r.l {
			if l.ID() == ls.ID && (l.Stats().Shards != len(ls.Shards) || l.Stats().Sweeps != ls.Sweeps || ls.Until.Before(time.Now())) {
				t.Fatalf("inspect says %s holds %d shards (sweeps %v), it says %+v", ls.ID, len(ls.Shards), ls.Sweeps, l.Stats())
			}
		}
	}

	// One listener sweeps: the others' counts stand still while its grows.
	var sweeper int
	for i, l := range r.l {
		if l.Stats().Sweeps {
			sweeper = i
		}
	}
	before := make([]int64, 3)
	for i := range before {
		before[i] = r.sweeps[i].Load()
	}
	testkit.WaitFor(t, 5*time.Second, "five sweeps", func() bool { return r.sweeps[sweeper].Load() >= before[sweeper]+5 })
	for i := range before {
		if i != sweeper && r.sweeps[i].Load() != before[i] {
			t.Fatalf("listener %d swept while %d held the sweep lease", i, sweeper)
		}
	}

	// The sweeper leaves cleanly: the other two take its shards and the sweep.
	if err := r.stop[sweeper](); err != nil {
		t.Fatal(err)
	}
	var rest []*expiry.Listener
	for i, l := range r.l {
		if i != sweeper {
			rest = append(rest, l)
		}
	}
	waitSpread(t, 5*time.Second, rest...)
	if r.onShard.Load() < 3 {
		t.Fatalf("OnShards called %d times", r.onShard.Load())
	}
}

// A listener that dies (its Redis connections cut: it can neither renew nor
// release) loses its leases after the lease TTL; the others take its shards
// and handle the timers due there.
func TestReplicasTakeOverFromDeadListener(t *testing.T) {
	rdb := setup(t)
	proxy := testkit.NewProxy(t, testkit.RedisAddr())
	opt := *rdb.Options()
	opt.Addr = proxy.Addr()
	opt.MaxRetries = -1
	dying := redis.NewClient(&opt)
	t.Cleanup(func() { dying.Close() })

	r := newReplicas()
	cfg := expiry.ListenerConfig{LeaseTTL: time.Second, ShutdownTimeout: time.Second}
	dead := r.start(t, dying, "dead:due", cfg)
	b, c := r.start(t, rdb, "dead:due", cfg), r.start(t, rdb, "dead:due", cfg)
	waitSpread(t, 10*time.Second, dead, b, c)

	proxy.Cut()
	cut := time.Now()
	waitSpread(t, 10*time.Second, b, c)
	t.Logf("shards taken over %v after the holder was cut off (lease TTL 1s)", time.Since(cut).Round(time.Millisecond))

	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "app:", Index: "dead:due"})
	var ts []expiry.Timer
	for i := range 500 {
		ts = append(ts, expiry.Timer{Key: "app:d:" + strconv.Itoa(i), Deadline: time.Now().Add(100 * time.Millisecond)})
	}
	if err := sched.ScheduleMany(context.Background(), ts...); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 20*time.Second, "every timer handled by the survivors", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.byKey) == len(ts)
	})
	r.mu.Lock()
	if r.byID["replica-0"] != 0 {
		t.Errorf("the dead listener handled %d timers", r.byID["replica-0"])
	}
	r.mu.Unlock()
	proxy.Restore()
}
