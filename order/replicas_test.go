package order_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/daemon"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/stock"
)

// txCounter counts the database transactions that move orders: every call
// of Expire and Complete is one.
type txCounter struct {
	order.Store
	n *atomic.Int64
}

func (c txCounter) Expire(ctx context.Context, ids []int64, now time.Time, source string) (order.Moves, error) {
	c.n.Add(1)
	return c.Store.Expire(ctx, ids, now, source)
}

func (c txCounter) Complete(ctx context.Context, ids []int64, now time.Time, source string) (order.Moves, error) {
	c.n.Add(1)
	return c.Store.Complete(ctx, ids, now, source)
}

// burstResult is what a burst handled by some replicas of the daemon cost.
type burstResult struct {
	tx          int64   // transactions that moved orders, all replicas
	transitions []int64 // by replica
	unchanged   int64   // orders brought to a transaction that left them as they were
	maxLate     time.Duration
	took        time.Duration // from the deadline to the last transition
	batches     int           // from expiry events and reaped timers
}

// replicaBurst runs n replicas of the daemon (each with its own connection
// pool, as separate processes have) over one fresh MariaDB database and
// rdb, seeds orders pending orders sharing one deadline, and waits until
// every one expired. Each replica's sweep runs at start only (the events and
// the reaper do the work), so the counts are those of the event path.
func replicaBurst(t *testing.T, rdb redis.UniversalClient, sentinel *redis.FailoverOptions, prefix string, n, orders int) burstResult {
	t.Helper()
	url := ordertest.MySQLURL(t)
	st := ordertest.Open(t, url)
	keys := order.Keys{Prefix: prefix}
	const total = 1_000_000
	ctx := context.Background()
	if _, err := order.NewService(st, stock.NewCounter(rdb, keys.Stock()), nil, order.Config{Keys: keys}).
		PutSKU(ctx, order.SKU{SKU: 1, Name: "x", Available: total}); err != nil {
		t.Fatal(err)
	}

	var tx, unchanged atomic.Int64
	var mu sync.Mutex
	var res burstResult
	res.transitions = make([]int64, n)
	var last time.Time
	ls := make([]*daemon.Daemon, n)
	for i := range n {
		own, err := sqlstore.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { own.Close() })
		sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: prefix, Index: keys.DueIndex()})
		svc := order.NewService(txCounter{own, &tx}, stock.NewCounter(rdb, keys.Stock()), sched, order.Config{Keys: keys,
			OnTransition: func(tr order.Transition) {
				mu.Lock()
				res.transitions[i]++
				res.maxLate = max(res.maxLate, tr.Lateness)
				last = time.Now()
				mu.Unlock()
			}})
		ls[i] = daemon.New(svc, rdb, daemon.Config{SweepInterval: time.Hour, Batch: daemon.BatchConfig{OnBatch: func(_ string, size, moved int) {
			unchanged.Add(int64(size - moved))
			mu.Lock()
			res.batches++
			mu.Unlock()
		}}, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Listener: expiry.ListenerConfig{Scheduler: sched, ID: "replica-" + strconv.Itoa(i), Sentinel: sentinel}})
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); ls[i].Run(runCtx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	testkit.WaitFor(t, 20*time.Second, fmt.Sprintf("%d replicas subscribed, holding the shards evenly", n), func() bool {
		held := 0
		for _, l := range ls {
			s := l.Stats()
			if !l.Health().Subscribed || s.Listeners != n || s.Shards < 16/n {
				return false
			}
			held += s.Shards
		}
		return held == 16
	})
	// The catch-up sweeps at start-up found nothing to move: count from here.
	tx.Store(0)

	// Seed with a far deadline, then set the shared one: what has to happen
	// before it is then quick (one UPDATE and the timers).
	ids := ordertest.SeedPending(t, st, 1, orders, time.Now().Add(time.Hour))
	deadline := time.Now().Add(2 * time.Second).Truncate(time.Millisecond)
	if _, err := st.DB().Exec(`UPDATE orders SET pay_deadline = ? WHERE status = 'pending'`, deadline.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: prefix, Index: keys.DueIndex()})
	for chunk := range slicesChunk(ids, 5000) {
		var ts []expiry.Timer
		for _, id := range chunk {
			ts = append(ts, expiry.Timer{Key: keys.Pay(id), Deadline: deadline})
		}
		if err := sched.ScheduleMany(ctx, ts...); err != nil {
			t.Fatal(err)
		}
	}
	if time.Now().After(deadline) {
		t.Fatal("seeding took longer than the time to the deadline")
	}
	testkit.WaitFor(t, 60*time.Second, fmt.Sprintf("%d orders expired", orders), func() bool {
		var left int
		if err := st.DB().Get(&left, `SELECT COUNT(*) FROM orders WHERE status = 'pending'`); err != nil {
			t.Fatal(err)
		}
		return left == 0
	})
	// Every event has been heard by every replica once their queues are empty.
	testkit.WaitFor(t, 30*time.Second, "the replicas idle", func() bool {
		for _, l := range ls {
			if s := l.Stats(); s.QueueDepth > 0 || s.InFlight > 0 {
				return false
			}
		}
		return true
	})
	ordertest.CheckStock(t, st, 1, total)
	mu.Lock()
	defer mu.Unlock()
	var sum int64
	for _, c := range res.transitions {
		sum += c
	}
	if sum != int64(orders) {
		t.Fatalf("%d transitions for %d orders: an order moved twice or not at all", sum, orders)
	}
	res.tx, res.unchanged, res.took = tx.Load(), unchanged.Load(), last.Sub(deadline)
	return res
}

// slicesChunk yields ids n at a time.
func slicesChunk(ids []int64, n int) func(func([]int64) bool) {
	return func(yield func([]int64) bool) {
		for i := 0; i < len(ids); i += n {
			if !yield(ids[i:min(len(ids), i+n)]) {
				return
			}
		}
	}
}

// checkShared fails unless three replicas cost about what one does on the
// same burst, and share it.
func checkShared(t *testing.T, one, three burstResult, orders int) {
	t.Helper()
	t.Logf("1 replica: %d transactions (%d batches), %d unchanged, max late %v, last %v after the deadline", one.tx, one.batches, one.unchanged, one.maxLate, one.took)
	t.Logf("3 replicas: %d transactions (%d batches), %d unchanged, max late %v, last %v after the deadline; transitions by replica %v",
		three.tx, three.batches, three.unchanged, three.maxLate, three.took, three.transitions)
	if float64(three.tx) > 1.3*float64(one.tx) {
		t.Errorf("3 replicas made %d transactions, 1 made %d: more than 1.3×", three.tx, one.tx)
	}
	for i, c := range three.transitions {
		if c > int64(orders)*6/10 {
			t.Errorf("replica %d made %d of %d transitions (over 60%%)", i, c, orders)
		}
	}
}

// Three daemons on one Redis and MariaDB share a burst of 20,000 orders
// sharing a deadline: each expires once, stock is conserved, and they make
// about the transactions one daemon makes, none doing most of the work.
func TestReplicasShareBurst(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	const orders = 20000
	one := replicaBurst(t, rdb, nil, "one:", 1, orders)
	three := replicaBurst(t, rdb, nil, "three:", 3, orders)
	checkShared(t, one, three, orders)
}

// The same on a Redis Cluster: the shards, their leases and their keys'
// events live on three masters.
func TestReplicasShareBurstOnCluster(t *testing.T) {
	const prefix = "orderd-replicas:"
	rdb := testkit.Cluster(t, prefix)
	const orders = 20000
	one := replicaBurst(t, rdb, nil, prefix+"one:", 1, orders)
	three := replicaBurst(t, rdb, nil, prefix+"three:", 3, orders)
	checkShared(t, one, three, orders)
}

// And behind Sentinel: the leases live on the master the sentinels name.
func TestReplicasShareBurstBehindSentinel(t *testing.T) {
	rdb, fo := testkit.Sentinel(t, redisDB)
	const orders = 20000
	one := replicaBurst(t, rdb, fo, "one:", 1, orders)
	three := replicaBurst(t, rdb, fo, "three:", 3, orders)
	checkShared(t, one, three, orders)
}
