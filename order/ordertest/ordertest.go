// Package ordertest starts nothing: it connects tests to the MariaDB that
// contrib/dev/test.sh starts (ORDERD_TEST_MYSQL) or to SQLite files of their
// own, and checks order invariants. Redis and the rest of the shared test kit
// are in internal/testkit.
package ordertest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/sqlscript"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/sqlstore"
)

// MySQLBase is the test MariaDB as a mysql:// URL without a database name.
func MySQLBase() string {
	if u := os.Getenv("ORDERD_TEST_MYSQL"); u != "" {
		return u
	}
	return "mysql://orderd:orderd@127.0.0.1:13306"
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// MySQLURL creates a fresh, empty database named after the test and returns
// its URL; the database is dropped at the test's end. It is created latin1,
// the default of many servers, so that a table created without a character
// set of its own is caught.
func MySQLURL(tb testing.TB) string {
	tb.Helper()
	name := "t_" + unsafeName.ReplaceAllString(tb.Name(), "_")
	if len(name) > 64 {
		name = name[:64]
	}
	admin, err := sqlstore.Open(context.Background(), MySQLBase()+"/mysql")
	if err != nil {
		tb.Fatalf("no MariaDB at %s (set ORDERD_TEST_MYSQL or run contrib/dev/test.sh): %v", MySQLBase(), err)
	}
	defer admin.Close()
	for _, q := range []string{"DROP DATABASE IF EXISTS " + name, "CREATE DATABASE " + name + " CHARACTER SET latin1"} {
		if _, err := admin.DB().Exec(q); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Cleanup(func() {
		admin, err := sqlstore.Open(context.Background(), MySQLBase()+"/mysql")
		if err != nil {
			tb.Errorf("drop test database %s: %v", name, err)
			return
		}
		defer admin.Close()
		if _, err := admin.DB().Exec("DROP DATABASE IF EXISTS " + name); err != nil {
			tb.Errorf("drop test database %s: %v", name, err)
		}
	})
	return MySQLBase() + "/" + name
}

// SQLiteURL returns the URL of a new SQLite file in the test's temp dir.
func SQLiteURL(tb testing.TB) string {
	return "sqlite:" + filepath.Join(tb.TempDir(), "orderd.db")
}

// Open opens and migrates the database at url, closed at the test's end.
// Its outbox is on, as `orderd serve` and `orderd listen` run it by default.
func Open(tb testing.TB, url string) *sqlstore.Store {
	tb.Helper()
	st, err := sqlstore.Open(context.Background(), url)
	if err != nil {
		tb.Fatal(err)
	}
	st.SetOutbox(true)
	tb.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return st
}

// EachStore runs f as a subtest against a fresh SQLite and a fresh MariaDB
// database.
func EachStore(t *testing.T, f func(t *testing.T, st *sqlstore.Store)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { f(t, Open(t, SQLiteURL(t))) })
	t.Run("mysql", func(t *testing.T) { f(t, Open(t, MySQLURL(t))) })
}

// CheckStock fails the test unless stock of sku is conserved: total equals
// available plus the units of live orders, and available is not negative.
func CheckStock(tb testing.TB, st order.Store, sku, total int64) {
	tb.Helper()
	ctx := context.Background()
	k, err := st.GetSKU(ctx, sku)
	if err != nil {
		tb.Fatal(err)
	}
	held, err := st.LiveQty(ctx, sku)
	if err != nil {
		tb.Fatal(err)
	}
	var live int64
	for _, q := range held {
		live += q
	}
	if k.Available < 0 || k.Available+live != total {
		tb.Fatalf("stock of sku %d not conserved: available %d + live %d = %d, want %d",
			sku, k.Available, live, k.Available+live, total)
	}
}

// Describe is a short text of an order for failure messages.
func Describe(o order.Order) string {
	return fmt.Sprintf("order %d (%s, qty %d, deadline %s)", o.ID, o.Status, o.Qty, o.PayDeadline.Format("15:04:05.000"))
}

// SeedPending inserts n pending orders of one unit of sku (which must
// exist), all due at deadline, straight into the database in bulk, takes
// their units from the SKU's available stock, and returns their ids: a burst
// without n round trips through the service. Their timers are the caller's.
func SeedPending(tb testing.TB, st *sqlstore.Store, sku int64, n int, deadline time.Time) []int64 {
	tb.Helper()
	return SeedPendingAt(tb, st, sku, n, func(int) time.Time { return deadline })
}

// SeedPendingAt is SeedPending with the i-th order due at deadline(i).
func SeedPendingAt(tb testing.TB, st *sqlstore.Store, sku int64, n int, deadline func(i int) time.Time) []int64 {
	tb.Helper()
	ctx := context.Background()
	db := st.DB()
	if _, err := db.ExecContext(ctx, db.Rebind(`UPDATE skus SET available = available - ? WHERE sku = ?`), n, sku); err != nil {
		tb.Fatal(err)
	}
	var first int64
	if err := db.GetContext(ctx, &first, `SELECT COALESCE(MAX(id), 0) FROM orders`); err != nil {
		tb.Fatal(err)
	}
	now := time.Now().UnixMilli()
	const rows = 500
	for i := 0; i < n; i += rows {
		m := min(n, i+rows) - i
		var sb strings.Builder
		sb.WriteString(`INSERT INTO orders (user_id, sku, qty, amount_cents, status, created_at, pay_deadline, auto_confirmed) VALUES `)
		args := make([]any, 0, 4*m)
		for j := range m {
			if j > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(`(?, ?, 1, 100, 'pending', ?, ?, 0)`)
			args = append(args, i+j+1, sku, now, deadline(i+j).UnixMilli())
		}
		if _, err := db.ExecContext(ctx, db.Rebind(sb.String()), args...); err != nil {
			tb.Fatal(err)
		}
	}
	var ids []int64
	if err := db.SelectContext(ctx, &ids, db.Rebind(`SELECT id FROM orders WHERE id > ? ORDER BY id`), first); err != nil {
		tb.Fatal(err)
	}
	if len(ids) != n {
		tb.Fatalf("seeded %d orders, want %d", len(ids), n)
	}
	return ids
}

// SQLDB opens url (sqlstore.ParseURL's forms) with database/sql alone, for
// a test that works on a shop's own tables; it is closed when the test ends.
// The statements of script (sqlscript.Statements), if any, are run on it.
func SQLDB(tb testing.TB, url, script string) *sql.DB {
	tb.Helper()
	u, err := sqlstore.ParseURL(url)
	if err != nil {
		tb.Fatal(err)
	}
	db, err := u.OpenDB()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	for _, q := range sqlscript.Statements(script) {
		if _, err := db.Exec(q); err != nil {
			tb.Fatalf("%v\n%s", err, q)
		}
	}
	return db
}
