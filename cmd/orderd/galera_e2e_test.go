package main_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/stock"
)

// galeraShop is `orderd serve` writing through node 1 of the test Galera
// cluster and two `orderd listen` through nodes 2 and 3, each given all three
// nodes in --db (its own first), sharing one Redis.
type galeraShop struct {
	nodes   []string
	db      string
	env     []string
	st      *sqlstore.Store // the test's own view, through every node
	rdb     *redis.Client
	keys    order.Keys
	api     string   // serve's base URL
	metrics []string // serve's /metrics, then each listener's
	procs   []*proc
	admin   string
}

const galeraStock = 1_000_000

// galeraURL is the --db of the nodes, node first (0-based) first. With
// ORDERD_TEST_GALERA_ONE_SERVER=1 it is the test MariaDB instead (one
// server, ORDERD_TEST_MYSQL), for figures of the same scenario to compare
// with.
func galeraURL(nodes []string, db string, first int) string {
	if os.Getenv("ORDERD_TEST_GALERA_ONE_SERVER") == "1" {
		return ordertest.MySQLBase() + "/" + db
	}
	rot := append(slices.Clone(nodes[first:]), nodes[:first]...)
	return "mysql://orderd:orderd@" + strings.Join(rot, ",") + "/" + db
}

func newGaleraShop(t *testing.T, prefix string) *galeraShop {
	t.Helper()
	s := &galeraShop{nodes: testkit.GaleraNodes(t), db: "t_" + regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(t.Name(), "_"),
		rdb: testkit.Redis(t, redisDB), keys: order.Keys{Prefix: prefix}}
	adminDB := func(n int) *sql.DB {
		if os.Getenv("ORDERD_TEST_GALERA_ONE_SERVER") == "1" {
			return ordertest.SQLDB(t, ordertest.MySQLBase()+"/mysql", "")
		}
		return testkit.GaleraNode(t, n, "")
	}
	for _, q := range []string{"DROP DATABASE IF EXISTS " + s.db, "CREATE DATABASE " + s.db} {
		if _, err := adminDB(1).Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { adminDB(2).Exec("DROP DATABASE IF EXISTS " + s.db) })
	s.env = []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB),
		"ORDERD_KEY_PREFIX=" + prefix, "ORDERD_JWT_SECRET=" + e2eSecret, "ORDERD_PAY_TIMEOUT=3s",
		"ORDERD_SWEEP_INTERVAL=5s", "ORDERD_LOG_FORMAT=json"}
	// ORDERD_TEST_GALERA_WRITERS=one gives every process node 1 first (one
	// writer node, the others for failover), for figures to compare with.
	dbEnv := func(first int) []string {
		if os.Getenv("ORDERD_TEST_GALERA_WRITERS") == "one" {
			first = 0
		}
		return append(slices.Clone(s.env), "ORDERD_DB="+galeraURL(s.nodes, s.db, first))
	}
	if code, out := runCmd(t, dbEnv(0), "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	s.st = ordertest.Open(t, galeraURL(s.nodes, s.db, 0))
	apiAddr := freeAddr(t)
	s.api = "http://" + apiAddr
	s.procs = append(s.procs, start(t, dbEnv(0), "serve", "--addr", apiAddr))
	s.metrics = append(s.metrics, s.api+"/metrics")
	for first := 1; first <= 2; first++ {
		addr := freeAddr(t)
		s.procs = append(s.procs, start(t, dbEnv(first), "listen", "--metrics-addr", addr))
		s.metrics = append(s.metrics, "http://"+addr+"/metrics")
		waitHTTP(t, "http://"+addr+"/healthz")
	}
	waitHTTP(t, s.api+"/healthz")
	_, admin := runCmd(t, s.env, "token", "--user", "1", "--admin")
	s.admin = strings.TrimSpace(admin)
	if code, body, err := s.post("PUT", "/v1/skus/1", s.admin, fmt.Sprintf(`{"name":"Mug","price_cents":100,"stock":%d}`, galeraStock)); code != 200 {
		t.Fatalf("put sku: %d %v %v", code, body, err)
	}
	return s
}

var galeraHTTP = &http.Client{Timeout: 30 * time.Second}

// post sends a request to serve; safe from any goroutine.
func (s *galeraShop) post(method, path, tok, body string) (int, map[string]any, error) {
	req, err := http.NewRequest(method, s.api+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := galeraHTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("body not JSON: %q", raw)
	}
	return resp.StatusCode, out, nil
}

// galeraBurst is what a burst of orders, with payments racing the
// deadlines of one in five, came to.
type galeraBurst struct {
	mu        sync.Mutex
	createdAt []time.Time    // when each creation was answered 201
	failed    int            // creations answered otherwise (5xx while a node is lost)
	paid      []int64        // payments answered 200
	refused   []int64        // answered 409: the deadline had come
	payFailed map[string]int // answered otherwise (by status code or error): outcome unknown to the buyer
	payments  sync.WaitGroup
	n         atomic.Int64 // creations answered
}

// burst creates n orders through serve as fast as workers clients can, and
// pays one in five at its deadline give or take 100 ms. It returns once
// every creation is answered; b.payments waits for the payments.
func (s *galeraShop) burst(t *testing.T, b *galeraBurst, n, workers int) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		user := w + 2
		tok := signFor(t, user)
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				code, o, err := s.post("POST", "/v1/orders", tok, `{"sku":1,"qty":1}`)
				b.n.Add(1)
				b.mu.Lock()
				if code != 201 || err != nil {
					b.failed++
					b.mu.Unlock()
					continue
				}
				b.createdAt = append(b.createdAt, time.Now())
				b.mu.Unlock()
				if i%5 != 0 {
					continue
				}
				deadline, err := time.Parse(time.RFC3339Nano, o["pay_deadline"].(string))
				if err != nil {
					t.Errorf("pay_deadline %v: %v", o["pay_deadline"], err)
					continue
				}
				id := int64(o["id"].(float64))
				offset := time.Duration(i%41-20) * 5 * time.Millisecond // -100 … +100 ms
				b.payments.Add(1)
				time.AfterFunc(time.Until(deadline.Add(offset)), func() {
					defer b.payments.Done()
					code, _, err := s.post("POST", "/v1/orders/"+strconv.FormatInt(id, 10)+"/pay", tok, "")
					b.mu.Lock()
					defer b.mu.Unlock()
					switch {
					case err == nil && code == 200:
						b.paid = append(b.paid, id)
					case err == nil && code == 409:
						b.refused = append(b.refused, id)
					default:
						why := strconv.Itoa(code)
						if err != nil {
							why = "no answer"
						}
						b.payFailed[why]++
					}
				})
			}
		})
	}
	wg.Wait()
}

// galeraOrder is an order's row as the checks read it.
type galeraOrder struct {
	ID          int64        `db:"id"`
	Status      order.Status `db:"status"`
	PayDeadline int64        `db:"pay_deadline"`
	PaidAt      *int64       `db:"paid_at"`
	CancelledAt *int64       `db:"cancelled_at"`
}

// check waits until no order is pending and the outbox is empty, then
// checks that every order was paid before its deadline or expired, once;
// that every payment answered 200 stands and every 409 expired its order;
// that stock is conserved in the database and in Redis; and that the
// transitions stream holds each order's creation and its one end once. It
// returns the orders.
func (s *galeraShop) check(t *testing.T, b *galeraBurst) []galeraOrder {
	t.Helper()
	b.payments.Wait()
	ctx := context.Background()
	testkit.WaitFor(t, 30*time.Second, "no order pending and the outbox relayed", func() bool {
		var pending int
		if err := s.st.DB().Get(&pending, `SELECT COUNT(*) FROM orders WHERE status = 'pending'`); err != nil {
			t.Fatal(err)
		}
		backlog, _, err := s.st.ChangeBacklog(ctx)
		return err == nil && pending == 0 && backlog == 0
	})
	var orders []galeraOrder
	if err := s.st.DB().Select(&orders, `SELECT id, status, pay_deadline, paid_at, cancelled_at FROM orders`); err != nil {
		t.Fatal(err)
	}
	if len(orders) < len(b.createdAt) || len(orders) > len(b.createdAt)+b.failed {
		t.Fatalf("%d orders in the database; %d creations answered 201 and %d otherwise", len(orders), len(b.createdAt), b.failed)
	}
	status := map[int64]order.Status{}
	for _, o := range orders {
		status[o.ID] = o.Status
		switch {
		case o.Status == order.Paid && o.PaidAt != nil && *o.PaidAt < o.PayDeadline:
		case o.Status == order.Expired && o.CancelledAt != nil && *o.CancelledAt >= o.PayDeadline:
		default:
			t.Fatalf("order %d: %s, deadline %d, paid at %v, cancelled at %v", o.ID, o.Status, o.PayDeadline, o.PaidAt, o.CancelledAt)
		}
	}
	for _, id := range b.paid {
		if status[id] != order.Paid {
			t.Fatalf("order %d: payment answered 200, order %s", id, status[id])
		}
	}
	for _, id := range b.refused {
		if status[id] != order.Expired {
			t.Fatalf("order %d: payment refused (409), order %s", id, status[id])
		}
	}
	ordertest.CheckStock(t, s.st, 1, galeraStock)
	k, err := s.st.GetSKU(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the Redis stock counter equal to the database's", func() bool {
		v, ok, err := stock.NewCounter(s.rdb, s.keys.Stock()).Available(ctx, 1)
		return err == nil && ok && v == k.Available
	})
	// Every transition reaches the stream once, by order and status.
	seen := map[int64]map[order.Status]int{}
	eachTransition(t, s.rdb, s.keys.Transitions(), func(c order.Change) {
		if seen[c.OrderID] == nil {
			seen[c.OrderID] = map[order.Status]int{}
		}
		seen[c.OrderID][c.To]++
	})
	for _, o := range orders {
		want := map[order.Status]int{order.Pending: 1, o.Status: 1}
		if !maps.Equal(seen[o.ID], want) {
			t.Fatalf("order %d (%s): the stream holds %v, want %v", o.ID, o.Status, seen[o.ID], want)
		}
	}
	if len(seen) != len(orders) {
		t.Fatalf("the stream holds transitions of %d orders, the database %d", len(seen), len(orders))
	}
	return orders
}

var retriesLine = regexp.MustCompile(`(?m)^orderd_db_retries_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$`)

// retries sums orderd_db_retries_total of serve and the listeners, by reason.
func (s *galeraShop) retries(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, u := range s.metrics {
		for _, m := range retriesLine.FindAllStringSubmatch(metricsText(t, u), -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			out[m[1]] += int(v)
		}
	}
	return out
}

// lateness is the p50, p99 and max of cancelled_at − pay_deadline of the
// expired orders among orders whose deadline is in [from, to).
func lateness(orders []galeraOrder, from, to time.Time) (n int, p50, p99, maxLate time.Duration) {
	var ms []int64
	for _, o := range orders {
		if o.Status == order.Expired && o.PayDeadline >= from.UnixMilli() && o.PayDeadline < to.UnixMilli() {
			ms = append(ms, *o.CancelledAt-o.PayDeadline)
		}
	}
	if len(ms) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(ms)
	at := func(q float64) time.Duration { return time.Duration(ms[int(q*float64(len(ms)-1))]) * time.Millisecond }
	return len(ms), at(.5), at(.99), at(1)
}

// rate is the creations answered per second in [from, to).
func (b *galeraBurst) rate(from, to time.Time) float64 {
	n := 0
	for _, at := range b.createdAt {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return float64(n) / to.Sub(from).Seconds()
}

// On a three-node Galera cluster, serve writing through node 1 and two
// listeners through nodes 2 and 3: a burst of 20,000 orders, one in five
// paid at its deadline give or take 100 ms. Every order is paid before its
// deadline or expired, once; stock is conserved; every transition reaches
// the stream once.
func TestGaleraBurst(t *testing.T) {
	const orders = 20000
	s := newGaleraShop(t, "galera:")
	b := &galeraBurst{payFailed: map[string]int{}}
	begin := time.Now()
	s.burst(t, b, orders, 16)
	end := time.Now()
	all := s.check(t, b)
	n, p50, p99, maxLate := lateness(all, begin, end.Add(time.Hour))
	t.Logf("%d orders in %v (%.0f/s); %d paid, %d payments refused at the deadline, failed %v; %d expired: lateness p50 %v p99 %v max %v; retries %v",
		len(b.createdAt), end.Sub(begin).Round(time.Millisecond), b.rate(begin, end), len(b.paid), len(b.refused), b.payFailed,
		n, p50, p99, maxLate, s.retries(t))
	for i, p := range s.procs {
		if code := p.stop(t); code != 0 {
			t.Fatalf("process %d exit %d", i, code)
		}
	}
}

// The same with one node killed (kill -9) in the middle of the burst and
// started again: node 1, the one serve writes through, then node 2, the
// first of a listener. The process that used it carries on through the
// others, the node rejoins, and nothing is lost or doubled.
func TestGaleraNodeKilledMidBurst(t *testing.T) {
	for _, victim := range []int{1, 2} {
		t.Run(fmt.Sprintf("node%d", victim), func(t *testing.T) { galeraKillMidBurst(t, victim) })
	}
}

func galeraKillMidBurst(t *testing.T, victim int) {
	const orders = 20000
	s := newGaleraShop(t, fmt.Sprintf("galera-kill%d:", victim))
	down := false
	t.Cleanup(func() {
		if down {
			testkit.GaleraStart(t, victim) // for the tests after this one
		}
	})
	b := &galeraBurst{payFailed: map[string]int{}}
	begin := time.Now()
	done := make(chan struct{})
	go func() { defer close(done); s.burst(t, b, orders, 16) }()
	testkit.WaitFor(t, 60*time.Second, "a quarter of the burst answered", func() bool { return b.n.Load() >= orders/4 })
	testkit.GaleraKill(t, victim)
	down = true
	killed := time.Now()
	testkit.WaitFor(t, 30*time.Second, "the cluster down to two nodes", func() bool {
		n, err := testkit.GaleraClusterSize(t, victim%3+1)
		return err == nil && n == 2
	})
	shrunk := time.Since(killed)
	// The processes that used the node carry on through the others: orders
	// are created, and fall due and expire, within seconds.
	testkit.WaitFor(t, 10*time.Second, "an order created after the cluster went on without the node", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.createdAt) > 0 && b.createdAt[len(b.createdAt)-1].After(killed.Add(shrunk))
	})
	rejoin := testkit.GaleraStart(t, victim)
	down = false
	back := time.Now()
	<-done
	end := time.Now()
	all := s.check(t, b)
	b.mu.Lock()
	failed := b.failed
	b.mu.Unlock()
	n, p50, p99, maxLate := lateness(all, killed, back)
	t.Logf("node %d killed at %v into the burst; the cluster went on without it after %v; it was synced again %v after it started",
		victim, killed.Sub(begin).Round(time.Millisecond), shrunk.Round(time.Millisecond), rejoin.Round(time.Millisecond))
	t.Logf("orders/s before %.0f, while the node was lost %.0f, after %.0f; %d creations failed; %d paid, %d refused, payments failed %v",
		b.rate(begin, killed), b.rate(killed, back), b.rate(back, end), failed, len(b.paid), len(b.refused), b.payFailed)
	t.Logf("orders due while the node was lost: %d expired, lateness p50 %v p99 %v max %v; retries %v", n, p50, p99, maxLate, s.retries(t))
	for i, p := range s.procs {
		if code := p.stop(t); code != 0 {
			t.Fatalf("process %d exit %d", i, code)
		}
	}
}
