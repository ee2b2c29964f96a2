package expiry_test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
)

func indexLen(t *testing.T, rdb *redis.Client, s *expiry.Scheduler) int64 {
	t.Helper()
	var n int64
	for _, shard := range s.Shards() {
		n += rdb.ZCard(context.Background(), shard).Val()
	}
	return n
}

func TestSchedulerScheduleAndCancel(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	s := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: "t:due", Shards: 3})
	if got := s.Shards(); len(got) != 3 || got[0] != "t:due:{0}" {
		t.Fatalf("shards %v", got)
	}
	deadline := time.Now().Add(time.Hour)
	if err := s.Schedule(ctx, "job:1", deadline); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(ctx, "job:1").Val(); ttl < 59*time.Minute || ttl > time.Hour {
		t.Fatalf("ttl %v", ttl)
	}
	if n := indexLen(t, rdb, s); n != 1 {
		t.Fatalf("index has %d entries", n)
	}
	if err := s.Cancel(ctx, "job:1"); err != nil {
		t.Fatal(err)
	}
	if rdb.Exists(ctx, "job:1").Val() != 0 || indexLen(t, rdb, s) != 0 {
		t.Fatal("cancel left the key or its index entry")
	}
	if err := s.Cancel(ctx, "job:never"); err != nil {
		t.Fatalf("cancel of a missing timer: %v", err)
	}
}

func TestSchedulerReap(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	s := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: "t:due", Shards: 2, ReapBatch: 2})
	past := time.Now().Add(-time.Second)
	for i := range 3 {
		if err := s.Schedule(ctx, "gone:"+strconv.Itoa(i), past); err != nil {
			t.Fatal(err)
		}
	}
	// An entry due by the index whose key Redis still holds for a while:
	// it must stay, re-scored by its real TTL.
	rdb.Set(ctx, "alive", "1", time.Hour)
	rdb.ZAdd(ctx, s.Shards()[0], redis.Z{Score: float64(past.UnixMilli()), Member: "alive"})
	// An entry whose key lost its TTL is no timer any more.
	rdb.Set(ctx, "persisted", "1", 0)
	rdb.ZAdd(ctx, s.Shards()[1], redis.Z{Score: float64(past.UnixMilli()), Member: "persisted"})
	// The timers set for a past deadline got a TTL of 1 ms: wait until
	// Redis has them gone (EXISTS expires a key whose time has come).
	testkit.WaitFor(t, 5*time.Second, "the 1 ms timers gone", func() bool {
		return rdb.Exists(ctx, "gone:0", "gone:1", "gone:2").Val() == 0
	})

	var total expiry.ReapResult
	for range 10 {
		r, err := s.Reap(ctx)
		if err != nil {
			t.Fatal(err)
		}
		total.Gone += r.Gone
		if !r.More && r.Due == 0 {
			break
		}
	}
	if total.Gone != 4 {
		t.Fatalf("reaped %d, want 4 (3 expired, 1 persisted)", total.Gone)
	}
	if n := indexLen(t, rdb, s); n != 1 {
		t.Fatalf("index has %d entries, want only the live key", n)
	}
	score := rdb.ZScore(ctx, s.Shards()[0], "alive").Val()
	if time.UnixMilli(int64(score)).Before(time.Now().Add(59 * time.Minute)) {
		t.Fatalf("live key not re-scored by its TTL: %v", time.UnixMilli(int64(score)))
	}
}

// With the scheduler, a timer fires on time even when Redis holds many other
// keys with a TTL; here we check that every scheduled key reaches its handler
// and leaves the index.
func TestListenerWithSchedulerFiresEveryTimer(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range 50000 {
			p.Set(ctx, "other:"+strconv.Itoa(i), "1", time.Hour)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: "t:due"})
	var mu sync.Mutex
	late := map[string]time.Duration{}
	deadlines := map[string]time.Time{}
	h := expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error {
		mu.Lock()
		defer mu.Unlock()
		late[ev.Key] = ev.Received.Sub(deadlines[ev.Key])
		return nil
	})
	mux := expiry.NewServeMux()
	mux.Handle("timer:", h)
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{Scheduler: s})
	run(t, l)
	waitSubscribed(t, l, 1)

	const n = 500
	start := time.Now().Add(100 * time.Millisecond)
	for i := range n {
		key := "timer:" + strconv.Itoa(i)
		d := start.Add(time.Duration(i) * time.Millisecond)
		mu.Lock()
		deadlines[key] = d
		mu.Unlock()
		if err := s.Schedule(ctx, key, d); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 60*time.Second, "every timer handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(late) == n
	})
	testkit.WaitFor(t, 5*time.Second, "index emptied", func() bool { return indexLen(t, rdb, s) == 0 })
	var worst time.Duration
	for _, d := range late {
		worst = max(worst, d)
	}
	t.Logf("%d timers among 50,000 other TTL keys: worst lateness %v", n, worst)
}

// Another program (PHP, say) writes a timer into the due index itself, as
// the README's integration guide says: SET the key with its TTL, ZADD it to
// shard crc32(key) % 16 scored by its deadline in Unix ms, and PUBLISH the
// shard and deadline on the index's wake channel. The listener's reaper
// reaps it at its deadline, and it is handled once.
func TestTimerWrittenByAnotherProgramIsReaped(t *testing.T) {
	rdb := setup(t)
	got := make(chan expiry.Event, 10)
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "shop:", Index: "shop:orderd:due"})
	l := expiry.NewListener(rdb, expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error { got <- ev; return nil }),
		expiry.ListenerConfig{Scheduler: sched, Logger: testLogger(t)})
	run(t, l)
	waitSubscribed(t, l, 1)
	testkit.WaitFor(t, 10*time.Second, "the shards held", func() bool { return l.Stats().Shards == 16 })

	const key = "shop:order_pay:77"
	deadline := time.Now().Add(300 * time.Millisecond)
	shard := fmt.Sprintf("shop:orderd:due:{%d}", crc32.ChecksumIEEE([]byte(key))%16) // PHP: crc32($key) % 16
	ctx := context.Background()
	if err := rdb.Set(ctx, key, "1", time.Until(deadline)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZAdd(ctx, shard, redis.Z{Score: float64(deadline.UnixMilli()), Member: key}).Err(); err != nil {
		t.Fatal(err)
	}
	// The reapers sleep until the deadlines they know of: wake them.
	wake := fmt.Sprintf("%d:%d", crc32.ChecksumIEEE([]byte(key))%16, deadline.UnixMilli())
	if err := rdb.Publish(ctx, "shop:orderd:due:wake", wake).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		if ev.Key != "order_pay:77" { // by the reaper or by the key's own expiry: they race at the deadline
			t.Fatalf("handled %+v", ev)
		}
	case <-time.After(testkit.Scale(10 * time.Second)):
		t.Fatal("the timer written by another program never fired")
	}
	testkit.WaitFor(t, 10*time.Second, "its index entry reaped", func() bool {
		return l.Stats().Reaped == 1 && rdb.ZCard(ctx, shard).Val() == 0
	})
	select {
	case ev := <-got:
		t.Fatalf("handled twice: %+v", ev)
	default:
	}
}

// A key's TTL is relative, so it ends a little after the deadline it was
// computed for (the time the command took to reach Redis: tens of
// milliseconds at the end of a long pipeline). The listener's reaper fires
// such a timer at its deadline in the index, while the key still lives, and
// the key's own expiry a moment later is a repeat, not handled again. A key
// whose TTL was pushed well past the index's deadline (another program
// re-armed it) is re-scored by its TTL instead, not fired.
func TestReaperFiresAtTheIndexDeadline(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: "t:due"})
	got := make(chan expiry.Event, 10)
	var aliveWhenHandled atomic.Int64
	l := expiry.NewListener(rdb, expiry.HandlerFunc(func(ctx context.Context, ev expiry.Event) error {
		aliveWhenHandled.Store(rdb.Exists(ctx, ev.Key).Val())
		got <- ev
		return nil
	}), expiry.ListenerConfig{Scheduler: sched, Logger: testLogger(t)})
	run(t, l)
	waitSubscribed(t, l, 1)
	testkit.WaitFor(t, 10*time.Second, "the shards held", func() bool { return l.Stats().Shards == 16 })

	deadline := time.Now().Add(200 * time.Millisecond)
	index := func(key string) string { return fmt.Sprintf("t:due:{%d}", crc32.ChecksumIEEE([]byte(key))%16) }
	for key, ttl := range map[string]time.Duration{"late-ttl": 60 * time.Millisecond, "re-armed": time.Hour} {
		if err := sched.Schedule(ctx, key, deadline); err != nil { // wakes the reaper for the deadline
			t.Fatal(err)
		}
		if err := rdb.PExpire(ctx, key, time.Until(deadline)+ttl).Err(); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case ev := <-got:
		if ev.Key != "late-ttl" || aliveWhenHandled.Load() != 1 {
			t.Fatalf("handled %q (its key alive: %d); want late-ttl, while its key still lived", ev.Key, aliveWhenHandled.Load())
		}
	case <-time.After(testkit.Scale(10 * time.Second)):
		t.Fatal("the timer never fired")
	}
	testkit.WaitFor(t, 10*time.Second, "the key's own expiry seen as a repeat", func() bool { return l.Stats().Repeated == 1 })
	testkit.WaitFor(t, 10*time.Second, "the re-armed timer re-scored by its TTL", func() bool {
		score, err := rdb.ZScore(ctx, index("re-armed"), "re-armed").Result()
		return err == nil && time.UnixMilli(int64(score)).After(time.Now().Add(59*time.Minute))
	})
	select {
	case ev := <-got:
		t.Fatalf("handled %q too", ev.Key)
	default:
	}
}

// A key outside the Scheduler's KeyPrefix, or one of the index's own keys,
// is refused, and nothing of the call is set: its listener would never fire
// it.
func TestScheduleRefusesKeysOutsideThePrefix(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	s := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "app:"})
	for _, key := range []string{"other:order_pay:1", "order_pay:1", "app:expiry:due:{3}:lease", "app:expiry:due:sweep"} {
		err := s.ScheduleMany(ctx, expiry.Timer{Key: "app:ok:1", Deadline: time.Now().Add(time.Hour)},
			expiry.Timer{Key: key, Deadline: time.Now().Add(time.Hour)})
		if !errors.Is(err, expiry.ErrOutsidePrefix) || !strings.Contains(err.Error(), key) {
			t.Errorf("ScheduleMany with %q: %v, want ErrOutsidePrefix naming it", key, err)
		}
	}
	if n := rdb.Exists(ctx, "app:ok:1").Val(); n != 0 {
		t.Error("a refused call set its other timers")
	}
	if err := s.Schedule(ctx, "app:ok:1", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
}
