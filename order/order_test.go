package order_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"sync"
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

const redisDB = 3 // this package's Redis database

// env is one service on one store with the Redis parts, as `orderd serve` has it.
type env struct {
	stops   []func()
	rdb     *redis.Client
	store   *sqlstore.Store
	svc     *order.Service
	sched   *expiry.Scheduler
	counter *stock.Counter
	cfg     order.Config
}

func newEnv(t *testing.T, st *sqlstore.Store, cfg order.Config) *env {
	t.Helper()
	rdb := testkit.Redis(t, redisDB)
	e := &env{rdb: rdb, store: st, cfg: cfg,
		sched:   expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: cfg.Keys.DueIndex()}),
		counter: stock.NewCounter(rdb, cfg.Keys.Stock())}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	e.svc = order.NewService(st, e.counter, e.sched, cfg)
	return e
}

// daemon starts an `orderd listen` equivalent; it stops at the test's end,
// or at stopDaemons.
func (e *env) daemon(t *testing.T, cfg daemon.Config) *daemon.Daemon {
	t.Helper()
	if cfg.Listener.Scheduler == nil {
		cfg.Listener.Scheduler = e.sched
	}
	l := daemon.New(e.svc, e.rdb, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	e.stops = append(e.stops, stop)
	t.Cleanup(stop)
	testkit.WaitFor(t, 5*time.Second, "subscription", func() bool { return l.Stats().Subscriptions > 0 })
	return l
}

// stopDaemons stops every daemon started so far and waits for them: after
// it, no event or sweep can still move an order.
func (e *env) stopDaemons() {
	for _, stop := range e.stops {
		stop()
	}
}

// create places an order through svc, failing the test if it cannot.
func create(t *testing.T, svc *order.Service, user, sku, qty int64) order.Order {
	t.Helper()
	o, err := svc.Create(context.Background(), user, sku, qty)
	if err != nil {
		t.Fatalf("set-up: create an order of %d × sku %d for user %d: %v", qty, sku, user, err)
	}
	return o
}

// must fails the test on a set-up error.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("set-up: %v", err)
	}
}

// patient returns a service on the same store and Redis parts whose pay
// timeout is long: orders that a test pays and ships, so that a slow machine
// cannot make their payment late. The confirm timeout is e's.
func (e *env) patient() *order.Service {
	cfg := e.cfg
	cfg.PayTimeout = time.Minute
	return order.NewService(e.store, e.counter, e.sched, cfg)
}

func (e *env) sku(t *testing.T, id, stockQty, limit int64) {
	t.Helper()
	if _, err := e.svc.PutSKU(context.Background(), order.SKU{SKU: id, Name: "sku " + strconv.FormatInt(id, 10), PriceCents: 250, Available: stockQty, LimitPerUser: limit}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) order(t *testing.T, id int64) order.Order {
	t.Helper()
	o, err := e.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// checkRedisStock fails unless the Redis counter of sku equals the database.
func (e *env) checkRedisStock(t *testing.T, sku int64) {
	t.Helper()
	k, err := e.store.GetSKU(context.Background(), sku)
	if err != nil {
		t.Fatal(err)
	}
	n, ok, err := e.counter.Available(context.Background(), sku)
	if err != nil || !ok || n != k.Available {
		t.Fatalf("redis counter of sku %d = %d (ok %v, err %v), database says %d", sku, n, ok, err, k.Available)
	}
}

func (e *env) waitStatus(t *testing.T, timeout time.Duration, want order.Status, ids ...int64) {
	t.Helper()
	testkit.WaitFor(t, timeout, "orders "+string(want), func() bool {
		for _, id := range ids {
			if e.order(t, id).Status != want {
				return false
			}
		}
		return true
	})
}

func TestPayKeyExpiresOrderAndConfirmKeyCompletesIt(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st, order.Config{PayTimeout: 200 * time.Millisecond, ConfirmTimeout: 200 * time.Millisecond})
		e.sku(t, 1, 10, 0)
		e.daemon(t, daemon.Config{SweepInterval: time.Hour})
		ctx := context.Background()

		unpaid, err := e.svc.Create(ctx, 7, 1, 3)
		if err != nil {
			t.Fatal(err)
		}
		shipped, err := e.patient().Create(ctx, 7, 1, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Pay(ctx, 7, shipped.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Ship(ctx, shipped.ID); err != nil {
			t.Fatal(err)
		}
		e.waitStatus(t, 10*time.Second, order.Expired, unpaid.ID)
		e.waitStatus(t, 10*time.Second, order.Completed, shipped.ID)

		o := e.order(t, unpaid.ID)
		if o.CancelledAt == nil || o.CancelledAt.Before(o.PayDeadline) {
			t.Fatalf("expired order: %+v", o)
		}
		c := e.order(t, shipped.ID)
		if !c.AutoConfirmed || c.CompletedAt == nil || c.CompletedAt.Before(*c.ConfirmDeadline) {
			t.Fatalf("auto-confirmed order: %+v", c)
		}
		if k, _ := st.GetSKU(ctx, 1); k.Available != 8 {
			t.Fatalf("available %d, want 8 (3 back from the expired order)", k.Available)
		}
		ordertest.CheckStock(t, st, 1, 10)
		e.checkRedisStock(t, 1)
	})
}

// The same key handled twice, events racing sweeps, and two daemons side by
// side: stock comes back exactly once.
func TestExpiryIsExactlyOnce(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st, order.Config{PayTimeout: 300 * time.Millisecond})
		const n, total = 120, 1000
		e.sku(t, 1, total, 0)
		ctx := context.Background()
		var ids []int64
		for i := range n {
			o, err := e.svc.Create(ctx, int64(i%10+1), 1, int64(i%3+1))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, o.ID)
		}
		// Two daemons, each with its own sweeps, plus direct repeated calls.
		e.daemon(t, daemon.Config{SweepInterval: 50 * time.Millisecond})
		e.daemon(t, daemon.Config{SweepInterval: 70 * time.Millisecond})
		time.Sleep(time.Until(e.order(t, ids[n-1]).PayDeadline))
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if _, err := e.svc.ExpireOrders(ctx, ids, "event"); err != nil {
					t.Error(err)
				}
			})
			wg.Go(func() {
				if _, err := e.svc.Sweep(ctx, 0); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		e.waitStatus(t, 10*time.Second, order.Expired, ids...)
		e.stopDaemons() // late events and sweeps have landed once they are stopped
		if k, err := st.GetSKU(ctx, 1); err != nil || k.Available != total {
			t.Fatalf("available %d, want %d", k.Available, total)
		}
		ordertest.CheckStock(t, st, 1, total)
		e.checkRedisStock(t, 1)
	})
}

// Payments race the deadline on many orders from many goroutines while a
// daemon expires them: each order ends paid or expired, never both, and stock
// adds up.
func TestPayRacesExpiry(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st, order.Config{PayTimeout: 400 * time.Millisecond})
		const n, total = 150, 500
		e.sku(t, 1, total, 0)
		e.daemon(t, daemon.Config{SweepInterval: 30 * time.Millisecond})
		ctx := context.Background()
		orders := make([]order.Order, n)
		for i := range n {
			o, err := e.svc.Create(ctx, int64(i+1), 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			orders[i] = o
		}
		var paidOK atomic.Int64
		var wg sync.WaitGroup
		for i := range n {
			o := orders[i]
			for range 2 { // two payment attempts per order, around the deadline
				wg.Go(func() {
					time.Sleep(time.Until(o.PayDeadline) + time.Duration(rand.IntN(40)-20)*time.Millisecond)
					_, err := e.svc.Pay(ctx, o.UserID, o.ID)
					switch {
					case err == nil:
						paidOK.Add(1)
					case errors.Is(err, order.ErrInvalidTransition):
						var oe *order.Error
						errors.As(err, &oe)
						if oe.Status != order.Paid && oe.Status != order.Expired {
							t.Errorf("order %d: refused with status %q", o.ID, oe.Status)
						}
					default:
						t.Errorf("order %d: %v", o.ID, err)
					}
				})
			}
		}
		wg.Wait()
		testkit.WaitFor(t, 10*time.Second, "every order settled", func() bool {
			for _, o := range orders {
				if e.order(t, o.ID).Status == order.Pending {
					return false
				}
			}
			return true
		})
		var paid, expired int64
		for _, o := range orders {
			got := e.order(t, o.ID)
			switch got.Status {
			case order.Paid:
				paid++
				if got.CancelledAt != nil || got.PaidAt == nil || !got.PaidAt.Before(got.PayDeadline) {
					t.Errorf("paid order looks wrong: %+v", got)
				}
			case order.Expired:
				expired++
				if got.PaidAt != nil {
					t.Errorf("expired order was paid: %+v", got)
				}
			default:
				t.Errorf("%s: neither paid nor expired", ordertest.Describe(got))
			}
		}
		if paidOK.Load() != paid {
			t.Fatalf("%d payments succeeded but %d orders are paid", paidOK.Load(), paid)
		}
		t.Logf("%d paid, %d expired", paid, expired)
		if k, _ := st.GetSKU(ctx, 1); k.Available != total-paid {
			t.Fatalf("available %d, want %d", k.Available, total-paid)
		}
		ordertest.CheckStock(t, st, 1, total)
		e.checkRedisStock(t, 1)
	})
}

// Events lost while no daemon runs: the start-up sweep handles them.
func TestStartupSweepHandlesMissedEvents(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st, order.Config{PayTimeout: 50 * time.Millisecond, ConfirmTimeout: 50 * time.Millisecond})
		e.sku(t, 1, 100, 0)
		ctx := context.Background()
		var unpaid []int64
		for range 30 {
			unpaid = append(unpaid, create(t, e.svc, 1, 1, 1).ID)
		}
		o := create(t, e.patient(), 2, 1, 1)
		if _, err := e.svc.Pay(ctx, 2, o.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Ship(ctx, o.ID); err != nil {
			t.Fatal(err)
		}
		// Wait until Redis has expired (and announced, to nobody) every key.
		// (KEYS would skip a key whose time has passed without deleting it;
		// EXISTS deletes it, and the reaper then drops its index entry.)
		timerKeys := []string{order.ConfirmKey(o.ID)}
		for _, id := range unpaid {
			timerKeys = append(timerKeys, order.PayKey(id))
		}
		testkit.WaitFor(t, 30*time.Second, "keys and index entries gone", func() bool {
			n, err := e.rdb.Exists(ctx, timerKeys...).Result()
			must(t, err)
			res, err := e.sched.Reap(ctx)
			must(t, err)
			var indexed int64
			for _, shard := range e.sched.Shards() {
				indexed += e.rdb.ZCard(ctx, shard).Val()
			}
			return n == 0 && res.Due == 0 && indexed == 0
		})
		var swept atomic.Int64
		e.daemon(t, daemon.Config{SweepInterval: time.Hour, OnSweep: func(n int, _ error) { swept.Add(int64(n)) }})
		e.waitStatus(t, 5*time.Second, order.Expired, unpaid...)
		e.waitStatus(t, 5*time.Second, order.Completed, o.ID)
		// OnSweep hears of a sweep once it returns, after its commits.
		testkit.WaitFor(t, 5*time.Second, "the start-up sweep reported", func() bool { return swept.Load() >= 31 })
		if swept.Load() != 31 {
			t.Fatalf("the start-up sweep moved %d orders, want 31", swept.Load())
		}
		ordertest.CheckStock(t, st, 1, 100)
	})
}

// Redis flushed (every key lost): the periodic sweep still handles every order.
func TestRedisFlushedSweepStillHandlesEveryOrder(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st, order.Config{PayTimeout: 300 * time.Millisecond})
		e.sku(t, 1, 100, 0)
		e.daemon(t, daemon.Config{SweepInterval: 100 * time.Millisecond})
		ctx := context.Background()
		var ids []int64
		for range 20 {
			ids = append(ids, create(t, e.svc, 1, 1, 1).ID)
		}
		if err := e.rdb.FlushDB(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		e.waitStatus(t, 10*time.Second, order.Expired, ids...)
		for _, id := range ids {
			o := e.order(t, id)
			if late := o.CancelledAt.Sub(o.PayDeadline); late < 0 || late > 5*time.Second {
				t.Errorf("order %d expired %v after its deadline", id, late)
			}
		}
		ordertest.CheckStock(t, st, 1, 100)
	})
}

// Keys written by other programs: redis-cli, and a Laravel app with its
// cache prefix. A key with a malformed id is logged and ignored.
func TestKeysFromOtherPrograms(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		core, logs := observer.New(zapcore.WarnLevel)
		const payTimeout = time.Second
		e := newEnv(t, st, order.Config{PayTimeout: payTimeout, Keys: order.Keys{Prefix: "laravel_cache:"}, Logger: zap.New(core)})
		// A service without timers: the keys come from the other programs.
		svc := order.NewService(st, e.counter, nil, order.Config{PayTimeout: payTimeout})
		e.sku(t, 1, 10, 0)
		ctx := context.Background()
		a, b := create(t, svc, 1, 1, 1), create(t, svc, 1, 1, 1)
		// The start-up sweep must run before the deadlines, so that only the
		// keys below can move the orders (the next sweep is an hour away).
		var sweeps, swept atomic.Int64
		l := e.daemon(t, daemon.Config{SweepInterval: time.Hour, Logger: zap.New(core),
			OnSweep: func(n int, _ error) { swept.Add(int64(n)); sweeps.Add(1) }})
		testkit.WaitFor(t, 5*time.Second, "start-up sweep", func() bool { return sweeps.Load() > 0 })
		if swept.Load() != 0 || time.Now().After(b.PayDeadline) {
			t.Fatal("set-up too slow: the start-up sweep ran after the deadlines")
		}
		testkit.WaitFor(t, 5*time.Second, "both deadlines past (nothing has announced them)", func() bool {
			return time.Now().After(b.PayDeadline.Add(20 * time.Millisecond))
		})

		host, port, _ := strings.Cut(testkit.RedisAddr(), ":")
		out, err := exec.Command("redis-cli", "-h", host, "-p", port, "-n", strconv.Itoa(redisDB),
			"SET", "laravel_cache:order_pay:"+strconv.FormatInt(a.ID, 10), "1", "PX", "100").CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli: %v %s", err, out)
		}
		must(t, e.rdb.Set(ctx, "laravel_cache:order_pay:abc", "1", 10*time.Millisecond).Err())
		must(t, e.rdb.Set(ctx, "order_pay:"+strconv.FormatInt(b.ID, 10), "1", 10*time.Millisecond).Err()) // no prefix: not ours
		e.waitStatus(t, 10*time.Second, order.Expired, a.ID)
		testkit.WaitFor(t, 5*time.Second, "malformed key logged", func() bool {
			return logs.FilterMessageSnippet("malformed").Len() == 1
		})
		if got := logs.FilterMessageSnippet("malformed").All()[0].ContextMap()["key"]; got != "laravel_cache:order_pay:abc" {
			t.Fatalf("logged key %v", got)
		}
		testkit.WaitFor(t, 10*time.Second, "the key without the prefix heard and ignored", func() bool {
			e.rdb.Exists(ctx, "order_pay:"+strconv.FormatInt(b.ID, 10)) // expire it now
			return l.Stats().Ignored >= 1
		})
		if s := e.order(t, b.ID).Status; s != order.Pending {
			t.Fatalf("a key without the prefix moved order %d to %s", b.ID, s)
		}
	})
}

// The deadline decides: a payment after it is refused even when nothing has
// expired the order yet, and the order is expired on the spot.
func TestPayAfterDeadlineRefused(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		var skew atomic.Int64
		svc := order.NewService(st, nil, nil, order.Config{PayTimeout: time.Minute,
			Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
		ctx := context.Background()
		_, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "x", Available: 5})
		must(t, err)
		o := create(t, svc, 1, 1, 2)
		skew.Store(int64(time.Minute)) // exactly at the deadline: already too late
		_, err = svc.Pay(ctx, 1, o.ID)
		var oe *order.Error
		if !errors.As(err, &oe) || oe.Code != order.CodeInvalidTransition || oe.Status != order.Expired {
			t.Fatalf("late payment: %v, want invalid_transition with status expired", err)
		}
		if k, _ := st.GetSKU(ctx, 1); k.Available != 5 {
			t.Fatalf("available %d, want 5", k.Available)
		}
		if _, err := svc.Cancel(ctx, 1, o.ID); !errors.Is(err, order.ErrInvalidTransition) {
			t.Fatalf("cancel of an expired order: %v", err)
		}
	})
}

func TestTransitionsAndOwnership(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		svc := order.NewService(st, nil, nil, order.Config{})
		ctx := context.Background()
		_, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "x", PriceCents: 199, Available: 5})
		must(t, err)
		o, err := svc.Create(ctx, 1, 1, 2)
		if err != nil || o.AmountCents != 398 || o.Status != order.Pending {
			t.Fatalf("create: %+v %v", o, err)
		}
		if _, err := svc.Pay(ctx, 2, o.ID); !errors.Is(err, order.ErrNotFound) {
			t.Fatalf("someone else's order: %v", err)
		}
		if _, err := svc.Ship(ctx, o.ID); order.ErrorCode(err) != order.CodeInvalidTransition {
			t.Fatalf("ship a pending order: %v", err)
		}
		if _, err := svc.Confirm(ctx, 1, o.ID); order.ErrorCode(err) != order.CodeInvalidTransition {
			t.Fatalf("confirm a pending order: %v", err)
		}
		c, err := svc.Create(ctx, 1, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		if c, err = svc.Cancel(ctx, 1, c.ID); err != nil || c.Status != order.Cancelled || c.CancelledAt == nil {
			t.Fatalf("cancel: %+v %v", c, err)
		}
		if _, err := svc.Pay(ctx, 1, c.ID); order.ErrorCode(err) != order.CodeInvalidTransition {
			t.Fatalf("pay a cancelled order: %v", err)
		}
		if o, err = svc.Pay(ctx, 1, o.ID); err != nil || o.Status != order.Paid {
			t.Fatalf("pay: %+v %v", o, err)
		}
		if _, err := svc.Pay(ctx, 1, o.ID); order.ErrorCode(err) != order.CodeInvalidTransition {
			t.Fatalf("pay twice: %v", err)
		}
		if o, err = svc.Ship(ctx, o.ID); err != nil || o.Status != order.Shipped || o.ConfirmDeadline == nil {
			t.Fatalf("ship: %+v %v", o, err)
		}
		if o, err = svc.Confirm(ctx, 1, o.ID); err != nil || o.Status != order.Completed || o.AutoConfirmed {
			t.Fatalf("confirm: %+v %v", o, err)
		}
		list, err := svc.List(ctx, 1)
		if err != nil || len(list) != 2 || list[0].ID != c.ID {
			t.Fatalf("list (newest first): %+v %v", list, err)
		}
		if _, err := svc.Create(ctx, 1, 1, 4); !errors.Is(err, order.ErrSoldOut) {
			t.Fatalf("more than available: %v", err)
		}
		if _, err := svc.Create(ctx, 1, 99, 1); !errors.Is(err, order.ErrNotFound) {
			t.Fatalf("unknown sku: %v", err)
		}
		for _, qty := range []int64{0, -1, 1 << 40} {
			if _, err := svc.Create(ctx, 1, 1, qty); order.ErrorCode(err) != order.CodeInvalidRequest {
				t.Fatalf("qty %d: %v", qty, err)
			}
		}
		ordertest.CheckStock(t, st, 1, 5)
	})
}

// The database never oversells and enforces the per-user limit on its own,
// even with no Redis counter at all.
func TestDatabaseAloneNeverOversells(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		svc := order.NewService(st, nil, nil, order.Config{})
		ctx := context.Background()
		_, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "x", Available: 20, LimitPerUser: 2})
		must(t, err)
		var ok, soldOut, limited atomic.Int64
		var wg sync.WaitGroup
		for i := range 60 {
			wg.Go(func() {
				_, err := svc.Create(ctx, int64(i%15), 1, 1)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, order.ErrSoldOut):
					soldOut.Add(1)
				case errors.Is(err, order.ErrLimitExceeded):
					limited.Add(1)
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		// 15 users × limit 2 = 30 wanted, 20 available.
		if ok.Load() != 20 {
			t.Fatalf("%d orders created from 20 units (%d sold out, %d over the limit)", ok.Load(), soldOut.Load(), limited.Load())
		}
		for u := range int64(15) {
			list, err := svc.List(ctx, u)
			must(t, err)
			if len(list) > 2 {
				t.Fatalf("user %d holds %d orders, limit 2", u, len(list))
			}
		}
		ordertest.CheckStock(t, st, 1, 20)
	})
}

// The sweep pages through a backlog larger than one batch, several batches
// at once, and moves every overdue order exactly once.
func TestSweepPagesThroughBacklog(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		// A clock the test moves: the set-up takes as long as it takes, then
		// every deadline is past.
		var skew atomic.Int64
		svc := order.NewService(st, nil, nil, order.Config{SweepBatch: 7, SweepWorkers: 3,
			Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
		ctx := context.Background()
		_, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "x", Available: 100})
		must(t, err)
		var shipped []int64
		for i := range 60 {
			o, err := svc.Create(ctx, int64(i+1), 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			if i%4 == 0 {
				_, err := svc.Pay(ctx, o.UserID, o.ID)
				must(t, err)
				_, err = svc.Ship(ctx, o.ID)
				must(t, err)
				shipped = append(shipped, o.ID)
			}
		}
		skew.Store(int64(48 * time.Hour))
		n, err := svc.Sweep(ctx, 0)
		if err != nil || n != 60 {
			t.Fatalf("sweep moved %d (err %v), want 60", n, err)
		}
		if n, _ := svc.Sweep(ctx, 0); n != 0 {
			t.Fatalf("second sweep moved %d", n)
		}
		for _, id := range shipped {
			if o, _ := st.Get(ctx, id); o.Status != order.Completed || !o.AutoConfirmed {
				t.Fatalf("order %d: %s", id, o.Status)
			}
		}
		ordertest.CheckStock(t, st, 1, 100)
	})
}

// A filtered sweep (a daemon catching up on the events of its own shards)
// moves the orders it keeps and only those, across pages where the filter
// keeps none.
func TestSweepWhereTakesOnlyKeptOrders(t *testing.T) {
	st := ordertest.Open(t, ordertest.SQLiteURL(t))
	var skew atomic.Int64
	svc := order.NewService(st, nil, nil, order.Config{SweepBatch: 5,
		Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	ctx := context.Background()
	_, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "x", Available: 100})
	must(t, err)
	var ids []int64
	for i := range 40 {
		o, err := svc.Create(ctx, int64(i+1), 1, 1)
		must(t, err)
		ids = append(ids, o.ID)
	}
	skew.Store(int64(time.Hour))
	kept := func(id int64) bool { return id > ids[29] || id%7 == 0 } // pages 1–6 keep few or none
	n, err := svc.SweepWhere(ctx, 0, func(s order.Status, id int64) bool { return s == order.Pending && kept(id) })
	must(t, err)
	want := 0
	for _, id := range ids {
		o, _ := st.Get(ctx, id)
		if kept(id) {
			want++
			if o.Status != order.Expired {
				t.Fatalf("kept order %d: %s", id, o.Status)
			}
		} else if o.Status != order.Pending {
			t.Fatalf("order %d left out, yet %s", id, o.Status)
		}
	}
	if n != want {
		t.Fatalf("moved %d, want %d", n, want)
	}
	ordertest.CheckStock(t, st, 1, 100)
}

// An expired key for an order id that no order has is counted on its own
// (not as handled) and logged, bounded; it changes nothing.
func TestExpiredKeyOfUnknownOrder(t *testing.T) {
	st := ordertest.Open(t, ordertest.SQLiteURL(t))
	core, logs := observer.New(zapcore.WarnLevel)
	e := newEnv(t, st, order.Config{})
	e.sku(t, 1, 10, 0)
	l := e.daemon(t, daemon.Config{SweepInterval: time.Hour, Logger: zap.New(core)})
	ctx := context.Background()
	real := create(t, e.svc, 1, 1, 1)
	for _, key := range []string{order.PayKey(real.ID + 1000), order.ConfirmKey(real.ID + 2000)} {
		if err := e.rdb.Set(ctx, key, "1", time.Millisecond).Err(); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "both keys counted as of no order", func() bool { return l.Stats().NoRecord == 2 })
	if s := l.Stats(); s.Handled != 0 || s.Failed != 0 {
		t.Fatalf("stats %+v: the unknown orders were counted as handled or failed", s)
	}
	if n := logs.FilterMessage("expired key ignored: no such record").Len(); n < 1 || n > 2 {
		t.Fatalf("want a log line a second at most, got %d: %v", n, logs.All())
	}
	if o := e.order(t, real.ID); o.Status != order.Pending {
		t.Fatalf("the real order is %s", o.Status)
	}
}

// A daemon whose Scheduler's KeyPrefix differs from the service's keys is a
// configuration error that Run returns, not a panic.
func TestDaemonConfigErrorIsReturned(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	svc := order.NewService(ordertest.Open(t, ordertest.SQLiteURL(t)), nil, nil, order.Config{Keys: order.Keys{Prefix: "p:"}})
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "q:"})
	err := daemon.New(svc, rdb, daemon.Config{Listener: expiry.ListenerConfig{Scheduler: sched}}).Run(context.Background())
	if !errors.Is(err, expiry.ErrInvalidConfig) {
		t.Fatalf("Run: %v, want ErrInvalidConfig", err)
	}
}

// An overdue order whose id is lower than one a sweep already moved (it took
// its id first and committed later: concurrent transactions, or a Galera
// cluster's interleaved auto-increments) is moved by the next sweep: each
// sweep pages from the start, no cursor carries over.
func TestSweepFindsLowerIDCommittedLater(t *testing.T) {
	st := ordertest.Open(t, ordertest.MySQLURL(t))
	e := newEnv(t, st, order.Config{Keys: order.Keys{Prefix: "sweeplow:"}})
	ctx := context.Background()
	if _, err := e.svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "Mug", Available: 100}); err != nil {
		t.Fatal(err)
	}
	due := time.Now().Add(-time.Second).UnixMilli()
	// Its unit of stock is taken first, apart: the SKU's row must not stay
	// locked by the open transaction.
	if _, err := st.DB().ExecContext(ctx, `UPDATE skus SET available = available - 1 WHERE sku = 1`); err != nil {
		t.Fatal(err)
	}
	tx, err := st.DB().BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO orders (user_id, sku, qty, amount_cents, status, created_at, pay_deadline, auto_confirmed)
		VALUES (1, 1, 1, 100, 'pending', ?, ?, 0)`, due, due)
	if err != nil {
		t.Fatal(err)
	}
	low, _ := res.LastInsertId()
	high := ordertest.SeedPending(t, st, 1, 1, time.UnixMilli(due))[0]
	if high <= low {
		t.Fatalf("ids %d then %d: want the committed one higher", low, high)
	}
	if n, err := e.svc.Sweep(ctx, 0); err != nil || n != 1 {
		t.Fatalf("sweep moved %d (%v), want the committed order", n, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n, err := e.svc.Sweep(ctx, 0); err != nil || n != 1 {
		t.Fatalf("next sweep moved %d (%v), want the lower id committed later", n, err)
	}
	for _, id := range []int64{low, high} {
		if o, err := st.Get(ctx, id); err != nil || o.Status != order.Expired {
			t.Fatalf("order %d: %s (%v), want expired", id, o.Status, err)
		}
	}
	ordertest.CheckStock(t, st, 1, 100)
}

// An admin extends pending orders at the moment their pay deadline comes
// while a daemon expires them: each order either expired (the extension is
// refused, naming the status) or got its new deadline (and a payment after
// it succeeds), never both; stock comes back once per expired order, in the
// database and in Redis.
func TestExtendRacesExpiry(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		const n, total = 200, 1000
		e := newEnv(t, st, order.Config{Keys: order.Keys{Prefix: "extend:"}, PayTimeout: 600 * time.Millisecond})
		ctx := context.Background()
		if _, err := e.svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "Mug", Available: total}); err != nil {
			t.Fatal(err)
		}
		e.daemon(t, daemon.Config{SweepInterval: time.Hour})
		orders := make([]order.Order, n)
		for i := range orders {
			o, err := e.svc.Create(ctx, int64(i+1), 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			orders[i] = o
		}
		var mu sync.Mutex
		var extended, refused []order.Order
		var wg sync.WaitGroup
		for i, o := range orders {
			wg.Add(1)
			at := o.PayDeadline.Add(time.Duration(i%9-4) * 5 * time.Millisecond) // the deadline, give or take 20 ms
			time.AfterFunc(time.Until(at), func() {
				defer wg.Done()
				got, err := e.svc.MoveDeadline(ctx, o.ID, order.Pending, time.Now().Add(time.Minute))
				mu.Lock()
				defer mu.Unlock()
				var oe *order.Error
				switch {
				case err == nil:
					extended = append(extended, got)
				case errors.As(err, &oe) && oe.Code == order.CodeInvalidTransition && oe.Status == order.Expired:
					refused = append(refused, o)
				default:
					t.Errorf("order %d: extend: %v", o.ID, err)
				}
			})
		}
		wg.Wait()
		t.Logf("of %d orders extended at their deadline while the daemon expired them: %d extended, %d expired first", n, len(extended), len(refused))
		for _, o := range extended {
			if _, err := e.svc.Pay(ctx, o.UserID, o.ID); err != nil {
				t.Fatalf("order %d: a payment after its extension: %v", o.ID, err)
			}
		}
		for _, o := range refused {
			if got, err := st.Get(ctx, o.ID); err != nil || got.Status != order.Expired {
				t.Fatalf("order %d: extension refused as expired, order %s (%v)", o.ID, got.Status, err)
			}
		}
		ordertest.CheckStock(t, st, 1, total)
		k, err := st.GetSKU(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if k.Available != total-int64(len(extended)) {
			t.Fatalf("available %d, want %d: the expired orders' units back once", k.Available, total-len(extended))
		}
		testkit.WaitFor(t, 5*time.Second, "the Redis stock counter equal to the database's", func() bool {
			v, ok, err := e.counter.Available(ctx, 1)
			return err == nil && ok && v == k.Available
		})
	})
}
