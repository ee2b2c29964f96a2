package transitions_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/order/transitions"
	"github.com/orderd/orderd/stock"
)

const redisDB = 7 // this package's Redis database

// clock is a time the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is a Service over a store with its outbox on, and the Redis its
// relays append to.
type env struct {
	st   *sqlstore.Store
	rdb  redis.UniversalClient
	svc  *order.Service
	keys order.Keys
	clk  *clock
}

func newEnv(t *testing.T, st *sqlstore.Store) *env {
	t.Helper()
	return newEnvOn(t, st, testkit.Redis(t, redisDB), "tr:")
}

// newEnvOn is newEnv on rdb (emptied of prefix's keys), under prefix.
func newEnvOn(t *testing.T, st *sqlstore.Store, rdb redis.UniversalClient, prefix string) *env {
	t.Helper()
	st.SetOutbox(true)
	e := &env{st: st, rdb: rdb, keys: order.Keys{Prefix: prefix},
		clk: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}}
	e.svc = order.NewService(st, stock.NewCounter(e.rdb, e.keys.Stock()), nil, order.Config{
		Keys: e.keys, PayTimeout: time.Minute, ConfirmTimeout: time.Hour, Now: e.clk.Now})
	if _, err := e.svc.PutSKU(context.Background(), order.SKU{SKU: 7, Name: "Lamp", PriceCents: 100, Available: 1000}); err != nil {
		t.Fatal(err)
	}
	return e
}

// relay starts a relay over e's outbox on rdb, stopped at the test's end
// (or by the function returned).
func (e *env) relay(t *testing.T, rdb redis.UniversalClient, id string, log *zap.Logger) (stop func()) {
	t.Helper()
	r := transitions.NewRelay(e.st, rdb, transitions.Config{
		Stream: e.keys.Transitions(), LeaseKey: e.keys.TransitionsRelay(), ID: id, LeaseTTL: time.Second, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// entry is a stream entry, decoded.
type entry struct {
	id string
	order.Change
}

// stream reads the whole stream.
func (e *env) stream(t *testing.T) []entry {
	t.Helper()
	msgs, err := e.rdb.XRange(context.Background(), e.keys.Transitions(), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]entry, len(msgs))
	for i, m := range msgs {
		c, err := transitions.Decode(m.Values)
		if err != nil {
			t.Fatalf("entry %s: %v", m.ID, err)
		}
		out[i] = entry{m.ID, c}
	}
	return out
}

// waitStream waits until the stream holds n entries and the outbox is empty.
func (e *env) waitStream(t *testing.T, n int) []entry {
	t.Helper()
	var got []entry
	testkit.WaitFor(t, 20*time.Second, fmt.Sprintf("%d transitions in the stream and none in the outbox", n), func() bool {
		got = e.stream(t)
		backlog, _, err := e.st.ChangeBacklog(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return len(got) >= n && backlog == 0
	})
	return got
}

// step is one transition an order is expected to make.
type step struct {
	from, to order.Status
	source   string
}

// steps counts the transitions of want.
func steps(want map[int64][]step) int {
	n := 0
	for _, w := range want {
		n += len(w)
	}
	return n
}

// checkOnceInOrder fails unless the stream holds, for each order of want,
// its transitions exactly once each and in want's order, and nothing else.
func checkOnceInOrder(t *testing.T, got []entry, want map[int64][]step) {
	t.Helper()
	seen := map[int64][]step{}
	for _, g := range got {
		seen[g.OrderID] = append(seen[g.OrderID], step{g.From, g.To, g.Source})
	}
	for id, w := range want {
		if !slices.Equal(seen[id], w) {
			t.Errorf("order %d: stream has %v, want %v", id, seen[id], w)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("stream has transitions of %d orders, want %d", len(seen), len(want))
	}
}

// Every kind of transition (created, paid, shipped, confirmed by the buyer or
// automatically, cancelled, expired by an event, by the sweep or by a late
// payment) reaches the stream once, in order per order, with the fields of
// the order and the moment the database recorded.
func TestEveryTransitionOnceInOrder(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		e.relay(t, e.rdb, "a", zaptest.NewLogger(t))

		create := func(user, qty int64) order.Order {
			o, err := e.svc.Create(ctx, user, 7, qty)
			if err != nil {
				t.Fatal(err)
			}
			return o
		}
		must := func(_ order.Order, err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		created := step{"", order.Pending, order.SourceRequest}
		want := map[int64][]step{}

		confirmed, auto, swept := create(1, 1), create(2, 2), create(3, 3)
		cancelled, expired, late, lateSwept := create(4, 1), create(5, 1), create(6, 1), create(7, 1)
		for _, o := range []order.Order{confirmed, auto, swept} {
			must(e.svc.Pay(ctx, o.UserID, o.ID))
			must(e.svc.Ship(ctx, o.ID))
			want[o.ID] = []step{created, {order.Pending, order.Paid, order.SourceRequest}, {order.Paid, order.Shipped, order.SourceRequest}}
		}
		must(e.svc.Confirm(ctx, confirmed.UserID, confirmed.ID))
		want[confirmed.ID] = append(want[confirmed.ID], step{order.Shipped, order.Completed, order.SourceRequest})
		must(e.svc.Cancel(ctx, cancelled.UserID, cancelled.ID))
		want[cancelled.ID] = []step{created, {order.Pending, order.Cancelled, order.SourceRequest}}

		e.clk.Add(2 * time.Minute) // every pay deadline passed
		if _, err := e.svc.ExpireOrders(ctx, []int64{expired.ID}, order.SourceEvent); err != nil {
			t.Fatal(err)
		}
		want[expired.ID] = []step{created, {order.Pending, order.Expired, order.SourceEvent}}
		if _, err := e.svc.Pay(ctx, late.UserID, late.ID); err == nil {
			t.Fatal("a payment after the deadline was taken")
		}
		want[late.ID] = []step{created, {order.Pending, order.Expired, order.SourceRequest}}
		e.clk.Add(2 * time.Hour) // every confirm deadline passed
		if _, err := e.svc.CompleteOrders(ctx, []int64{auto.ID}, order.SourceEvent); err != nil {
			t.Fatal(err)
		}
		want[auto.ID] = append(want[auto.ID], step{order.Shipped, order.Completed, order.SourceEvent})
		if n, err := e.svc.Sweep(ctx, 0); err != nil || n != 2 {
			t.Fatalf("sweep moved %d (%v), want 2", n, err)
		}
		want[swept.ID] = append(want[swept.ID], step{order.Shipped, order.Completed, order.SourceSweep})
		want[lateSwept.ID] = []step{created, {order.Pending, order.Expired, order.SourceSweep}}

		got := e.waitStream(t, steps(want))
		checkOnceInOrder(t, got, want)
		for _, g := range got { // the fields are those of the order, the time the database's
			o, err := e.st.Get(ctx, g.OrderID)
			if err != nil {
				t.Fatal(err)
			}
			at := map[order.Status]*time.Time{order.Pending: &o.CreatedAt, order.Paid: o.PaidAt, order.Shipped: o.ShippedAt,
				order.Completed: o.CompletedAt, order.Cancelled: o.CancelledAt, order.Expired: o.CancelledAt}[g.To]
			if g.UserID != o.UserID || g.SKU != o.SKU || g.Qty != o.Qty || at == nil || !g.At.Equal(*at) {
				t.Errorf("entry %s %+v does not match %s (at %v)", g.id, g.Change, ordertest.Describe(o), at)
			}
		}
	})
}

// Several relays over one outbox (as every serve and listen runs one): while
// transitions are committed and the relays start and stop, each transition
// is appended once, in order per order.
func TestRelaysShareOneOutbox(t *testing.T) {
	st := ordertest.Open(t, ordertest.MySQLURL(t))
	e := newEnv(t, st)
	ctx := context.Background()
	stops := []func(){e.relay(t, e.rdb, "a", zap.NewNop()), e.relay(t, e.rdb, "b", zap.NewNop()), e.relay(t, e.rdb, "c", zap.NewNop())}

	want := map[int64][]step{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for user := range int64(8) {
		wg.Go(func() {
			for range 25 {
				o, err := e.svc.Create(ctx, user+1, 7, 1)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := e.svc.Pay(ctx, o.UserID, o.ID); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				want[o.ID] = []step{{"", order.Pending, order.SourceRequest}, {order.Pending, order.Paid, order.SourceRequest}}
				mu.Unlock()
			}
		})
	}
	stops[0]() // a clean stop hands the lease over while orders are made
	wg.Wait()
	checkOnceInOrder(t, e.waitStream(t, steps(want)), want)
}

// A record that took its seq before another but commits after the other
// was relayed (concurrent transactions; on a Galera cluster, nodes that
// hand out interleaved auto-increments) still reaches the stream, once.
func TestRelayLowerSeqCommittedLater(t *testing.T) {
	st := ordertest.Open(t, ordertest.MySQLURL(t))
	e := newEnv(t, st)
	ctx := context.Background()
	e.relay(t, e.rdb, "a", zap.NewNop())

	const lateOrder = 900001
	tx, err := st.DB().BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO transitions_outbox (from_status, to_status, changed_at, source, n, changes)
		VALUES ('', 'pending', ?, 'request', 1, ?)`, time.Now().UnixMilli(), fmt.Sprintf("%d:1:7:1", lateOrder))
	if err != nil {
		t.Fatal(err)
	}
	low, _ := res.LastInsertId()
	o, err := e.svc.Create(ctx, 2, 7, 1) // a higher seq, committed first
	if err != nil {
		t.Fatal(err)
	}
	created := step{"", order.Pending, order.SourceRequest}
	testkit.WaitFor(t, 10*time.Second, "the later seq relayed", func() bool {
		return len(e.stream(t)) == 1
	})
	var high int64
	if err := st.DB().GetContext(ctx, &high, `SELECT COALESCE(MAX(seq), 0) FROM transitions_outbox`); err != nil || high != 0 {
		t.Fatalf("outbox still holds seq %d (%v), want the relayed one deleted", high, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	got := e.waitStream(t, 2)
	checkOnceInOrder(t, got, map[int64][]step{o.ID: {created}, lateOrder: {created}})
	if got[0].OrderID != o.ID {
		t.Errorf("stream has order %d first, want %d (committed first; the other took seq %d before it)", got[0].OrderID, o.ID, low)
	}
}

// With Redis cut off from the relay between the commit and the append, the
// transitions wait in the outbox and reach the stream once Redis is back.
func TestRelayRedisCut(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		proxy := testkit.NewProxy(t, testkit.RedisAddr())
		viaProxy := redis.NewClient(&redis.Options{Addr: proxy.Addr(), DB: redisDB, MaxRetries: -1})
		t.Cleanup(func() { viaProxy.Close() })
		var failures atomic.Int64
		log := zaptest.NewLogger(t, zaptest.WrapOptions(zap.Hooks(func(en zapcore.Entry) error {
			if en.Message == "transitions not relayed yet; they stay in the outbox and are tried again" ||
				en.Message == "transitions relay: cannot reach the lease in Redis" {
				failures.Add(1)
			}
			return nil
		})))
		e.relay(t, viaProxy, "a", log)

		first, err := e.svc.Create(ctx, 1, 7, 1)
		if err != nil {
			t.Fatal(err)
		}
		e.waitStream(t, 1)
		proxy.Cut()
		want := map[int64][]step{first.ID: {{"", order.Pending, order.SourceRequest}}}
		for user := range int64(5) {
			o, err := e.svc.Create(ctx, user+10, 7, 1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.svc.Cancel(ctx, o.UserID, o.ID); err != nil {
				t.Fatal(err)
			}
			want[o.ID] = []step{{"", order.Pending, order.SourceRequest}, {order.Pending, order.Cancelled, order.SourceRequest}}
		}
		testkit.WaitFor(t, 10*time.Second, "the relay failing to reach Redis", func() bool { return failures.Load() >= 2 })
		if n, _, err := e.st.ChangeBacklog(ctx); err != nil || n != 10 {
			t.Fatalf("outbox holds %d (%v) while Redis is cut, want 10", n, err)
		}
		if got := e.stream(t); len(got) != 1 {
			t.Fatalf("stream has %d entries while the relay is cut off, want 1", len(got))
		}
		proxy.Restore()
		checkOnceInOrder(t, e.waitStream(t, steps(want)), want)
	})
}

// On a Redis Cluster (one stream key, on one master) and behind Sentinel,
// every transition reaches the stream once, in order.
func TestRelayOnClusterAndSentinel(t *testing.T) {
	for _, tc := range []struct {
		name string
		rdb  func(t *testing.T) redis.UniversalClient
	}{
		{"cluster", func(t *testing.T) redis.UniversalClient { return testkit.Cluster(t, "trc:") }},
		{"sentinel", func(t *testing.T) redis.UniversalClient { c, _ := testkit.Sentinel(t, redisDB); return c }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvOn(t, ordertest.Open(t, ordertest.SQLiteURL(t)), tc.rdb(t), "trc:")
			ctx := context.Background()
			e.relay(t, e.rdb, "a", zaptest.NewLogger(t))
			e.relay(t, e.rdb, "b", zaptest.NewLogger(t))
			want := map[int64][]step{}
			for user := range int64(20) {
				o, err := e.svc.Create(ctx, user+1, 7, 1)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := e.svc.Cancel(ctx, o.UserID, o.ID); err != nil {
					t.Fatal(err)
				}
				want[o.ID] = []step{{"", order.Pending, order.SourceRequest}, {order.Pending, order.Cancelled, order.SourceRequest}}
			}
			checkOnceInOrder(t, e.waitStream(t, steps(want)), want)
		})
	}
}

// Decode reads back what Values writes, and names what is wrong with a
// malformed entry.
func TestDecode(t *testing.T) {
	c := order.Change{OrderID: 5, UserID: 9, SKU: 7, Qty: 2, From: order.Pending, To: order.Expired,
		At: time.Date(2026, 11, 24, 10, 0, 0, 123e6, time.UTC), Source: order.SourceEvent}
	vals := map[string]any{}
	v := transitions.Values(c)
	for i := 0; i < len(v); i += 2 {
		vals[v[i].(string)] = v[i+1]
	}
	if vals["at"] != "2026-11-24T10:00:00.123Z" {
		t.Errorf("at = %v, want RFC 3339 UTC with milliseconds", vals["at"])
	}
	got, err := transitions.Decode(vals)
	if err != nil || got != c {
		t.Fatalf("Decode(Values(c)) = %+v, %v; want %+v", got, err, c)
	}
	delete(vals, "qty")
	vals["sku"] = "x" + strconv.Itoa(7)
	if _, err := transitions.Decode(vals); err == nil {
		t.Fatal("a malformed entry decoded")
	} else {
		t.Log(err)
	}
}

// pausingOutbox is a real outbox whose next DeleteChanges, once armed,
// waits until released: the relay holding the lease stops between its
// append and its delete, as a process frozen there (SIGSTOP, a GC pause, a
// VM freeze) does, and keeps no lease meanwhile.
type pausingOutbox struct {
	order.Outbox
	armed   atomic.Bool
	paused  chan struct{} // closed when a delete is held
	release chan struct{}
}

func (p *pausingOutbox) DeleteChanges(ctx context.Context, seqs []int64) error {
	if p.armed.CompareAndSwap(true, false) {
		close(p.paused)
		<-p.release
	}
	return p.Outbox.DeleteChanges(ctx, seqs)
}

// A relay paused between its append and its delete, ten times over: the
// relay that takes the lease meanwhile reads the same outbox records and
// appends none of them again (the append records what it appended, in the
// same script), and the paused one, resumed, appends nothing more: every
// transition is in the stream once.
func TestRelayPausedBetweenAppendAndDelete(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		var skipped atomic.Int64
		log := zaptest.NewLogger(t, zaptest.WrapOptions(zap.Hooks(func(en zapcore.Entry) error {
			if strings.HasPrefix(en.Message, "outbox records appended to the stream already") {
				skipped.Add(1)
			}
			return nil
		})))
		want := map[int64][]step{}
		for run := range 10 {
			p := &pausingOutbox{Outbox: st, paused: make(chan struct{}), release: make(chan struct{})}
			p.armed.Store(true)
			a := transitions.NewRelay(p, e.rdb, transitions.Config{Stream: e.keys.Transitions(),
				LeaseKey: e.keys.TransitionsRelay(), ID: fmt.Sprintf("a%d", run), LeaseTTL: 300 * time.Millisecond, Logger: log})
			actx, stopA := context.WithCancel(ctx)
			aDone := make(chan struct{})
			go func() { defer close(aDone); _ = a.Run(actx) }()
			testkit.WaitFor(t, 10*time.Second, "relay a holding the lease", func() bool {
				v, _ := e.rdb.Get(ctx, e.keys.TransitionsRelay()).Result()
				return strings.HasPrefix(v, fmt.Sprintf("a%d#", run))
			})
			for user := range int64(3) {
				o, err := e.svc.Create(ctx, 100+int64(run)*10+user, 7, 1)
				if err != nil {
					t.Fatal(err)
				}
				want[o.ID] = []step{{"", order.Pending, order.SourceRequest}}
			}
			a.Wake()
			<-p.paused // a appended, and waits before its delete
			stopB := e.relay(t, e.rdb, fmt.Sprintf("b%d", run), log)
			e.waitStream(t, steps(want)) // b took over: the outbox is empty
			close(p.release)
			stopA()
			<-aDone
			stopB()
		}
		checkOnceInOrder(t, e.stream(t), want)
		if skipped.Load() == 0 {
			t.Error("no relay said it found records appended already")
		}
	})
}

// A relay without its stream or lease key is an error Run returns.
func TestRelayConfigError(t *testing.T) {
	r := transitions.NewRelay(ordertest.Open(t, ordertest.SQLiteURL(t)), testkit.Redis(t, redisDB), transitions.Config{})
	if err := r.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "Stream") {
		t.Fatalf("Run: %v, want an error naming Stream", err)
	}
}

// While changes keep being committed, a relay woken within Linger of its
// last round that found some waits for the rest of the Linger, and the next
// round takes all that gathered meanwhile: one round, one deletion, however
// many commits woke it. The first change after a quiet spell is relayed at
// once (a Poll and a Linger of an hour would otherwise hold it).
func TestRelayLingers(t *testing.T) {
	st := ordertest.Open(t, ordertest.MySQLURL(t))
	e := newEnv(t, st)
	ctx := context.Background()
	var mu sync.Mutex
	var rounds []int
	r := transitions.NewRelay(e.st, e.rdb, transitions.Config{
		Stream: e.keys.Transitions(), LeaseKey: e.keys.TransitionsRelay(), ID: "lingers",
		LeaseTTL: 3 * time.Hour, Poll: time.Hour, Linger: time.Hour, Batch: 100,
		OnRelay: func(n int) { mu.Lock(); rounds = append(rounds, n); mu.Unlock() }})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(rctx) }()
	defer func() { cancel(); <-done }()

	create := func() {
		if _, err := e.svc.Create(ctx, 2, 7, 1); err != nil {
			t.Fatal(err)
		}
		r.Wake()
	}
	create()
	e.waitStream(t, 1) // the first after a quiet spell: at once
	for range 49 {
		create() // each wakes the relay, within its Linger
	}
	cancel() // a stop relays what the outbox holds
	<-done
	if got := e.stream(t); len(got) != 50 {
		t.Fatalf("stream has %d entries, want 50", len(got))
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(rounds, []int{1, 49}) {
		t.Errorf("rounds relayed %v records, want [1 49]: the 49 commits gathered into one", rounds)
	}
}
