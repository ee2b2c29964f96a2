package sqltimer_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/sqltimer"
)

// A shop's tables, of the shape a Laravel shop has: status 0 unpaid, 1 paid,
// 4 closed; each order's lines in order_goods; stock in goods.
const shopSchema = `
CREATE TABLE goods (id BIGINT PRIMARY KEY, stock INT NOT NULL);
CREATE TABLE orders (
  id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, status TINYINT NOT NULL,
  pay_deadline DATETIME(3) NOT NULL, closed_at DATETIME NULL,
  KEY (status, pay_deadline));
CREATE TABLE order_goods (order_id BIGINT NOT NULL, goods_id BIGINT NOT NULL, num INT NOT NULL, KEY (order_id));
`

// payTimeout is the shop's pay timeout as configured.
var payTimeout = sqltimer.Config{
	Name: "pay_timeout",
	Claim: `SELECT id FROM orders
	 WHERE id IN (:ids) AND status = 0 AND pay_deadline <= NOW(3)
	 FOR UPDATE`,
	Apply: []string{
		`UPDATE orders SET status = 4, closed_at = NOW() WHERE id IN (:ids)`,
		`UPDATE goods g
		   JOIN (SELECT goods_id, SUM(num) AS n FROM order_goods
		          WHERE order_id IN (:ids) GROUP BY goods_id) x ON x.goods_id = g.id
		    SET g.stock = g.stock + x.n`,
	},
	Sweep: `SELECT id FROM orders WHERE status = 0 AND pay_deadline <= NOW(3)
	 ORDER BY pay_deadline, id LIMIT :limit`,
	Deadline: `SELECT id, TIMESTAMPDIFF(MICROSECOND, NOW(6), pay_deadline) / 1e6
	  FROM orders WHERE id IN (:ids) AND status = 0 AND pay_deadline > NOW(3)`,
}

// shop opens a new database with the shop's tables; params are added to
// its URL (session settings).
func shop(t *testing.T, params string) *sql.DB {
	t.Helper()
	url := ordertest.MySQLURL(t)
	if params != "" {
		url += "?" + params
	}
	return ordertest.SQLDB(t, url, shopSchema)
}

func exec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func newTimer(t *testing.T, db *sql.DB, cfg sqltimer.Config) *sqltimer.Timer {
	t.Helper()
	tm, err := sqltimer.New(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	return tm
}

// order inserts an order with status, due in (negative: overdue), with one
// line of num of goods 1.
func order(t *testing.T, db *sql.DB, id int64, status int, in time.Duration, num int) {
	t.Helper()
	exec(t, db, `INSERT INTO orders (id, user_id, status, pay_deadline) VALUES (?, 7, ?, NOW(3) + INTERVAL ? MICROSECOND)`, id, status, in.Microseconds())
	exec(t, db, `INSERT INTO order_goods VALUES (?, 1, ?)`, id, num)
}

func scalar(t *testing.T, db *sql.DB, q string, args ...any) int64 {
	t.Helper()
	var n sql.NullInt64
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n.Int64
}

// A batch claims the due unpaid orders of its ids, closes them and gives
// their lines back to stock, in one transaction; it leaves a paid order
// and an id with no order alone, and says how long the one not due yet
// has left. Run again, it moves nothing.
func TestApplyMovesDueOnce(t *testing.T) {
	db := shop(t, "")
	ctx := context.Background()
	exec(t, db, `INSERT INTO goods VALUES (1, 100)`)
	order(t, db, 1, 0, -time.Second, 2)
	order(t, db, 2, 0, time.Hour, 3)
	order(t, db, 3, 1, -time.Second, 4)
	order(t, db, 4, 0, -time.Minute, 5)
	tm := newTimer(t, db, payTimeout)

	out, err := tm.Apply(ctx, []string{"1", "2", "3", "4", "5"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(out.Claimed, ",") != "1,4" && strings.Join(out.Claimed, ",") != "4,1" {
		t.Fatalf("claimed %v, want 1 and 4", out.Claimed)
	}
	if left, ok := out.NotDue["2"]; !ok || left < 59*time.Minute || left > time.Hour || len(out.NotDue) != 1 {
		t.Fatalf("not due %v, want order 2 with about an hour left", out.NotDue)
	}
	if got := scalar(t, db, `SELECT stock FROM goods WHERE id = 1`); got != 107 {
		t.Fatalf("stock %d, want 107 (100 + 2 + 5)", got)
	}
	if got := scalar(t, db, `SELECT COUNT(*) FROM orders WHERE status = 4 AND closed_at IS NOT NULL`); got != 2 {
		t.Fatalf("%d orders closed, want 2", got)
	}
	out, err = tm.Apply(ctx, []string{"1", "4"})
	if err != nil || len(out.Claimed) != 0 {
		t.Fatalf("again: claimed %v (%v), want none", out.Claimed, err)
	}
	if got := scalar(t, db, `SELECT stock FROM goods WHERE id = 1`); got != 107 {
		t.Fatalf("stock %d after a repeated batch, want 107", got)
	}
	if _, err := tm.Apply(ctx, []string{"x1"}); err == nil || !strings.Contains(err.Error(), "pay_timeout") {
		t.Fatalf("a malformed id: %v, want an error naming the timer", err)
	}
}

// Batches racing over the same orders from several goroutines (several
// daemons) move each order once: stock is conserved, whatever deadlocks
// the server finds on the way (they run the batch again).
func TestConcurrentBatchesMoveEachOnce(t *testing.T) {
	db := shop(t, "")
	ctx := context.Background()
	const n, stock = 300, 1000
	exec(t, db, `INSERT INTO goods VALUES (1, ?)`, stock)
	var ids []string
	for i := 1; i <= n; i++ {
		order(t, db, int64(i), 0, -time.Second, 1+i%3)
		ids = append(ids, strconv.Itoa(i))
	}
	tm := newTimer(t, db, payTimeout)
	var wg sync.WaitGroup
	claims := make([]int, n+1)
	var mu sync.Mutex
	for w := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			own := append([]string(nil), ids...)
			r.Shuffle(len(own), func(i, j int) { own[i], own[j] = own[j], own[i] })
			for len(own) > 0 {
				k := min(len(own), 1+r.IntN(40))
				out, err := tm.Apply(ctx, own[:k])
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, id := range out.Claimed {
					i, _ := strconv.Atoi(id)
					claims[i]++
				}
				mu.Unlock()
				own = own[k:]
			}
		})
	}
	wg.Wait()
	for i := 1; i <= n; i++ {
		if claims[i] != 1 {
			t.Fatalf("order %d claimed %d times, want once", i, claims[i])
		}
	}
	live := scalar(t, db, `SELECT SUM(num) FROM order_goods l JOIN orders o ON o.id = l.order_id WHERE o.status <> 4`)
	total := scalar(t, db, `SELECT stock FROM goods WHERE id = 1`) - scalar(t, db, `SELECT SUM(num) FROM order_goods`) + live
	if total != stock {
		t.Fatalf("stock not conserved: %d, want %d", total, stock)
	}
}

// A batch whose row another transaction holds past the server's lock wait
// timeout (1 s here) is run again, and moves the order once the holder
// commits.
func TestLockWaitRunsTheBatchAgain(t *testing.T) {
	db := shop(t, "innodb_lock_wait_timeout=1")
	ctx := context.Background()
	exec(t, db, `INSERT INTO goods VALUES (1, 10)`)
	order(t, db, 1, 0, -time.Second, 2)
	tm := newTimer(t, db, payTimeout)

	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(`SELECT id FROM orders WHERE id = 1 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var out sqltimer.Outcome
	go func() {
		var err error
		out, err = tm.Apply(ctx, []string{"1"})
		done <- err
	}()
	time.Sleep(1500 * time.Millisecond) // the lock held past the timeout is the fault under test
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("a batch that waited past the lock wait timeout: %v, want it run again", err)
	}
	if len(out.Claimed) != 1 {
		t.Fatalf("claimed %v, want order 1", out.Claimed)
	}
}

// A statement the database rejects is found at start-up (Check), with the
// timer and the statement named; so is a placeholder that is not bound.
func TestCheckNamesTheStatement(t *testing.T) {
	db := shop(t, "")
	for _, c := range []struct {
		edit func(*sqltimer.Config)
		want string
	}{
		{func(c *sqltimer.Config) {
			c.Apply = []string{c.Apply[0], "UPDATE goods SET stok = stok + 1 WHERE id IN (:ids)"}
		}, "apply[1]"},
		{func(c *sqltimer.Config) { c.Claim = "SELECT id FROM order WHERE id IN (:ids)" }, "claim"},
		{func(c *sqltimer.Config) { c.Sweep = "SELECT id FROM orders ORDER BY LIMIT :limit" }, "sweep"},
		{func(c *sqltimer.Config) { c.Deadline = "SELECT id, left FROM orders WHERE id IN (:ids)" }, "deadline"},
	} {
		cfg := payTimeout
		c.edit(&cfg)
		tm, err := sqltimer.New(db, cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = tm.Check(context.Background())
		if err == nil || !strings.Contains(err.Error(), "pay_timeout") || !strings.Contains(err.Error(), c.want+":") {
			t.Errorf("%s: %v, want an error naming the timer and %s", c.want, err, c.want)
		}
	}
	cfg := payTimeout
	cfg.Claim = "SELECT id FROM orders WHERE user_id = :user"
	if _, err := sqltimer.New(db, cfg); err == nil || !strings.Contains(err.Error(), ":user") {
		t.Fatalf("a placeholder not bound: %v", err)
	}
}

// The sweep returns overdue ids oldest first, up to its limit.
func TestOverdueOldestFirst(t *testing.T) {
	db := shop(t, "")
	exec(t, db, `INSERT INTO goods VALUES (1, 10)`)
	for i, in := range []time.Duration{-time.Second, -time.Hour, time.Hour, -time.Minute} {
		order(t, db, int64(i+1), 0, in, 1)
	}
	order(t, db, 9, 1, -2*time.Hour, 1) // paid
	tm := newTimer(t, db, payTimeout)
	got, err := tm.Overdue(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[2 4]" {
		t.Fatalf("overdue %v, want [2 4]", got)
	}
}
