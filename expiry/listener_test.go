package expiry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

// run starts l in the background and returns a function that stops it and
// returns Run's error.
func run(t *testing.T, l *expiry.Listener) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- l.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func waitSubscribed(t *testing.T, l *expiry.Listener, n uint64) {
	t.Helper()
	testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("subscription %d", n), func() bool { return l.Stats().Subscriptions >= n })
}

func TestListenerHandlesExpiredKey(t *testing.T) {
	rdb := setup(t)
	got := make(chan expiry.Event, 10)
	mux := expiry.NewServeMux()
	mux.HandleFunc("order_pay:", func(_ context.Context, ev expiry.Event) error { got <- ev; return nil })
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{KeyPrefix: "app:", Logger: testLogger(t)})
	run(t, l)
	waitSubscribed(t, l, 1)

	ctx := context.Background()
	rdb.Set(ctx, "other:order_pay:1", "1", 50*time.Millisecond) // foreign: no prefix
	rdb.Set(ctx, "app:unknown:1", "1", 50*time.Millisecond)     // no handler
	rdb.Set(ctx, "app:order_pay:42", "1", 50*time.Millisecond)
	select {
	case ev := <-got:
		if ev.Key != "order_pay:42" || ev.RawKey != "app:order_pay:42" || ev.DB != testDB || ev.Received.IsZero() {
			t.Fatalf("unexpected event %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("expired key never reached its handler")
	}
	testkit.WaitFor(t, 10*time.Second, "ignored keys and the handled one counted", func() bool {
		s := l.Stats()
		return s.Ignored == 2 && s.Handled == 1 // the handler sent the event before it returned
	})
	if s := l.Stats(); s.Handled != 1 || s.Failed != 0 || s.Received != 3 {
		t.Fatalf("stats %+v", s)
	}
}

// A slow handler must not make anything drop events: with 10,000 keys
// expiring at once, every one is handled exactly once.
func TestListenerSlowHandlerLosesNothing(t *testing.T) {
	rdb := setup(t)
	const n = 10000
	var mu sync.Mutex
	seen := make(map[string]int, n)
	var handled atomic.Int64
	h := expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error {
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		seen[ev.Key]++
		mu.Unlock()
		handled.Add(1)
		return nil
	})
	l := expiry.NewListener(rdb, h, expiry.ListenerConfig{Workers: 8})
	stop := run(t, l)
	waitSubscribed(t, l, 1)

	ctx := context.Background()
	deadline := time.Now().Add(300 * time.Millisecond)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range n {
			p.SetArgs(ctx, "k:"+strconv.Itoa(i), "1", redis.SetArgs{ExpireAt: deadline})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 60*time.Second, "all keys handled", func() bool { return handled.Load() >= n })
	if err := stop(); err != nil { // no handler runs after Run returns: the counts are final
		t.Fatal(err)
	}
	if len(seen) != n || handled.Load() != n {
		t.Fatalf("handled %d calls for %d distinct keys, want %d each", handled.Load(), len(seen), n)
	}
	if s := l.Stats(); s.Dropped != 0 || s.Received != n {
		t.Fatalf("stats %+v", s)
	}
}

// A queue too small for a burst drops events rather than stall the reader
// (which would make Redis disconnect it), counts them, and calls OnDrop.
func TestListenerFullQueueDropsAndCallsOnDrop(t *testing.T) {
	rdb := setup(t)
	release := make(chan struct{})
	var handled, drops atomic.Int64
	h := expiry.HandlerFunc(func(context.Context, expiry.Event) error {
		<-release
		handled.Add(1)
		return nil
	})
	l := expiry.NewListener(rdb, h, expiry.ListenerConfig{Workers: 2, QueueSize: 10,
		OnDrop: func(context.Context) { drops.Add(1) }})
	run(t, l)
	waitSubscribed(t, l, 1)
	ctx := context.Background()
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range 200 {
			p.Set(ctx, "burst:"+strconv.Itoa(i), "1", 20*time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "all events read", func() bool { return l.Stats().Received == 200 })
	close(release)
	testkit.WaitFor(t, 10*time.Second, "queue drained", func() bool { s := l.Stats(); return s.QueueDepth == 0 && s.InFlight == 0 })
	s := l.Stats()
	if s.Dropped == 0 || drops.Load() == 0 || uint64(handled.Load())+s.Dropped != 200 {
		t.Fatalf("stats %+v, OnDrop calls %d, handled %d: want drops reported and handled + dropped = 200", s, drops.Load(), handled.Load())
	}
}

func TestListenerResubscribesAfterKill(t *testing.T) {
	rdb := setup(t)
	var hooks atomic.Int64
	got := make(chan string, 10)
	h := expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error { got <- ev.Key; return nil })
	l := expiry.NewListener(rdb, h, expiry.ListenerConfig{
		OnSubscribe: func(context.Context) { hooks.Add(1) },
		Logger:      testLogger(t),
	})
	run(t, l)
	waitSubscribed(t, l, 1)
	testkit.WaitFor(t, 5*time.Second, "first hook", func() bool { return hooks.Load() == 1 })

	ctx := context.Background()
	if n := testkit.KillSubscribers(t, rdb); n != 1 { // this package's only; other packages' daemons run on
		t.Fatalf("cut %d subscriptions, want the listener's one", n)
	}
	waitSubscribed(t, l, 2)
	testkit.WaitFor(t, 5*time.Second, "reconnect hook", func() bool { return hooks.Load() == 2 })

	rdb.Set(ctx, "after:1", "1", 50*time.Millisecond)
	select {
	case k := <-got:
		if k != "after:1" {
			t.Fatalf("got %q", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("event after reconnect not handled")
	}
}

func TestListenerShutdownWaitsForInFlight(t *testing.T) {
	rdb := setup(t)
	started := make(chan struct{})
	var finished atomic.Bool
	h := expiry.HandlerFunc(func(ctx context.Context, _ expiry.Event) error {
		close(started)
		select {
		case <-time.After(500 * time.Millisecond):
			finished.Store(true)
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	l := expiry.NewListener(rdb, h, expiry.ListenerConfig{})
	stop := run(t, l)
	waitSubscribed(t, l, 1)
	rdb.Set(context.Background(), "slow:1", "1", 20*time.Millisecond)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler never started")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if !finished.Load() {
		t.Fatal("Run returned before the in-flight handler finished")
	}
	if s := l.Stats(); s.Handled != 1 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestListenerShutdownTimeoutCancelsHandlers(t *testing.T) {
	rdb := setup(t)
	started := make(chan struct{})
	h := expiry.HandlerFunc(func(ctx context.Context, _ expiry.Event) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	l := expiry.NewListener(rdb, h, expiry.ListenerConfig{ShutdownTimeout: 50 * time.Millisecond})
	stop := run(t, l)
	waitSubscribed(t, l, 1)
	rdb.Set(context.Background(), "stuck:1", "1", 20*time.Millisecond)
	<-started
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want an error wrapping context.Canceled", err)
	}
}

func TestListenerRunTwice(t *testing.T) {
	rdb := setup(t)
	l := expiry.NewListener(rdb, expiry.NewServeMux(), expiry.ListenerConfig{})
	run(t, l)
	waitSubscribed(t, l, 1)
	if err := l.Run(context.Background()); !errors.Is(err, expiry.ErrListenerRunning) {
		t.Fatalf("second Run: %v", err)
	}
}

func TestListenerInterval(t *testing.T) {
	rdb := setup(t)
	var ticks atomic.Int64
	l := expiry.NewListener(rdb, expiry.NewServeMux(), expiry.ListenerConfig{
		Interval: 10 * time.Millisecond, OnInterval: func(context.Context) { ticks.Add(1) },
	})
	run(t, l)
	testkit.WaitFor(t, 5*time.Second, "three ticks", func() bool { return ticks.Load() >= 3 })
}

// The library's own keys (a lease left by a listener that died) expire under
// the application's prefix; they never reach the handler, even one that
// takes every key.
func TestListenerOwnKeysNeverReachTheHandler(t *testing.T) {
	rdb := setup(t)
	var mu sync.Mutex
	var got []string
	all := expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, ev.RawKey)
		return nil
	})
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "own:"})
	l := expiry.NewListener(rdb, all, expiry.ListenerConfig{Scheduler: sched, Logger: testLogger(t)})
	run(t, l)
	waitSubscribed(t, l, 1)
	ctx := context.Background()
	testkit.WaitFor(t, 10*time.Second, "the shards held", func() bool { return l.Stats().Shards == 16 })
	rdb.Set(ctx, "own:expiry:due:{7}:handed", "a handover record", 20*time.Millisecond)
	rdb.Set(ctx, "own:expiry:due:{3}:attempts", "failed attempts", 20*time.Millisecond)
	rdb.Set(ctx, "own:coupon:1", "1", 200*time.Millisecond) // written without the Scheduler: still a timer
	testkit.WaitFor(t, 10*time.Second, "the plain key handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(got, "own:coupon:1")
	})
	testkit.WaitFor(t, 10*time.Second, "the three expirations heard", func() bool { return l.Stats().Received >= 3 })
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, []string{"own:coupon:1"}) {
		t.Fatalf("the handler got %v, want only own:coupon:1", got)
	}
}

// A configuration that cannot work is an error Run returns at once, never a
// panic, and it names what is wrong.
func TestListenerConfigErrors(t *testing.T) {
	rdb := setup(t)
	mux := expiry.NewServeMux()
	mux.HandleFunc("x:", func(context.Context, expiry.Event) error { return nil })
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "a:"})
	for _, tc := range []struct {
		name    string
		h       expiry.Handler
		cfg     expiry.ListenerConfig
		mention string
	}{
		{"nil handler", nil, expiry.ListenerConfig{}, "nil handler"},
		{"prefix differs from the scheduler's", mux, expiry.ListenerConfig{KeyPrefix: "b:", Scheduler: sched}, `"b:" differs from its Scheduler's "a:"`},
		{"negative workers", mux, expiry.ListenerConfig{Workers: -1}, "Workers is negative"},
		{"leases renewed less often than they lapse", mux, expiry.ListenerConfig{LeaseTTL: time.Second, LeaseInterval: 2 * time.Second}, "LeaseInterval"},
		{"a reaper that would sleep too long", mux, expiry.ListenerConfig{ReapInterval: 2 * time.Minute}, "ReapInterval"},
		{"negative attempts", mux, expiry.ListenerConfig{MaxAttempts: -1}, "MaxAttempts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := expiry.NewListener(rdb, tc.h, tc.cfg)
			err := l.Run(context.Background())
			if !errors.Is(err, expiry.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("Run: %v, want ErrInvalidConfig naming %q", err, tc.mention)
			}
		})
	}
}
