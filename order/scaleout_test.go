package order_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
	"github.com/orderd/orderd/stock"
)

// scaleEnv is the service and daemon of `orderd listen` on a Redis Cluster
// or behind Sentinel, with every transition a deadline made recorded.
type scaleEnv struct {
	svc     *order.Service
	store   order.Store
	mu      sync.Mutex
	moved   []order.Transition
	due     []time.Time // the deadline of each of moved
	l       *daemon.Daemon
	created atomic.Int64 // by stream
}

func newScaleEnv(t *testing.T, rdb redis.UniversalClient, prefix string, payTimeout, sweep time.Duration, sentinel *redis.FailoverOptions) *scaleEnv {
	t.Helper()
	st := ordertest.Open(t, ordertest.SQLiteURL(t))
	e := &scaleEnv{store: st}
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: prefix + "orderd:due"})
	e.svc = order.NewService(st, stock.NewCounter(rdb, prefix), sched, order.Config{PayTimeout: payTimeout, Keys: order.Keys{Prefix: prefix},
		OnTransition: func(tr order.Transition) {
			e.mu.Lock()
			e.moved, e.due = append(e.moved, tr), append(e.due, time.Now().Add(-tr.Lateness))
			e.mu.Unlock()
		}})
	if _, err := e.svc.PutSKU(context.Background(), order.SKU{SKU: 1, Name: "x", Available: 100000}); err != nil {
		t.Fatal(err)
	}
	e.l = daemon.New(e.svc, rdb, daemon.Config{SweepInterval: sweep, Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)), Listener: expiry.ListenerConfig{Scheduler: sched, Sentinel: sentinel}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testkit.WaitFor(t, 10*time.Second, "subscribed on every master", func() bool { return e.l.Health().Subscribed })
	return e
}

// stream creates an order every gap until stop is closed, and returns the
// ids when it ends.
func (e *scaleEnv) stream(t *testing.T, gap time.Duration, stop <-chan struct{}) <-chan []int64 {
	out := make(chan []int64, 1)
	go func() {
		var ids []int64
		tick := time.NewTicker(gap)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				out <- ids
				return
			case <-tick.C:
			}
			o, err := e.svc.Create(context.Background(), int64(len(ids)%1000+1), 1, 1)
			if err != nil {
				t.Errorf("create during the stream: %v", err)
				continue
			}
			ids = append(ids, o.ID)
			e.created.Add(1)
		}
	}()
	return out
}

// waitCreated waits until the stream has created n more orders than now:
// the scenario's clock is the stream's progress, not a sleep.
func (e *scaleEnv) waitCreated(t *testing.T, n int64) {
	t.Helper()
	target := e.created.Load() + n
	testkit.WaitFor(t, 60*time.Second, "the stream going on", func() bool { return e.created.Load() >= target })
}

// dueAfter returns the transitions of the orders whose deadline came after t.
func (e *scaleEnv) dueAfter(t time.Time) []order.Transition {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []order.Transition
	for i, d := range e.due {
		if d.After(t) {
			out = append(out, e.moved[i])
		}
	}
	return out
}

func (e *scaleEnv) all() []order.Transition {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]order.Transition(nil), e.moved...)
}

// waitReported waits until n transitions were reported (OnTransition): a
// batch reports its orders just after its commit, which waitExpired may see
// first.
func (e *scaleEnv) waitReported(t *testing.T, n int) {
	t.Helper()
	testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("%d transitions reported", n), func() bool { return len(e.all()) >= n })
}

// waitExpired waits until every order of ids is expired.
func (e *scaleEnv) waitExpired(t *testing.T, timeout time.Duration, ids []int64) {
	t.Helper()
	testkit.WaitFor(t, timeout, "every order expired", func() bool {
		for _, id := range ids {
			if o, err := e.store.Get(context.Background(), id); err != nil || o.Status != order.Expired {
				return false
			}
		}
		return true
	})
}

// onTime fails unless every transition was made by an event within limit of
// its deadline.
func onTime(t *testing.T, what string, trs []order.Transition, limit time.Duration) {
	t.Helper()
	for _, tr := range trs {
		if tr.Source != "event" || tr.Lateness > limit {
			t.Errorf("%s: an order moved by %s %v after its deadline, want by an event within %v", what, tr.Source, tr.Lateness, limit)
			return
		}
	}
}

// latest returns the greatest lateness of trs.
func latest(trs []order.Transition) time.Duration {
	var m time.Duration
	for _, tr := range trs {
		m = max(m, tr.Lateness)
	}
	return m
}

// On a 3-master cluster, timers whose keys live on every master all fire on
// time: the daemon listens on each master (Redis publishes an expiry only on
// the node that owns the key) and reaps every shard of the due index.
func TestClusterTimersOnEveryMaster(t *testing.T) {
	const prefix = "t-cluster-every:"
	c := testkit.Cluster(t, prefix)
	e := newScaleEnv(t, c, prefix, time.Second, time.Hour, nil) // no sweep: only events can close them
	ctx := context.Background()
	var ids []int64
	nodes := map[string]bool{}
	for i := range 60 {
		o, err := e.svc.Create(ctx, int64(i+1), 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
		m, err := c.MasterForKey(ctx, prefix+order.PayKey(o.ID))
		if err != nil {
			t.Fatal(err)
		}
		nodes[m.Options().Addr] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("the timers' keys live on %d masters, want all 3", len(nodes))
	}
	e.waitExpired(t, 20*time.Second, ids)
	trs := e.all()
	onTime(t, "cluster", trs, time.Second)
	t.Logf("60 timers on 3 masters: latest %v after its deadline", latest(trs))
}

// During a steady stream of timers on the cluster, a manual CLUSTER FAILOVER
// and then a killed master: every timer is handled, none later than the
// sweep interval, and timers are on time again once the topology settles.
func TestClusterFailovers(t *testing.T) {
	const prefix = "t-cluster-failover:"
	const sweep = 2 * time.Second
	c := testkit.Cluster(t, prefix)
	e := newScaleEnv(t, c, prefix, time.Second, sweep, nil)
	ctx := context.Background()
	stop := make(chan struct{})
	idsc := e.stream(t, 25*time.Millisecond, stop)

	// A replica takes over from its master, cleanly.
	e.waitCreated(t, 40) // timers before and during the failover
	master, replica := masterWithReplica(t, c)
	if err := replica.ClusterFailover(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "the replica promoted", func() bool { return role(replica) == "master" })
	t.Logf("manual failover: %s took over from %s", replica.Options().Addr, master.Options().Addr)
	testkit.WaitClusterOK(t, c)

	// A master dies; the cluster promotes its replica after the node timeout.
	master, _ = masterWithReplica(t, c)
	restart := testkit.KillNode(t, master.Options().Addr)
	testkit.WaitFor(t, 60*time.Second, "the dead master replaced", func() bool {
		ms, err := mastersOf(c)
		return err == nil && len(ms) == 3 && !ms[master.Options().Addr]
	})
	t.Logf("killed master %s: replaced", master.Options().Addr)
	restart() // it comes back as a replica
	testkit.WaitClusterOK(t, c)
	testkit.WaitFor(t, 10*time.Second, "subscribed on the new masters", func() bool { return e.l.Health().Subscribed })
	settled := time.Now()
	e.waitCreated(t, 80) // timers created once the topology settled
	close(stop)
	ids := <-idsc
	e.waitExpired(t, 30*time.Second, ids)
	e.waitReported(t, len(ids))

	all := e.all()
	if len(all) != len(ids) {
		t.Fatalf("%d transitions for %d orders: each order must move once", len(all), len(ids))
	}
	if m := latest(all); m > sweep+2*time.Second {
		t.Errorf("an order was handled %v after its deadline, want within the sweep interval (%v) and a little", m, sweep)
	}
	after := e.dueAfter(settled.Add(time.Second))
	onTime(t, "once settled", after, time.Second)
	t.Logf("%d orders through two failovers: latest %v; %d after they settled, latest %v", len(ids), latest(all), len(after), latest(after))
}

// masterWithReplica returns a master of c and one of its replicas in sync.
func masterWithReplica(t *testing.T, c *redis.ClusterClient) (master, replica *redis.Client) {
	t.Helper()
	ctx := context.Background()
	shards, err := c.ClusterShards(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shards {
		var m, r string
		for _, n := range s.Nodes {
			addr := n.IP + ":" + itoa(n.Port)
			switch {
			case n.Role == "master" && n.Health == "online":
				m = addr
			case n.Role == "replica" && n.Health == "online":
				r = addr
			}
		}
		if m != "" && r != "" {
			mc := redis.NewClient(&redis.Options{Addr: m})
			rc := redis.NewClient(&redis.Options{Addr: r})
			t.Cleanup(func() { mc.Close(); rc.Close() })
			return mc, rc
		}
	}
	t.Fatal("no master with an online replica")
	return nil, nil
}

func mastersOf(c *redis.ClusterClient) (map[string]bool, error) {
	out := map[string]bool{}
	var mu sync.Mutex
	err := c.ForEachMaster(context.Background(), func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		out[n.Options().Addr] = true
		mu.Unlock()
		return nil
	})
	return out, err
}

func role(c *redis.Client) string {
	r, err := c.Do(context.Background(), "ROLE").Slice()
	if err != nil || len(r) == 0 {
		return ""
	}
	s, _ := r[0].(string)
	return s
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// Behind Sentinel, SENTINEL FAILOVER during a stream of timers: every timer
// is handled, and they are on time again within a couple of seconds of the
// switch (the listener moves its subscription to the new master).
func TestSentinelFailover(t *testing.T) {
	const sweep = 2 * time.Second
	rdb, opt := testkit.Sentinel(t, 7)
	e := newScaleEnv(t, rdb, "", time.Second, sweep, opt)
	stop := make(chan struct{})
	idsc := e.stream(t, 25*time.Millisecond, stop)
	e.waitCreated(t, 40) // timers before and during the switch

	old := testkit.SentinelMasterAddr(t)
	s := redis.NewSentinelClient(&redis.Options{Addr: testkit.SentinelAddrs()[0]})
	defer s.Close()
	if err := s.Failover(context.Background(), testkit.SentinelMaster).Err(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "a new master", func() bool { return testkit.SentinelMasterAddr(t) != old })
	switched := time.Now()
	testkit.WaitFor(t, 10*time.Second, "subscribed on the new master", func() bool { return e.l.Health().Subscribed })
	t.Logf("switch from %s to %s; subscribed on the new master %v later", old, testkit.SentinelMasterAddr(t), time.Since(switched).Round(time.Millisecond))
	e.waitCreated(t, 120) // timers due a while after the switch
	close(stop)
	ids := <-idsc
	e.waitExpired(t, 30*time.Second, ids)
	e.waitReported(t, len(ids))
	testkit.WaitSentinelSettled(t)

	all := e.all()
	if len(all) != len(ids) {
		t.Fatalf("%d transitions for %d orders", len(all), len(ids))
	}
	if m := latest(all); m > sweep+2*time.Second {
		t.Errorf("an order was handled %v after its deadline, want within the sweep interval (%v) and a little", m, sweep)
	}
	after := e.dueAfter(switched.Add(2 * time.Second)) // a couple of seconds after the switch: on time again
	if len(after) < 40 {
		t.Fatalf("only %d timers due after the switch settled", len(after))
	}
	onTime(t, "after the switch", after, time.Second)
	t.Logf("%d orders through a Sentinel failover: latest %v", len(ids), latest(all))
}

// A replica without expired-key events (the setting is per node and not
// replicated) is reported before it is promoted and goes deaf.
func TestReplicaWithoutEventsReported(t *testing.T) {
	rdb, opt := testkit.Sentinel(t, 7)
	ctx := context.Background()
	s := redis.NewSentinelClient(&redis.Options{Addr: testkit.SentinelAddrs()[0]})
	defer s.Close()
	replicas, err := s.Replicas(ctx, testkit.SentinelMaster).Result()
	if err != nil || len(replicas) == 0 {
		t.Fatalf("replicas: %v %v", replicas, err)
	}
	addr := replicas[0]["ip"] + ":" + replicas[0]["port"]
	r := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { r.Close() })
	if err := r.ConfigSet(ctx, "notify-keyspace-events", "").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before r closes (cleanups run last first)
		if err := r.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
			t.Errorf("restore expired-key events on %s: %v", addr, err)
		}
	})
	l := expiry.NewListener(rdb, expiry.NewServeMux(), expiry.ListenerConfig{Sentinel: opt, NotifyInterval: 100 * time.Millisecond})
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); l.Run(lctx) }()
	defer func() { cancel(); <-done }()
	testkit.WaitFor(t, 10*time.Second, "the replica reported", func() bool {
		err := l.Health().Notify
		return errors.Is(err, expiry.ErrNotifyDisabled) && strings.Contains(err.Error(), addr)
	})
}

// Three daemons share a Cluster's shards while a master holding some of
// their leases dies: its leases are lost with it (or come back on the
// promoted replica) and the shards change hands, which may cost a little
// repeated work, never a double effect. Every order moves once, stock is
// conserved, and none is later than the sweep interval and the lease TTL.
func TestClusterFailoverWithReplicas(t *testing.T) {
	const prefix = "t-cluster-replicas:"
	const sweep = 2 * time.Second
	c := testkit.Cluster(t, prefix)
	e := newScaleEnv(t, c, prefix, time.Second, sweep, nil)
	sched := expiry.NewScheduler(c, expiry.SchedulerConfig{KeyPrefix: prefix, Index: prefix + "orderd:due"})
	ls := []*daemon.Daemon{e.l}
	for i := range 2 {
		l := daemon.New(e.svc, c, daemon.Config{SweepInterval: sweep, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Listener: expiry.ListenerConfig{Scheduler: sched, ID: "replica-" + strconv.Itoa(i+1)}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); l.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		ls = append(ls, l)
	}
	spread := func(what string) {
		t.Helper()
		testkit.WaitFor(t, 30*time.Second, what, func() bool {
			held := 0
			for _, l := range ls {
				s := l.Stats()
				if s.Listeners != 3 || s.Shards < 5 || !l.Health().Subscribed {
					return false
				}
				held += s.Shards
			}
			return held == 16
		})
	}
	spread("the shards spread over three daemons")

	stop := make(chan struct{})
	idsc := e.stream(t, 25*time.Millisecond, stop)
	e.waitCreated(t, 40)
	master, _ := masterWithReplica(t, c)
	restart := testkit.KillNode(t, master.Options().Addr)
	testkit.WaitFor(t, 60*time.Second, "the dead master replaced", func() bool {
		ms, err := mastersOf(c)
		return err == nil && len(ms) == 3 && !ms[master.Options().Addr]
	})
	restart()
	testkit.WaitClusterOK(t, c)
	spread("the shards spread again")
	e.waitCreated(t, 40)
	close(stop)
	ids := <-idsc
	e.waitExpired(t, 30*time.Second, ids)
	e.waitReported(t, len(ids))

	all := e.all()
	if len(all) != len(ids) {
		t.Fatalf("%d transitions for %d orders: each order must move once", len(all), len(ids))
	}
	ordertest.CheckStock(t, e.store, 1, 100000)
	if m := latest(all); m > sweep+5*time.Second+2*time.Second {
		t.Errorf("an order was handled %v after its deadline, want within the sweep interval and the lease TTL", m)
	}
	var takeovers uint64
	for _, l := range ls {
		takeovers += l.Stats().Takeovers
	}
	t.Logf("%d orders through a killed master with three daemons: latest %v; %d lease take-overs in all", len(ids), latest(all), takeovers)
}
