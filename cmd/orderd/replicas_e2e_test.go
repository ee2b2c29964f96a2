package main_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/order/transitions"
	"github.com/orderd/orderd/stock"
)

// replicaSet is several `orderd listen` sharing one Redis and MariaDB.
type replicaSet struct {
	env     []string
	procs   []*proc
	metrics []string // each one's /metrics URL
	dbURL   string
	st      *sqlstore.Store
	rdb     *redis.Client
	keys    order.Keys
}

const replicaStock = 1_000_000

func newReplicaSet(t *testing.T, prefix string, sweep time.Duration) *replicaSet {
	t.Helper()
	url := ordertest.MySQLURL(t)
	rs := &replicaSet{rdb: testkit.Redis(t, redisDB), keys: order.Keys{Prefix: prefix}, dbURL: url}
	rs.env = []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB), "ORDERD_DB=" + url,
		"ORDERD_KEY_PREFIX=" + prefix, "ORDERD_SWEEP_INTERVAL=" + sweep.String(), "ORDERD_LOG_FORMAT=json"}
	if code, out := runCmd(t, rs.env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	rs.st = ordertest.Open(t, url)
	svc := order.NewService(rs.st, stock.NewCounter(rs.rdb, rs.keys.Stock()), nil, order.Config{Keys: rs.keys})
	if _, err := svc.PutSKU(context.Background(), order.SKU{SKU: 1, Name: "Mug", Available: replicaStock}); err != nil {
		t.Fatal(err)
	}
	return rs
}

// start starts listener i (again), with env added to the set's, and waits
// until it answers /healthz.
func (rs *replicaSet) start(t *testing.T, i int, env ...string) {
	t.Helper()
	addr := freeAddr(t)
	p := start(t, append(slices.Clone(rs.env), env...), "listen", "--metrics-addr", addr)
	if i == len(rs.procs) {
		rs.procs, rs.metrics = append(rs.procs, nil), append(rs.metrics, "")
	}
	rs.procs[i], rs.metrics[i] = p, "http://"+addr+"/metrics"
	waitHTTP(t, "http://"+addr+"/healthz")
}

// startThree starts three listeners, waits until they hold the shards
// evenly, and returns the one relaying the transitions stream.
func (rs *replicaSet) startThree(t *testing.T) (relay int) {
	t.Helper()
	for i := range 3 {
		rs.start(t, i)
	}
	rs.waitSpread(t, 20*time.Second, 0, 1, 2)
	relay = -1
	testkit.WaitFor(t, 20*time.Second, "a listener relaying the transitions stream", func() bool {
		for i := range 3 {
			if rs.metric(t, i, "orderd_transitions_relay_held") == 1 {
				relay = i
				return true
			}
		}
		return false
	})
	return relay
}

var metricLine = regexp.MustCompile(`(?m)^(orderd_[a-z_]+) ([0-9.e+-]+)$`)

// metric reads a metric of listener i.
func (rs *replicaSet) metric(t *testing.T, i int, name string) float64 {
	t.Helper()
	for _, m := range metricLine.FindAllStringSubmatch(metricsText(t, rs.metrics[i]), -1) {
		if m[1] == name {
			v, _ := strconv.ParseFloat(m[2], 64)
			return v
		}
	}
	t.Fatalf("listener %d exports no %s", i, name)
	return 0
}

// waitSpread waits until the listeners alive hold the 16 shards evenly.
func (rs *replicaSet) waitSpread(t *testing.T, timeout time.Duration, alive ...int) {
	t.Helper()
	testkit.WaitFor(t, timeout, fmt.Sprintf("16 shards spread over listeners %v", alive), func() bool {
		total := 0.0
		for _, i := range alive {
			held := rs.metric(t, i, "orderd_shards_held")
			if held < float64(16/len(alive)) || rs.metric(t, i, "orderd_listeners") != float64(len(alive)) {
				return false
			}
			total += held
		}
		return total == 16
	})
}

// seed puts n pending orders into the database, the i-th due at deadline(i),
// with their timers, as `orderd serve` would have.
func (rs *replicaSet) seed(t *testing.T, n int, deadline func(int) time.Time) []int64 {
	t.Helper()
	ids := ordertest.SeedPendingAt(t, rs.st, 1, n, deadline)
	sched := expiry.NewScheduler(rs.rdb, expiry.SchedulerConfig{KeyPrefix: rs.keys.Prefix, Index: rs.keys.DueIndex()})
	var ts []expiry.Timer
	for i, id := range ids {
		ts = append(ts, expiry.Timer{Key: rs.keys.Pay(id), Deadline: deadline(i)})
		if len(ts) == 5000 || i == len(ids)-1 {
			if err := sched.ScheduleMany(context.Background(), ts...); err != nil {
				t.Fatal(err)
			}
			ts = ts[:0]
		}
	}
	return ids
}

func (rs *replicaSet) count(t *testing.T, status order.Status) int {
	t.Helper()
	var n int
	if err := rs.st.DB().Get(&n, `SELECT COUNT(*) FROM orders WHERE status = ?`, string(status)); err != nil {
		t.Fatal(err)
	}
	return n
}

// maxLate is the greatest lateness of the expired orders.
func (rs *replicaSet) maxLate(t *testing.T) time.Duration {
	t.Helper()
	var ms int64
	if err := rs.st.DB().Get(&ms, `SELECT COALESCE(MAX(cancelled_at - pay_deadline), 0) FROM orders WHERE status = 'expired'`); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ms) * time.Millisecond
}

// kill -9 of one of three listeners in the middle of a burst of 20,000 (the
// one relaying the transitions stream): the other two take its shards and
// finish every order within the sweep interval, each order expired once
// (stock conserved), and every expiry reaches the stream, none lost with the
// relay.
func TestListenReplicasKillOneMidBurst(t *testing.T) {
	const sweep, orders = 10 * time.Second, 20000
	rs := newReplicaSet(t, "kill9:", sweep)
	victim := rs.startThree(t)
	var rest []int
	for i := range 3 {
		if i != victim {
			rest = append(rest, i)
		}
	}

	deadline := time.Now().Add(3 * time.Second)
	ids := rs.seed(t, orders, func(int) time.Time { return deadline })
	testkit.WaitFor(t, 30*time.Second, "the burst under way", func() bool { return rs.count(t, order.Expired) > 0 })
	if err := rs.procs[victim].cmd.Process.Kill(); err != nil { // SIGKILL: no release, no drain
		t.Fatal(err)
	}
	<-rs.procs[victim].done
	killed := time.Now()
	left := rs.count(t, order.Pending)
	testkit.WaitFor(t, sweep, "every order expired within the sweep interval of the kill", func() bool {
		return rs.count(t, order.Pending) == 0
	})
	t.Logf("killed a listener with %d of %d orders left; the rest expired %v later; max lateness %v",
		left, orders, time.Since(killed).Round(time.Millisecond), rs.maxLate(t))
	rs.waitSpread(t, 15*time.Second, rest...)
	if !containsLine(rs.procs[rest[0]].stderr.String(), `"msg":"shards held"`, `"listeners":2`) {
		t.Errorf("listener %d did not log the shards it holds after the take-over:\n%s", rest[0], rs.procs[rest[0]].stderr)
	}
	expired := rs.allExpired(t, orders)
	dup := 0
	for _, id := range ids {
		dup += expired[id] - 1
	}
	t.Logf("transitions stream: %d expiries, %d appended twice (the relay was killed between its append and its delete)", orders, dup)
	for _, i := range rest {
		if code := rs.procs[i].stop(t); code != 0 {
			t.Fatalf("listener %d exit %d", i, code)
		}
	}
	if n, _, err := rs.st.ChangeBacklog(context.Background()); err != nil || n != 0 {
		t.Fatalf("outbox holds %d (%v) after the listeners stopped, want 0", n, err)
	}
}

// allExpired checks that all n orders expired, once each, with stock
// conserved, waits until every expiry is in the transitions stream (at least
// once) and returns, per order, its expiries there.
func (rs *replicaSet) allExpired(t *testing.T, n int) map[int64]int {
	t.Helper()
	if got := rs.count(t, order.Expired); got != n {
		t.Fatalf("%d orders expired, want %d", got, n)
	}
	ordertest.CheckStock(t, rs.st, 1, replicaStock)
	var expired map[int64]int
	testkit.WaitFor(t, 30*time.Second, "every expiry in the transitions stream", func() bool {
		expired = rs.streamCount(t, order.Expired)
		return len(expired) == n
	})
	return expired
}

// streamCount reads the transitions stream and counts, per order, its
// entries moving it to status to.
func (rs *replicaSet) streamCount(t *testing.T, to order.Status) map[int64]int {
	t.Helper()
	out := map[int64]int{}
	eachTransition(t, rs.rdb, rs.keys.Transitions(), func(c order.Change) {
		if c.To == to {
			out[c.OrderID]++
		}
	})
	return out
}

// eachTransition calls f with each entry of the transitions stream, oldest
// first.
func eachTransition(t *testing.T, rdb redis.UniversalClient, stream string, f func(order.Change)) {
	t.Helper()
	for start := "-"; ; {
		msgs, err := rdb.XRangeN(context.Background(), stream, start, "+", 10000).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			c, err := transitions.Decode(m.Values)
			if err != nil {
				t.Fatal(err)
			}
			f(c)
		}
		if len(msgs) < 10000 {
			return
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// A rolling restart of three listeners (one at a time: SIGTERM, wait for the
// exit, start again) while orders fall due: none is late by more than the
// lease take-over time (the lease TTL, 5 s), with no periodic sweep to
// rescue them.
func TestListenReplicasRollingRestart(t *testing.T) {
	const orders = 3000
	rs := newReplicaSet(t, "rolling:", time.Hour)
	for i := range 3 {
		rs.start(t, i)
	}
	rs.waitSpread(t, 20*time.Second, 0, 1, 2)

	// Orders fall due every few ms from 2 s on, for longer than the restarts take.
	first := time.Now().Add(2 * time.Second)
	rs.seed(t, orders, func(i int) time.Time { return first.Add(time.Duration(i) * 5 * time.Millisecond) })
	testkit.WaitFor(t, 30*time.Second, "the first orders expired", func() bool { return rs.count(t, order.Expired) > 0 })
	for i := range 3 {
		if code := rs.procs[i].stop(t); code != 0 {
			t.Fatalf("listener %d exit %d after SIGTERM", i, code)
		}
		rs.start(t, i)
		rs.waitSpread(t, 20*time.Second, 0, 1, 2)
	}
	if rs.count(t, order.Pending) == 0 {
		t.Fatal("every order was due before the restarts ended: the test proves nothing")
	}
	testkit.WaitFor(t, 60*time.Second, "every order expired", func() bool { return rs.count(t, order.Pending) == 0 })
	late := rs.maxLate(t)
	t.Logf("rolling restart of 3: %d orders, max lateness %v", orders, late)
	if late > 5*time.Second {
		t.Fatalf("an order expired %v after its deadline: more than the lease take-over time", late)
	}
	ordertest.CheckStock(t, rs.st, 1, replicaStock)
	for i := range 3 {
		rs.procs[i].stop(t)
	}
}
