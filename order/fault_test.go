package order_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/daemon"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/stock"
)

// A periodic sweep leaves orders that are only just due to the event path;
// a catch-up sweep takes every overdue order.
func TestPeriodicSweepLeavesJustDueOrdersToEvents(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		var skew atomic.Int64
		svc := order.NewService(st, nil, nil, order.Config{PayTimeout: time.Minute,
			Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
		ctx := context.Background()
		if _, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "x", Available: 5}); err != nil {
			t.Fatal(err)
		}
		o, err := svc.Create(ctx, 1, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		skew.Store(int64(time.Until(o.PayDeadline) + 10*time.Millisecond)) // 10 ms overdue
		if n, err := svc.Sweep(ctx, time.Second); err != nil || n != 0 {
			t.Fatalf("periodic sweep moved %d (err %v) of an order 10 ms overdue, want 0", n, err)
		}
		if n, err := svc.Sweep(ctx, 0); err != nil || n != 1 {
			t.Fatalf("catch-up sweep moved %d (err %v), want 1", n, err)
		}
	})
}

// In normal operation the events close every order, and the periodic sweep,
// however often it runs, rescues none: a rescue means an event was missed.
func TestNoSweepRescuesWhenEventsArrive(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		var bySweep, byEvent atomic.Int64
		e := newEnv(t, st, order.Config{PayTimeout: 500 * time.Millisecond, OnTransition: func(tr order.Transition) {
			if tr.Source == "sweep" {
				bySweep.Add(1)
			} else {
				byEvent.Add(1)
			}
		}})
		e.sku(t, 1, 1000, 0)
		e.daemon(t, daemon.Config{SweepInterval: 20 * time.Millisecond, SweepGrace: 2 * time.Second})
		ctx := context.Background()
		var ids []int64
		for i := range 100 {
			o, err := e.svc.Create(ctx, int64(i+1), 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, o.ID)
		}
		e.waitStatus(t, 30*time.Second, order.Expired, ids...)
		if bySweep.Load() != 0 || byEvent.Load() != 100 {
			t.Fatalf("%d orders closed by events, %d rescued by the sweep; want 100 and 0", byEvent.Load(), bySweep.Load())
		}
	})
}

// insertOverdue inserts n pending orders of one unit of sku, all past their
// pay deadline, straight into the database (the set-up of a backlog left by
// a daemon that was down), and sets sku's stock to total with those n held.
func insertOverdue(t *testing.T, e *env, sku, n, total int64) {
	t.Helper()
	ctx := context.Background()
	e.sku(t, sku, total-n, 0)
	deadline := time.Now().Add(-time.Minute).UnixMilli()
	for done := int64(0); done < n; {
		batch := min(500, n-done)
		q := "INSERT INTO orders (user_id, sku, qty, amount_cents, status, created_at, pay_deadline, auto_confirmed) VALUES "
		args := []any{}
		for i := range batch {
			if i > 0 {
				q += ","
			}
			q += "(?, ?, 1, 250, 'pending', ?, ?, ?)"
			args = append(args, done+i+1, sku, deadline-60000, deadline, false)
		}
		if _, err := e.store.DB().ExecContext(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
		done += batch
	}
	if err := e.svc.ResyncStock(ctx, sku); err != nil {
		t.Fatal(err)
	}
}

// SIGTERM (the listener's context ending) during a long start-up sweep: the
// sweep stops between pages, Run returns nil well within ShutdownTimeout,
// nothing is half done, and the next start takes the rest.
func TestShutdownDuringLongSweep(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		var moved atomic.Int64
		e := newEnv(t, st, order.Config{SweepBatch: 10, SweepWorkers: 1,
			OnTransition: func(order.Transition) { moved.Add(1) }})
		const n, total = 3000, 3000
		insertOverdue(t, e, 1, n, total)

		l := daemon.New(e.svc, e.rdb, daemon.Config{SweepInterval: time.Hour, Listener: expiry.ListenerConfig{Scheduler: e.sched, ShutdownTimeout: 5 * time.Second}})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- l.Run(ctx) }()
		testkit.WaitFor(t, 30*time.Second, "the sweep under way", func() bool { return moved.Load() > 0 })
		cancel()
		stopAt := time.Now()
		select {
		case err := <-errc:
			t.Logf("Run returned %v after the stop, %d of %d orders moved", time.Since(stopAt).Round(time.Millisecond), moved.Load(), n)
			if err != nil {
				t.Fatalf("Run returned %v, want nil: the sweep should stop between pages", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
		}
		stopped := moved.Load()
		pending, _, err := e.store.Due(context.Background(), order.Pending, time.Now(), order.DueCursor{}, n)
		if err != nil {
			t.Fatal(err)
		}
		if stopped >= n || int64(len(pending))+stopped != n {
			t.Fatalf("after the stop: %d moved and %d still pending of %d; want the sweep stopped part way, nothing lost", stopped, len(pending), n)
		}
		ordertest.CheckStock(t, st, 1, total)

		e.daemon(t, daemon.Config{SweepInterval: time.Hour}) // the next start
		testkit.WaitFor(t, 60*time.Second, "the rest swept", func() bool { return moved.Load() == n })
		ordertest.CheckStock(t, st, 1, total)
	})
}

// cutAfterExpire is a store whose Expire cuts the proxied Redis link right
// after the database committed, once armed: the give-back to the Redis stock
// counter then fails, as it does when Redis blips or the daemon dies between
// the commit and the give-back.
type cutAfterExpire struct {
	order.Store
	proxy *testkit.Proxy
	armed atomic.Bool
}

func (c *cutAfterExpire) Expire(ctx context.Context, ids []int64, now time.Time, source string) (order.Moves, error) {
	mv, err := c.Store.Expire(ctx, ids, now, source)
	if len(mv.Moved) > 0 && c.armed.CompareAndSwap(true, false) {
		c.proxy.Cut()
	}
	return mv, err
}

// A give-back lost between the database commit and Redis leaves the stock
// counter below the database (the SKU answers sold_out with stock in the
// database, and the user's count blocks them at the limit). The daemon's stock
// check mends both within a sweep interval, and the SKU sells again.
func TestStockCounterConvergesAfterLostGiveBack(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st, order.Config{PayTimeout: 300 * time.Millisecond})
		e.sku(t, 1, 2, 2)
		ctx := context.Background()

		proxy := testkit.NewProxy(t, testkit.RedisAddr())
		prdb := redis.NewClient(&redis.Options{Addr: proxy.Addr(), DB: redisDB})
		t.Cleanup(func() { prdb.Close() })
		core, logs := observer.New(zapcore.WarnLevel)
		cut := &cutAfterExpire{Store: st, proxy: proxy}
		cut.armed.Store(true)
		// The daemon: its stock counter talks to Redis through the proxy.
		daemonSvc := order.NewService(cut, stock.NewCounter(prdb, ""), e.sched,
			order.Config{StockSettle: 50 * time.Millisecond, Logger: zap.New(core)})
		const interval = 500 * time.Millisecond
		l := daemon.New(daemonSvc, e.rdb, daemon.Config{SweepInterval: interval, Listener: expiry.ListenerConfig{Scheduler: e.sched}})
		dctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); l.Run(dctx) }()
		t.Cleanup(func() { cancel(); <-done })

		o, err := e.svc.Create(ctx, 7, 1, 2) // the whole stock, the user's whole limit
		if err != nil {
			t.Fatal(err)
		}
		e.waitStatus(t, 10*time.Second, order.Expired, o.ID)
		testkit.WaitFor(t, 10*time.Second, "the give-back failing", func() bool {
			return logs.FilterMessageSnippet("not given back").Len() > 0
		})
		proxy.Restore()
		if _, err := e.svc.Create(ctx, 8, 1, 1); err == nil || !strings.Contains(err.Error(), "sold out") {
			t.Fatalf("set-up: with the give-back lost, an order got %v, want sold out", err)
		}

		restored := time.Now()
		fixedBy := restored.Add(2*interval + 5*time.Second) // a sweep interval, the settle time, a slow machine
		testkit.WaitFor(t, time.Until(fixedBy), "the Redis counter equal to the database", func() bool {
			k, _ := st.GetSKU(ctx, 1)
			n, ok, _ := e.counter.Available(ctx, 1)
			return ok && n == k.Available
		})
		t.Logf("counter mended %v after Redis came back (sweep interval %v)", time.Since(restored).Round(time.Millisecond), interval)
		if got := e.rdb.HGet(ctx, "stock:{1}:buyers", "7").Val(); got != "" {
			t.Fatalf("user 7 still counted as holding %s units", got)
		}
		if _, err := e.svc.Create(ctx, 7, 1, 2); err != nil {
			t.Fatalf("the SKU does not sell again after the counter was mended: %v", err)
		}
		ordertest.CheckStock(t, st, 1, 2)
		e.checkRedisStock(t, 1)
	})
}

// A counter above the database (left by a rebuild that raced an order) lets
// buyers through to the database, which refuses them: the first refusal
// rebuilds the counter, so the database is not hammered for long.
func TestStockCounterAboveDatabaseRebuiltOnRefusal(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st, order.Config{})
		e.sku(t, 1, 0, 0)
		ctx := context.Background()
		if err := e.counter.Set(ctx, 1, 5, 0, nil); err != nil { // Redis believes in 5 units
			t.Fatal(err)
		}
		if _, err := e.svc.Create(ctx, 1, 1, 1); err == nil {
			t.Fatal("an order of a SKU without stock was accepted")
		}
		e.checkRedisStock(t, 1)
	})
}
