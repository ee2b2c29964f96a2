package expiry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
)

// stopWithin stops the listener and fails unless Run returns within d; it
// returns Run's error.
func stopWithin(t *testing.T, stop func() error, d time.Duration) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- stop() }()
	select {
	case err := <-errc:
		return err
	case <-time.After(d):
		t.Fatalf("Run did not return within %v of its context ending", d)
		return nil
	}
}

// A handler that ignores its context must not hang shutdown: Run returns
// once ShutdownTimeout passes, as http.Server.Shutdown does.
func TestListenerShutdownReturnsAtTimeoutWhenHandlerIgnoresContext(t *testing.T) {
	rdb := setup(t)
	started, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	h := expiry.HandlerFunc(func(context.Context, expiry.Event) error {
		if once.CompareAndSwap(false, true) {
			close(started)
		}
		<-release // ignores ctx
		return nil
	})
	t.Cleanup(func() { close(release) }) // let the goroutine end before the leak check
	l := expiry.NewListener(rdb, h, expiry.ListenerConfig{ShutdownTimeout: 100 * time.Millisecond})
	stop := run(t, l)
	waitSubscribed(t, l, 1)
	rdb.Set(context.Background(), "stuck:1", "1", 10*time.Millisecond)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler never started")
	}
	err := stopWithin(t, stop, 5*time.Second)
	if !errors.Is(err, expiry.ErrShutdownTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want ErrShutdownTimeout and context.Canceled", err)
	}
}

// A hook sees the listener stop: its context ends, so a long sweep stops
// between pages and Run returns nil, well within ShutdownTimeout.
func TestListenerHookContextEndsOnStop(t *testing.T) {
	rdb := setup(t)
	var pages, afterStop atomic.Int64
	inHook := make(chan struct{})
	l := expiry.NewListener(rdb, expiry.NewServeMux(), expiry.ListenerConfig{
		ShutdownTimeout: 5 * time.Second,
		OnSubscribe: func(ctx context.Context) {
			close(inHook)
			for ctx.Err() == nil { // a sweep of endless pages
				pages.Add(1)
				time.Sleep(time.Millisecond) // one page's work
			}
			afterStop.Store(pages.Load())
		},
	})
	stop := run(t, l)
	<-inHook
	if err := stopWithin(t, stop, 2*time.Second); err != nil {
		t.Fatalf("Run returned %v, want nil: the hook stopped when told", err)
	}
	if afterStop.Load() == 0 {
		t.Fatal("the hook never saw its context end")
	}
}

// Malformed keys are counted, and logged at most once a second with a
// bounded prefix of the key: junk in Redis cannot flood the log.
func TestListenerMalformedKeysCountedAndLogBounded(t *testing.T) {
	rdb := setup(t)
	logs := &logRecorder{Min: slog.LevelWarn}
	mux := expiry.NewServeMux()
	mux.HandleFunc("order_pay:", func(context.Context, expiry.Event) error {
		return expiry.ErrMalformedKey
	})
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{Logger: slog.New(logs)})
	run(t, l)
	waitSubscribed(t, l, 1)
	ctx := context.Background()
	huge := "order_pay:" + strings.Repeat("ü", 512<<10) // 1 MiB of two-byte runes
	if err := rdb.Set(ctx, huge, "1", 10*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		rdb.Set(ctx, "order_pay:junk"+strconv.Itoa(i), "1", 10*time.Millisecond)
	}
	testkit.WaitFor(t, 30*time.Second, "201 malformed keys counted", func() bool {
		rdb.Exists(ctx, huge, "order_pay:junk199") // make Redis expire them now
		return l.Stats().Malformed == 201
	})
	entries := logs.records("malformed")
	if len(entries) == 0 || len(entries) > 3 {
		t.Fatalf("%d log lines for 201 malformed keys, want 1 to 3 (one a second)", len(entries))
	}
	for _, e := range logs.records("") {
		key, _ := e.Attrs["key"].(string)
		if len(key) > 128 {
			t.Fatalf("logged a key of %d bytes: %q…", len(key), key[:40])
		}
		if strings.HasPrefix(key, "order_pay:ü") {
			if n := e.Attrs["key_bytes"]; fmt.Sprint(n) != strconv.Itoa(len(huge)) {
				t.Fatalf("key_bytes %v, want %d", n, len(huge))
			}
			if !strings.HasSuffix(key, "ü") {
				t.Fatalf("key cut inside a rune: %q", key[len(key)-4:])
			}
		}
	}
	if s := l.Stats(); s.Handled != 0 || s.Failed != 0 {
		t.Fatalf("malformed keys counted as handled or failed: %+v", s)
	}
}

// Redis restarted without expired-key events (they were set at run time):
// the listener resubscribes, sees that events are off and reports it; with
// NotifyEnable it turns them on again and hears expirations.
func TestListenerNotifyCheckedAfterRedisRestart(t *testing.T) {
	for _, policy := range []expiry.NotifyPolicy{expiry.NotifyCheck, expiry.NotifyEnable} {
		t.Run(map[expiry.NotifyPolicy]string{expiry.NotifyCheck: "check", expiry.NotifyEnable: "enable"}[policy], func(t *testing.T) {
			srv := testkit.StartPrivateRedis(t)
			ctx := context.Background()
			if err := srv.Client.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
				t.Fatal(err)
			}
			got := make(chan string, 10)
			h := expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error { got <- ev.Key; return nil })
			l := expiry.NewListener(srv.Client, h, expiry.ListenerConfig{Notify: policy, NotifyInterval: time.Hour, Logger: nil})
			run(t, l)
			waitSubscribed(t, l, 1)
			testkit.WaitFor(t, 5*time.Second, "healthy", func() bool { h := l.Health(); return h.Subscribed && h.Notify == nil })

			srv.Restart() // its defaults: notify-keyspace-events ""
			waitSubscribed(t, l, 2)
			if policy == expiry.NotifyCheck {
				testkit.WaitFor(t, 3*time.Second, "notify reported off", func() bool {
					return errors.Is(l.Health().Notify, expiry.ErrNotifyDisabled)
				})
				if msg := l.Health().Notify.Error(); !strings.Contains(msg, "notify-keyspace-events") {
					t.Fatalf("the report does not say what to set: %s", msg)
				}
				return
			}
			testkit.WaitFor(t, 3*time.Second, "notify set again", func() bool {
				return srv.Client.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"] != ""
			})
			srv.Client.Set(ctx, "after:1", "1", 10*time.Millisecond)
			select {
			case k := <-got:
				if k != "after:1" {
					t.Fatalf("got %q", k)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no expiration heard after the restart")
			}
			if h := l.Health(); h.Notify != nil {
				t.Fatalf("health %+v", h)
			}
		})
	}
}
