package main_test

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/stock"
)

// leaseTTL is the listeners' lease TTL (the default).
const leaseTTL = 5 * time.Second

// One of three listeners frozen (SIGSTOP) for 10 s at the start of a burst of
// 20,000 orders, the one relaying the transitions stream: the server ends
// its open transaction within seconds, the others take its shards when its
// leases lapse and finish every order while it is still frozen, none later
// than the lease TTL + 2 s after the freeze; resumed (SIGCONT), it commits
// nothing twice and takes a share again. Every order expired once, stock is
// conserved, and the stream has each expiry once.
func TestListenerFrozenMidBurst(t *testing.T) {
	const orders, freeze = 20000, 10 * time.Second
	rs := newReplicaSet(t, "frozen:", time.Hour) // no periodic sweep: the take-over does it
	victim := rs.startThree(t)

	deadline := time.Now().Add(3 * time.Second)
	ids := rs.seed(t, orders, func(int) time.Time { return deadline })
	testkit.WaitFor(t, 30*time.Second, "the burst under way", func() bool { return rs.count(t, order.Expired) > 0 })
	p := rs.procs[victim].cmd.Process
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozenAt := time.Now()
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			p.Signal(syscall.SIGCONT)
		}
	}
	defer thaw()
	left := rs.count(t, order.Pending)

	// The server ends a transaction the frozen listener left open (2 s idle):
	// its connections' transactions, told by their client ports.
	dbu, err := url.Parse(rs.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	dbPort, _ := strconv.Atoi(dbu.Port())
	ports, err := testkit.ConnPorts(p.Pid, dbPort)
	if err != nil || len(ports) == 0 {
		t.Fatalf("the frozen listener's database connections: %v %v", ports, err)
	}
	var open []string // what the frozen listener's open transactions are doing, when the wait fails
	for {
		var trx []struct {
			Host string `db:"host"`
			What string `db:"what"`
		}
		if err := rs.st.DB().Select(&trx, `SELECT p.host, CONCAT(t.trx_state, ' since ', t.trx_started, ', ', p.command, ' ', p.time, ' s, ', t.trx_rows_locked, ' rows locked: ', COALESCE(p.info, '')) AS what
			FROM information_schema.innodb_trx t
			JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id
			WHERE p.db = DATABASE()`); err != nil {
			t.Fatal(err)
		}
		open = open[:0]
		for _, x := range trx {
			if _, port, ok := strings.Cut(x.Host, ":"); ok {
				if n, _ := strconv.Atoi(port); ports[n] {
					open = append(open, x.Host+" "+x.What)
				}
			}
		}
		if len(open) == 0 {
			break
		}
		if time.Since(frozenAt) > testkit.Scale(freeze-time.Second) {
			t.Fatalf("the frozen listener's transactions still open %v after the freeze: %q", time.Since(frozenAt), open)
		}
		time.Sleep(5 * time.Millisecond) // polling
	}
	t.Logf("the frozen listener's transactions ended %v after the freeze", time.Since(frozenAt).Round(time.Millisecond))
	testkit.WaitFor(t, time.Until(frozenAt.Add(freeze)), "every order expired while the listener is frozen", func() bool {
		return rs.count(t, order.Pending) == 0
	})
	done := time.Since(frozenAt)
	late, frozenLate := rs.maxLate(t), frozenAt.Sub(deadline)
	t.Logf("froze a listener %v after the deadline with %d of %d orders left; the rest expired %v later; max lateness %v",
		frozenLate.Round(time.Millisecond), left, orders, done.Round(time.Millisecond), late)
	if late > frozenLate+leaseTTL+2*time.Second {
		t.Errorf("an order expired %v after its deadline: more than the lease TTL + 2 s after the freeze (%v after the deadline)", late, frozenLate)
	}
	time.Sleep(time.Until(frozenAt.Add(freeze))) // the freeze is the fault under test, not a wait for a condition
	thaw()

	rs.waitSpread(t, 20*time.Second, 0, 1, 2) // the resumed one takes a share again
	expired := rs.allExpired(t, orders)
	for _, id := range ids {
		if expired[id] != 1 {
			t.Fatalf("order %d: %d expiries in the stream, want 1", id, expired[id])
		}
	}
	for i := range 3 {
		if code := rs.procs[i].stop(t); code != 0 {
			t.Fatalf("listener %d exit %d", i, code)
		}
	}
}

// A listener cut off from its database (the connection cut by a proxy)
// gives its shards to the others within the lease TTL + 2 s, says so in
// /healthz, and the orders of its shards that fall due meanwhile expire on
// time with the others; once the database answers again it takes a share
// again.
func TestListenerCutOffFromDatabase(t *testing.T) {
	rs := newReplicaSet(t, "dbcut:", time.Hour)
	u, err := url.Parse(rs.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testkit.NewProxy(t, u.Host)
	u.Host = proxy.Addr()
	rs.start(t, 0)
	rs.start(t, 1)
	rs.start(t, 2, "ORDERD_DB="+u.String())
	rs.waitSpread(t, 20*time.Second, 0, 1, 2)

	due := time.Now().Add(2 * time.Second)
	rs.seed(t, 600, func(i int) time.Time { return due.Add(time.Duration(i) * 5 * time.Millisecond) })
	proxy.Cut()
	cutAt := time.Now()
	testkit.WaitFor(t, leaseTTL+2*time.Second, "the others holding every shard", func() bool {
		return rs.metric(t, 0, "orderd_shards_held")+rs.metric(t, 1, "orderd_shards_held") == 16 &&
			rs.metric(t, 2, "orderd_shards_held") == 0
	})
	t.Logf("the shards of the listener cut off from its database were taken %v after the cut", time.Since(cutAt).Round(time.Millisecond))
	code, body := healthz(t, strings.TrimSuffix(rs.metrics[2], "/metrics")+"/healthz")
	if code != 503 || body["database"] == "" {
		t.Errorf("the cut-off listener's /healthz: %d %v, want 503 naming the database", code, body)
	}
	testkit.WaitFor(t, 30*time.Second, "every order expired", func() bool { return rs.count(t, order.Pending) == 0 })
	if late := rs.maxLate(t); late > leaseTTL+2*time.Second {
		t.Errorf("an order expired %v after its deadline", late)
	}
	proxy.Restore()
	rs.waitSpread(t, 20*time.Second, 0, 1, 2)
	ordertest.CheckStock(t, rs.st, 1, replicaStock)
	for i := range 3 {
		if code := rs.procs[i].stop(t); code != 0 {
			t.Fatalf("listener %d exit %d", i, code)
		}
	}
}

// Redis stopped for 10 s while 2,000 orders fall due: the listeners go on
// sweeping the database under a database lease, so every order expires
// within the sweep interval of its deadline; the stock given back meanwhile
// reaches the Redis counter within 1 s of Redis answering again.
func TestRedisStoppedOrdersStillExpire(t *testing.T) {
	const orders, sweep, outage = 2000, 2 * time.Second, 10 * time.Second
	rs := testkit.StartPrivateRedis(t, "--notify-keyspace-events", "Ex", "--appendonly", "yes")
	dbURL := ordertest.MySQLURL(t)
	keys := order.Keys{Prefix: "down:"}
	env := []string{"ORDERD_REDIS_URL=unix://" + rs.Sock, "ORDERD_DB=" + dbURL, "ORDERD_KEY_PREFIX=" + keys.Prefix,
		"ORDERD_SWEEP_INTERVAL=" + sweep.String(), "ORDERD_LOG_FORMAT=json"}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	var procs []*proc
	for range 2 {
		addr := freeAddr(t)
		procs = append(procs, start(t, env, "listen", "--metrics-addr", addr))
		waitHTTP(t, "http://"+addr+"/healthz")
	}

	st := ordertest.Open(t, dbURL)
	counter := stock.NewCounter(rs.Client, keys.Stock())
	sched := expiry.NewScheduler(rs.Client, expiry.SchedulerConfig{KeyPrefix: keys.Prefix, Index: keys.DueIndex()})
	svc := order.NewService(st, counter, sched, order.Config{Keys: keys})
	ctx := context.Background()
	const total = 5000
	if _, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "Mug", Available: total}); err != nil {
		t.Fatal(err)
	}
	// Orders as serve makes them: rows, their units taken from the Redis
	// counter too, and their timers; they fall due from 2 s on, over 6 s.
	first := time.Now().Add(2 * time.Second)
	deadline := func(i int) time.Time { return first.Add(time.Duration(i) * 3 * time.Millisecond) }
	ids := ordertest.SeedPendingAt(t, st, 1, orders, deadline)
	if err := svc.ResyncStock(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var timers []expiry.Timer
	for i, id := range ids {
		timers = append(timers, expiry.Timer{Key: keys.Pay(id), Deadline: deadline(i)})
	}
	if err := sched.ScheduleMany(ctx, timers...); err != nil {
		t.Fatal(err)
	}
	if time.Now().After(first) {
		t.Fatal("the orders fell due before Redis stops")
	}
	rs.Stop()
	stopped := time.Now()
	testkit.WaitFor(t, outage, "every order expired while Redis is down", func() bool {
		var n int
		if err := st.DB().Get(&n, `SELECT COUNT(*) FROM orders WHERE status = 'expired'`); err != nil {
			t.Fatal(err)
		}
		return n == orders
	})
	var late int64
	if err := st.DB().Get(&late, `SELECT MAX(cancelled_at - pay_deadline) FROM orders`); err != nil {
		t.Fatal(err)
	}
	t.Logf("Redis down: %d orders expired, the latest %v after its deadline", orders, time.Duration(late)*time.Millisecond)
	if time.Duration(late)*time.Millisecond > sweep {
		t.Errorf("an order expired %v after its deadline while Redis was down: more than the sweep interval %v", time.Duration(late)*time.Millisecond, sweep)
	}
	ordertest.CheckStock(t, st, 1, total)
	time.Sleep(time.Until(stopped.Add(outage))) // the outage is the fault under test, not a wait for a condition
	rs.Start()
	answered := time.Now() // Start returns once the server answers
	testkit.WaitFor(t, 10*time.Second, "the Redis counter equal to the database", func() bool {
		k, err := st.GetSKU(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		s, err := counter.States(ctx, 1)
		return err == nil && s[0].OK && s[0].Available == k.Available
	})
	took := time.Since(answered)
	t.Logf("the counter agreed with the database %v after Redis answered again", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("the counter agreed %v after Redis answered, want within 1 s", took)
	}
	for i, p := range procs {
		if code := p.stop(t); code != 0 {
			t.Fatalf("listener %d exit %d", i, code)
		}
	}
}
