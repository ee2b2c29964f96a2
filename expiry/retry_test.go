package expiry_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
)

// A handler that fails has its timer set due again in the index after
// RetryDelay, with Event.Attempt counting the failures before, and after
// MaxAttempts it waits in the dead set with its last error; Rearm sets it due
// again and, handled at last, its attempts are forgotten.
func TestFailingTimerRetriedThenDeadThenRearmed(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "r:"})
	var mu sync.Mutex
	var attempts []int
	failing := true
	h := expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, ev.Attempt)
		if failing {
			return errors.New("downstream refused")
		}
		return nil
	})
	l := expiry.NewListener(rdb, h, expiry.ListenerConfig{Scheduler: sched, MaxAttempts: 3, Logger: testLogger(t),
		RetryDelay: func(int) time.Duration { return 50 * time.Millisecond }})
	run(t, l)
	waitSubscribed(t, l, 1)
	const key = "r:hold:1"
	if err := sched.Schedule(ctx, key, time.Now().Add(50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	var dead []expiry.TimerInfo
	testkit.WaitFor(t, 10*time.Second, "the timer dead after 3 attempts", func() bool {
		var err error
		dead, err = sched.Dead(ctx, 0)
		return err == nil && len(dead) == 1
	})
	if d := dead[0]; d.Key != key || d.Attempts != 3 || !d.Dead || !strings.Contains(d.LastError, "downstream refused") {
		t.Fatalf("dead timer %+v", d)
	}
	mu.Lock()
	if len(attempts) != 3 || attempts[0] != 0 || attempts[1] != 1 || attempts[2] != 2 {
		t.Fatalf("Event.Attempt over the attempts: %v, want [0 1 2]", attempts)
	}
	failing = false
	mu.Unlock()
	if s := l.Stats(); s.Retried != 2 || s.Dead != 1 || s.Failed != 3 {
		t.Fatalf("stats %+v: want 2 retried, 1 dead, 3 failed", s)
	}
	st, err := sched.Inspect(ctx)
	if err != nil || st.Dead() != 1 {
		t.Fatalf("Inspect: %d dead (%v)", st.Dead(), err)
	}
	if got, ok, err := sched.Lookup(ctx, key); err != nil || !ok || !got.Dead || got.Attempts != 3 || got.LastError != dead[0].LastError {
		t.Fatalf("Lookup of the dead timer: %+v %v %v", got, ok, err)
	}
	later := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	if err := sched.Schedule(ctx, "r:hold:2", later); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := sched.Lookup(ctx, "r:hold:2"); err != nil || !ok || got.Dead || !got.Deadline.Equal(later) || got.Attempts != 0 {
		t.Fatalf("Lookup of a scheduled timer: %+v %v %v, want due at %v", got, ok, err, later)
	}
	if _, ok, err := sched.Lookup(ctx, "r:hold:3"); err != nil || ok {
		t.Fatalf("Lookup of a key never scheduled: ok %v, %v", ok, err)
	}
	if err := sched.Cancel(ctx, "r:hold:2"); err != nil {
		t.Fatal(err)
	}

	if err := sched.Rearm(ctx, key); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the re-armed timer handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) == 4
	})
	testkit.WaitFor(t, 5*time.Second, "its attempts forgotten", func() bool {
		st, err := sched.Inspect(ctx)
		return err == nil && st.Dead() == 0 && st.Shards[sched.ShardOf(key)].Retries == 0
	})
	if err := sched.Rearm(ctx, key); !errors.Is(err, expiry.ErrNotDead) {
		t.Fatalf("Rearm of a timer that is not dead: %v, want ErrNotDead", err)
	}
}

// Timers lists a shard's timers by deadline, within a range.
func TestSchedulerTimersListsByDeadline(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "l:", Shards: 1})
	base := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	for i, k := range []string{"l:c", "l:a", "l:b"} {
		if err := sched.Schedule(ctx, k, base.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	all, err := sched.Timers(ctx, 0, time.Time{}, time.Time{}, 0)
	if err != nil || len(all) != 3 || all[0].Key != "l:c" || !all[0].Deadline.Equal(base) || all[2].Key != "l:b" {
		t.Fatalf("Timers: %+v (%v)", all, err)
	}
	some, err := sched.Timers(ctx, 0, base.Add(time.Second), base.Add(time.Second), 0)
	if err != nil || len(some) != 1 || some[0].Key != "l:a" {
		t.Fatalf("Timers in a range: %+v (%v)", some, err)
	}
	if _, err := sched.Timers(ctx, 1, time.Time{}, time.Time{}, 0); err == nil {
		t.Fatal("Timers of a shard that does not exist: no error")
	}
}

// A reaper sleeps until the next deadline it knows of, however long its
// fallback pause: a timer scheduled meanwhile wakes it, and it reaps the
// timer at its deadline, not a fallback pause later.
func TestReaperWokenBySchedule(t *testing.T) {
	rdb := setup(t)
	ctx := context.Background()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "w:"})
	got := make(chan expiry.Event, 1)
	l := expiry.NewListener(rdb, expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error { got <- ev; return nil }),
		expiry.ListenerConfig{Scheduler: sched, ReapInterval: time.Minute, Logger: testLogger(t)})
	run(t, l)
	waitSubscribed(t, l, 1)
	testkit.WaitFor(t, 10*time.Second, "the shards held", func() bool { return l.Stats().Shards == 16 })
	deadline := time.Now().Add(300 * time.Millisecond)
	if err := sched.Schedule(ctx, "w:1", deadline); err != nil {
		t.Fatal(err)
	}
	// The reaper wakes at the deadline, when the key has a millisecond or
	// so of its TTL left: on a loaded machine its timer can fire after
	// Redis expired the key, and then the key's event comes first. Either
	// way the timer is handled once; what shows the wake is that the reaper
	// looked long before its fallback minute.
	select {
	case ev := <-got:
		if ev.Key != "1" || (!ev.Deadline.IsZero() && ev.Deadline.UnixMilli() != deadline.UnixMilli()) {
			t.Fatalf("handled %+v, want w:1 with deadline %v", ev, deadline)
		}
		t.Logf("handled %v after its deadline (reaper: %v)", ev.Received.Sub(deadline), !ev.Deadline.IsZero())
	case <-time.After(testkit.Scale(20 * time.Second)):
		t.Fatal("the timer never fired")
	}
	testkit.WaitFor(t, 10*time.Second, "the reaper woken before its fallback minute", func() bool {
		return l.Stats().Reaped == 1 && rdb.ZCard(ctx, sched.Shards()[sched.ShardOf("w:1")]).Val() == 0
	})
	select {
	case ev := <-got:
		t.Fatalf("handled twice: %+v", ev)
	default:
	}
}
