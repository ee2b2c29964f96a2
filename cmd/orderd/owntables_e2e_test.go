package main_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order/ordertest"
)

// laravelDir is the worked example of a Laravel shop's own tables.
const laravelDir = "../../contrib/examples/laravel"

// laravelShop is a database with the Laravel example's tables, seeded with
// goods, and how to reach it.
type laravelShop struct {
	db    *sql.DB
	url   string
	php   string
	env   []string // the example's ${…} and the PHP script's settings
	stock map[int64]int64
}

func newLaravelShop(t *testing.T, redisURL string, redisPort string, redisDB int) *laravelShop {
	t.Helper()
	php, err := exec.LookPath("php")
	if err != nil {
		t.Fatal("no php: install Debian's php-cli and php-redis (contrib/dev/test.sh does)")
	}
	if out, err := exec.Command(php, "-m").Output(); err != nil || !bytes.Contains(out, []byte("\nredis\n")) {
		t.Fatalf("php has no redis extension (%v): install Debian's php-redis (contrib/dev/test.sh does)", err)
	}
	url := ordertest.MySQLURL(t)
	schema, err := os.ReadFile(filepath.Join(laravelDir, "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	db := ordertest.SQLDB(t, url, string(schema))
	s := &laravelShop{db: db, url: url, php: php, stock: map[int64]int64{1: 10000, 2: 10000, 3: 10000},
		env: []string{"SHOP_DB_URL=" + url, "SHOP_REDIS_URL=" + redisURL,
			"REDIS_HOST=127.0.0.1", "REDIS_PORT=" + redisPort, "REDIS_DB=" + strconv.Itoa(redisDB)}}
	for id, n := range s.stock {
		s.exec(t, `INSERT INTO goods (id, name, stock) VALUES (?, ?, ?)`, id, fmt.Sprintf("goods %d", id), n)
	}
	return s
}

func (s *laravelShop) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	if _, err := s.db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (s *laravelShop) count(t *testing.T, q string, args ...any) int64 {
	t.Helper()
	var n sql.NullInt64
	if err := s.db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n.Int64
}

// place places orders from..to-1 as the shop does, in one transaction:
// stock taken for two lines each, unpaid, due in payIn by the database's
// clock. It returns the deadline by this host's clock (the same machine's).
func (s *laravelShop) place(t *testing.T, from, to int64, payIn time.Duration) time.Time {
	t.Helper()
	var orders, lines []string
	var oargs, largs []any
	taken := map[int64]int64{}
	for id := from; id < to; id++ {
		orders = append(orders, "(?, ?, 0, NOW(3) + INTERVAL ? MICROSECOND)")
		oargs = append(oargs, id, 1000+id, payIn.Microseconds())
		for _, g := range []int64{1 + id%3, 1 + (id+1)%3} {
			lines = append(lines, "(?, ?, ?)")
			largs = append(largs, id, g, 1+id%2)
			taken[g] += 1 + id%2
		}
	}
	deadline := time.Now().Add(payIn)
	s.exec(t, `INSERT INTO orders (id, user_id, status, pay_deadline) VALUES `+strings.Join(orders, ", "), oargs...)
	s.exec(t, `INSERT INTO order_goods (order_id, goods_id, num) VALUES `+strings.Join(lines, ", "), largs...)
	for g, n := range taken {
		s.exec(t, `UPDATE goods SET stock = stock - ? WHERE id = ?`, n, g)
	}
	return deadline
}

// timers runs the example's PHP script: kind "pay" or "confirm" timers of
// ids for ttl, with the due index or not.
func (s *laravelShop) timers(t *testing.T, kind string, ttl time.Duration, index bool, from, to int64) {
	t.Helper()
	args := []string{filepath.Join(laravelDir, "timers.php"), kind, strconv.FormatFloat(ttl.Seconds(), 'f', 3, 64)}
	if index {
		args = append(args, "--index")
	}
	for id := from; id < to; id++ {
		args = append(args, strconv.FormatInt(id, 10))
	}
	cmd := exec.Command(s.php, args...)
	cmd.Env = append(os.Environ(), s.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("php timers.php: %v\n%s", err, out)
	}
}

// checkStock checks that every goods' stock is what it started with, less
// the lines of the orders that are not closed.
func (s *laravelShop) checkStock(t *testing.T) {
	t.Helper()
	for id, start := range s.stock {
		now := s.count(t, `SELECT stock FROM goods WHERE id = ?`, id)
		live := s.count(t, `SELECT COALESCE(SUM(l.num), 0) FROM order_goods l JOIN orders o ON o.id = l.order_id WHERE l.goods_id = ? AND o.status <> 4`, id)
		if now+live != start {
			t.Fatalf("goods %d: stock %d + %d in live orders = %d, want %d: stock given back twice or not at all", id, now, live, now+live, start)
		}
	}
}

// The Laravel example end to end on MariaDB and Redis: orderd listen runs
// the example's orderd.yaml on the shop's own tables (no orderd schema), and
// every overdue order moves once: unpaid ones whose keys were written with
// and without the due index, and ones whose keys were never written (the
// sweep); an order paid just before its deadline stays paid; keys that
// expire before the row's deadline change nothing until the deadline;
// shipped orders are confirmed. Stock is conserved. On a single Redis with
// one listener, the keys written by the example's PHP (phpredis, as
// Laravel's cache store); on a Cluster with three listeners sharing the
// work, written from Go.
func TestOwnTablesLaravel(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		testkit.Redis(t, redisDB)
		host, port, _ := strings.Cut(testkit.RedisAddr(), ":")
		shop := newLaravelShop(t, "redis://"+host+":"+port+"/"+strconv.Itoa(redisDB), port, redisDB)
		laravelScenario(t, shop, 1, shop.timers)
	})
	t.Run("cluster", func(t *testing.T) {
		const prefix = "laravel_database_laravel_cache_:"
		rdb := testkit.Cluster(t, prefix)
		shop := newLaravelShop(t, testkit.ClusterURL(), "", 0)
		sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: prefix, Index: prefix + "orderd:due"})
		laravelScenario(t, shop, 3, func(t *testing.T, kind string, ttl time.Duration, index bool, from, to int64) {
			ctx := context.Background()
			var timers []expiry.Timer
			for id := from; id < to; id++ {
				key := prefix + "order_" + kind + ":" + strconv.FormatInt(id, 10)
				if index {
					timers = append(timers, expiry.Timer{Key: key, Deadline: time.Now().Add(ttl)})
				} else if err := rdb.Set(ctx, key, id, ttl).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := sched.ScheduleMany(ctx, timers...); err != nil {
				t.Fatal(err)
			}
		})
	})
}

var movedLine = regexp.MustCompile(`(?m)^(orderd_timers_moved_total\{[^}]*\}) ([0-9.e+-]+)$`)

// laravelScenario runs the Laravel example with n listeners; timers writes
// the shop's keys.
func laravelScenario(t *testing.T, shop *laravelShop, n int, timers func(t *testing.T, kind string, ttl time.Duration, index bool, from, to int64)) {
	const sweep = 2 * time.Second
	env := append([]string{"ORDERD_SWEEP_INTERVAL=" + sweep.String(), "ORDERD_LOG_FORMAT=json"}, shop.env...)
	var listeners []*proc
	var metrics []string
	for range n {
		addr := freeAddr(t)
		listeners = append(listeners, start(t, env, "listen", "--config", filepath.Join(laravelDir, "orderd.yaml"), "--metrics-addr", addr))
		waitHTTP(t, "http://"+addr+"/healthz")
		metrics = append(metrics, "http://"+addr+"/metrics")
	}
	if got := shop.count(t, `SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()`); got != 3 {
		t.Fatalf("%d tables in the shop's database, want its own 3: orderd creates nothing there", got)
	}

	deadline := shop.place(t, 1, 401, 2*time.Second)
	timers(t, "pay", time.Until(deadline), true, 1, 201)    // with the due index: handed over at the deadline
	timers(t, "pay", time.Until(deadline), false, 201, 301) // a plain SET … EX: the key's expiry event
	// 301..350: no key at all: the sweep closes them.
	timers(t, "pay", time.Until(deadline), true, 351, 376) // paid just before the deadline: never closed
	timers(t, "pay", time.Until(deadline)/4, false, 376, 401)
	// 376..400: the key expires long before the row's deadline: nothing
	// changes until the deadline, then they close (the timer set again).
	shop.exec(t, `UPDATE orders SET status = 1 WHERE id BETWEEN 351 AND 375 AND pay_deadline > NOW(3) + INTERVAL 300000 MICROSECOND`)
	if got := shop.count(t, `SELECT COUNT(*) FROM orders WHERE id BETWEEN 351 AND 375 AND status = 1`); got != 25 {
		t.Fatalf("%d of 25 orders paid before their deadline: the machine is too slow for this test", got)
	}
	// Shipped orders whose confirm deadline passes.
	shop.exec(t, `UPDATE orders SET status = 2, confirm_deadline = NOW(3) + INTERVAL 1 SECOND WHERE id BETWEEN 351 AND 360`)
	timers(t, "confirm", time.Second, true, 351, 361)

	testkit.WaitFor(t, 30*time.Second, "every unpaid order closed and every shipped one received", func() bool {
		return shop.count(t, `SELECT COUNT(*) FROM orders WHERE status IN (0, 2)`) == 0
	})
	if got := shop.count(t, `SELECT COUNT(*) FROM orders WHERE status = 4 AND closed_at < pay_deadline`); got != 0 {
		t.Fatalf("%d orders closed before their deadline", got)
	}
	if got := shop.count(t, `SELECT COUNT(*) FROM orders WHERE status = 4`); got != 375 {
		t.Fatalf("%d orders closed, want 375", got)
	}
	if got := shop.count(t, `SELECT COUNT(*) FROM orders WHERE id BETWEEN 351 AND 360 AND status = 3 AND received_at >= confirm_deadline`); got != 10 {
		t.Fatalf("%d of 10 shipped orders received after their confirm deadline", got)
	}
	if got := shop.count(t, `SELECT COUNT(*) FROM orders WHERE id BETWEEN 361 AND 375 AND status = 1`); got != 15 {
		t.Fatalf("%d of 15 paid orders still paid", got)
	}
	shop.checkStock(t)
	late := func(q string) time.Duration { return time.Duration(shop.count(t, q)) * time.Microsecond }
	keys := late(`SELECT MAX(TIMESTAMPDIFF(MICROSECOND, pay_deadline, closed_at)) FROM orders WHERE id <= 300 AND status = 4`)
	swept := late(`SELECT MAX(TIMESTAMPDIFF(MICROSECOND, pay_deadline, closed_at)) FROM orders WHERE id BETWEEN 301 AND 350`)
	early := late(`SELECT MAX(TIMESTAMPDIFF(MICROSECOND, pay_deadline, closed_at)) FROM orders WHERE id BETWEEN 376 AND 400`)
	t.Logf("%d listeners: closed late by at most %v (keys), %v (no key: the sweep), %v (keys that expired early)", n, keys, swept, early)
	if early > sweep/2 {
		t.Errorf("an order whose key expired before its deadline closed %v after the deadline: its timer, set again, was not handled (the sweep took it)", early)
	}
	if swept > sweep+3*time.Second {
		t.Errorf("an order without a key closed %v after its deadline: more than the sweep interval (%v) allows", swept, sweep)
	}
	// The metrics carry each timer's name: the sweep's share is the orders
	// without a key (and any it took from the events), the events' the rest.
	moved := map[string]float64{}
	for _, u := range metrics {
		for _, m := range movedLine.FindAllStringSubmatch(metricsText(t, u), -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			moved[m[1]] += v
		}
	}
	bySweep, byEvent := moved[`orderd_timers_moved_total{source="sweep",timer="pay_timeout"}`], moved[`orderd_timers_moved_total{source="event",timer="pay_timeout"}`]
	if bySweep < 50 || bySweep+byEvent != 375 || moved[`orderd_timers_moved_total{source="event",timer="auto_confirm"}`]+moved[`orderd_timers_moved_total{source="sweep",timer="auto_confirm"}`] != 10 {
		t.Errorf("orderd_timers_moved_total: %v; want pay_timeout 375 (at least 50 by the sweep) and auto_confirm 10", moved)
	}
	// orderd status reads the same file: each timer's overdue records, the
	// listeners; with none running and records overdue, exit 1.
	statusArgs := []string{"status", "--config", filepath.Join(laravelDir, "orderd.yaml")}
	if code, out := runCmd(t, shop.env, statusArgs...); code != 0 || !strings.Contains(out, "timer pay_timeout") ||
		!strings.Contains(out, "order_pay:…: 0 overdue") || !strings.Contains(out, fmt.Sprintf("%d live", n)) {
		t.Fatalf("orderd status --config with every order moved: exit %d, want 0, the timers and %d listeners:\n%s", code, n, out)
	}
	for _, l := range listeners {
		if code := l.stop(t); code != 0 {
			t.Fatalf("orderd listen exit %d", code)
		}
	}
	shop.place(t, 1001, 1006, -time.Second)
	if code, out := runCmd(t, shop.env, statusArgs...); code != 1 || !strings.Contains(out, "order_pay:…: 5 overdue") || !strings.Contains(out, "no `orderd listen` is running") {
		t.Fatalf("orderd status --config with 5 orders overdue and no listener: exit %d, want 1 saying so:\n%s", code, out)
	}
	// The console reads the same file: the timers on the shop's tables.
	addr := freeAddr(t)
	start(t, shop.env, "console", "--config", filepath.Join(laravelDir, "orderd.yaml"), "--addr", addr)
	waitHTTP(t, "http://"+addr+"/")
	for path, want := range map[string][]string{
		"/":         {"Timers on your own tables", "pay_timeout", `<td class="num">5</td>`, "5 record(s) are overdue"},
		"/timers":   {`data-shard="`},
		"/orders/1": {"your own tables"},
	} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, w := range want {
			if !strings.Contains(string(body), w) {
				t.Fatalf("console --config, GET %s (%d): no %q in:\n%s", path, resp.StatusCode, w, body)
			}
		}
	}
}

// A statement of the file that the shop's database rejects stops orderd
// listen at start-up with exit 2, naming the file, the timer and the
// statement.
func TestOwnTablesRejectedStatement(t *testing.T) {
	host, port, _ := strings.Cut(testkit.RedisAddr(), ":")
	redisURL := "redis://" + host + ":" + port + "/" + strconv.Itoa(redisDB)
	shop := newLaravelShop(t, redisURL, port, redisDB)
	raw, err := os.ReadFile(filepath.Join(laravelDir, "orderd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(raw), "SET status = 3, received_at", "SET state = 3, received_at", 1)
	path := filepath.Join(t.TempDir(), "orderd.yaml")
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runCmd(t, shop.env, "listen", "--config", path)
	if code != 2 || !strings.Contains(out, path) || !strings.Contains(out, "auto_confirm") || !strings.Contains(out, "apply[0]") || !strings.Contains(out, "state") {
		t.Fatalf("exit %d, want 2 naming the file, the timer auto_confirm, apply[0] and the column:\n%s", code, out)
	}
}

// seckillDir is the worked example of a Spring flash-sale shop's tables.
const seckillDir = "../../contrib/examples/seckill"

// The flash-sale example, of another shape (string order numbers, a string
// state, deadlines in Unix milliseconds): orders whose keys the shell script
// set time out once at their deadlines, orders without a key by the sweep,
// paid ones stay paid, and the flash-sale stock is conserved.
func TestOwnTablesSeckill(t *testing.T) {
	const sweep = 2 * time.Second
	testkit.Redis(t, redisDB)
	host, port, _ := strings.Cut(testkit.RedisAddr(), ":")
	url := ordertest.MySQLURL(t)
	schema, err := os.ReadFile(filepath.Join(seckillDir, "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	db := ordertest.SQLDB(t, url, string(schema))
	mustExec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	count := func(q string, args ...any) int64 {
		t.Helper()
		var n sql.NullInt64
		if err := db.QueryRow(q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n.Int64
	}
	const stock, orders = 500, 200
	mustExec(`INSERT INTO seckill_goods VALUES (1, ?), (2, ?)`, stock, stock)
	env := []string{"SHOP_DB_URL=" + url, "SHOP_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB),
		"REDIS_HOST=" + host, "REDIS_PORT=" + port, "REDIS_DB=" + strconv.Itoa(redisDB),
		"ORDERD_SWEEP_INTERVAL=" + sweep.String(), "ORDERD_LOG_FORMAT=json"}
	addr := freeAddr(t)
	listen := start(t, env, "listen", "--config", filepath.Join(seckillDir, "orderd.yaml"), "--metrics-addr", addr)
	waitHTTP(t, "http://"+addr+"/healthz")

	// The flash sale: each order takes a unit, due in 2 s by the database.
	var values []string
	var args []any
	for i := range orders {
		values = append(values, "(?, ?, ?, 'WAIT_PAY', UNIX_TIMESTAMP(NOW(3)) * 1000 + 2000)")
		args = append(args, fmt.Sprintf("SK-%04d", i), 5000+i, 1+i%2)
	}
	deadline := time.Now().Add(2 * time.Second)
	mustExec(`INSERT INTO seckill_order (order_no, user_id, goods_id, state, expire_at) VALUES `+strings.Join(values, ", "), args...)
	mustExec(`UPDATE seckill_goods SET stock_count = stock_count - ?`, orders/2)
	var withKeys []string
	for i := range 150 { // SK-0150..SK-0199: no key, the sweep's
		withKeys = append(withKeys, fmt.Sprintf("SK-%04d", i))
	}
	cmd := exec.Command("sh", append([]string{filepath.Join(seckillDir, "timeout.sh"), strconv.FormatInt(time.Until(deadline).Milliseconds(), 10)}, withKeys...)...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("timeout.sh: %v\n%s", err, out)
	}
	mustExec(`UPDATE seckill_order SET state = 'PAID' WHERE order_no < 'SK-0020' AND expire_at > UNIX_TIMESTAMP(NOW(3)) * 1000 + 300`)
	if got := count(`SELECT COUNT(*) FROM seckill_order WHERE state = 'PAID'`); got != 20 {
		t.Fatalf("%d of 20 orders paid before their deadline: the machine is too slow for this test", got)
	}

	testkit.WaitFor(t, 30*time.Second, "every unpaid flash-sale order timed out", func() bool {
		return count(`SELECT COUNT(*) FROM seckill_order WHERE state = 'WAIT_PAY'`) == 0
	})
	if got := count(`SELECT COUNT(*) FROM seckill_order WHERE state = 'TIMEOUT'`); got != orders-20 {
		t.Fatalf("%d orders timed out, want %d", got, orders-20)
	}
	for g := 1; g <= 2; g++ {
		live := count(`SELECT COUNT(*) FROM seckill_order WHERE goods_id = ? AND state <> 'TIMEOUT'`, g)
		if now := count(`SELECT stock_count FROM seckill_goods WHERE id = ?`, g); now+live != stock {
			t.Fatalf("goods %d: stock %d + %d live orders, want %d", g, now, live, stock)
		}
	}
	if code := listen.stop(t); code != 0 {
		t.Fatalf("orderd listen exit %d", code)
	}
}

// webhookApp is a shop's app behind its own API: it checks each POST's
// signature, fails the first few (500), and marks the shipped orders of the
// others received.
type webhookApp struct {
	t       *testing.T
	db      *sql.DB
	secret  string
	mu      sync.Mutex
	fail    int          // POSTs still to fail
	posts   int          // POSTs received
	bad     int          // POSTs with a wrong signature
	attempt map[int]bool // the attempts seen
}

func (a *webhookApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	mac := hmac.New(sha256.New, []byte(a.secret))
	mac.Write(body)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.posts++
	if r.Header.Get("X-Orderd-Signature") != "sha256="+hex.EncodeToString(mac.Sum(nil)) || r.Header.Get("Content-Type") != "application/json" {
		a.bad++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var b struct {
		Timer   string   `json:"timer"`
		IDs     []string `json:"ids"`
		Attempt int      `json:"attempt"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.Timer != "auto_confirm" || len(b.IDs) == 0 {
		a.bad++
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	a.attempt[b.Attempt] = true
	if a.fail > 0 {
		a.fail--
		http.Error(w, "the app is having a bad day", http.StatusInternalServerError)
		return
	}
	for _, id := range b.IDs {
		if _, err := a.db.Exec(`UPDATE orders SET status = 3, received_at = NOW(3) WHERE id = ? AND status = 2`, id); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
}

// A webhook timer: the app's POSTs are signed, a 500 is retried (from the
// due index, with backoff) until the app takes the batch, and when the app
// stays down for longer than max_attempts the timers end in the dead set,
// which orderd status shows (exit 1).
func TestOwnTablesWebhook(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	host, port, _ := strings.Cut(testkit.RedisAddr(), ":")
	redisURL := "redis://" + host + ":" + port + "/" + strconv.Itoa(redisDB)
	shop := newLaravelShop(t, redisURL, port, redisDB)
	app := &webhookApp{t: t, db: shop.db, secret: "webhook-secret-for-the-test", fail: 2, attempt: map[int]bool{}}
	srv := httptest.NewServer(app)
	defer srv.Close()
	config := fmt.Sprintf(`db: ${SHOP_DB_URL}
redis_url: ${SHOP_REDIS_URL}
key_prefix: "laravel_database_laravel_cache_:"
sweep_interval: 1h
timers:
  - name: auto_confirm
    key: "order_confirm:"
    webhook:
      url: %s/internal/orders/auto-confirm
      secret: ${WEBHOOK_SECRET}
      timeout: 1s
      max_attempts: 3
    sweep: SELECT id FROM orders WHERE status = 2 AND confirm_deadline <= NOW(3) ORDER BY confirm_deadline, id LIMIT :limit
`, srv.URL)
	path := filepath.Join(t.TempDir(), "orderd.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append([]string{"WEBHOOK_SECRET=" + app.secret, "ORDERD_LOG_FORMAT=json"}, shop.env...)
	addr := freeAddr(t)
	listen := start(t, env, "listen", "--config", path, "--metrics-addr", addr)
	waitHTTP(t, "http://"+addr+"/healthz")

	ship := func(from, to int64) {
		t.Helper()
		shop.place(t, from, to, -time.Hour)
		shop.exec(t, `UPDATE orders SET status = 2, confirm_deadline = NOW(3) + INTERVAL 500000 MICROSECOND WHERE id BETWEEN ? AND ?`, from, to-1)
		for id := from; id < to; id++ {
			if err := rdb.Set(context.Background(), laravelPrefix+"order_confirm:"+strconv.FormatInt(id, 10), id, 500*time.Millisecond).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	ship(1, 21)
	testkit.WaitFor(t, 30*time.Second, "every shipped order received through the webhook, after two 500s", func() bool {
		return shop.count(t, `SELECT COUNT(*) FROM orders WHERE status = 3`) == 20
	})
	app.mu.Lock()
	if app.bad != 0 || !app.attempt[1] || !app.attempt[2] {
		t.Fatalf("the app saw %d bad POSTs and attempts %v; want none bad, and attempts 1 and 2 (the retries)", app.bad, app.attempt)
	}
	app.mu.Unlock()

	srv.Close() // the app goes down for good
	ship(101, 106)
	testkit.WaitFor(t, 30*time.Second, "the timers of the app that is down in the dead set", func() bool {
		code, out := runCmd(t, env, "status", "--config", path)
		return code == 1 && strings.Contains(out, "5 timer(s) failed every attempt")
	})
	if n := shop.count(t, `SELECT COUNT(*) FROM orders WHERE id BETWEEN 101 AND 105 AND status = 2`); n != 5 {
		t.Fatalf("%d of 5 orders of the app that is down still shipped", n)
	}
	if code := listen.stop(t); code != 0 {
		t.Fatalf("orderd listen exit %d", code)
	}
}

// A statement that fails while orderd runs (the shop renamed a column the
// timer's SQL uses) rolls its batch back, is logged with the timer's name and
// the statement, and is tried again from the due index: once the column is
// back, the orders close, once each. The listener keeps running.
func TestOwnTablesStatementErrorRetried(t *testing.T) {
	testkit.Redis(t, redisDB)
	host, port, _ := strings.Cut(testkit.RedisAddr(), ":")
	shop := newLaravelShop(t, "redis://"+host+":"+port+"/"+strconv.Itoa(redisDB), port, redisDB)
	env := append([]string{"ORDERD_SWEEP_INTERVAL=1h", "ORDERD_LOG_FORMAT=json"}, shop.env...)
	addr := freeAddr(t)
	listen := start(t, env, "listen", "--config", filepath.Join(laravelDir, "orderd.yaml"), "--metrics-addr", addr)
	waitHTTP(t, "http://"+addr+"/healthz")

	deadline := shop.place(t, 1, 11, 2*time.Second)
	shop.exec(t, `ALTER TABLE goods RENAME COLUMN stock TO stock_left`)
	shop.timers(t, "pay", time.Until(deadline), true, 1, 11)
	testkit.WaitFor(t, 30*time.Second, "the failing statement logged with the timer's name", func() bool {
		out := listen.stderr.String()
		return strings.Contains(out, "timer pay_timeout: apply[1]") && strings.Contains(out, "stock")
	})
	if n := shop.count(t, `SELECT COUNT(*) FROM orders WHERE status = 0`); n != 10 {
		t.Fatalf("%d of 10 orders still unpaid while the statement fails, want 10: a failed batch rolls back", n)
	}
	shop.exec(t, `ALTER TABLE goods RENAME COLUMN stock_left TO stock`)
	testkit.WaitFor(t, 60*time.Second, "the orders closed once the statement works again", func() bool {
		return shop.count(t, `SELECT COUNT(*) FROM orders WHERE status = 4`) == 10
	})
	shop.checkStock(t)
	if code := listen.stop(t); code != 0 {
		t.Fatalf("orderd listen exit %d", code)
	}
}
