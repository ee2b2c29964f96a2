package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/internal/sqlscript"
	"github.com/orderd/orderd/order/sqlstore"
)

// laravelPrefix is the key prefix of the Laravel example (its cache store's).
const laravelPrefix = "laravel_database_laravel_cache_:"

// shape is the schema a mode's orders live in: orderd's own (the built-in
// pay timeout), or a Laravel shop's tables with the pay timeout configured
// as SQL (mode laravel: contrib/examples/laravel, run by `orderd listen
// --config`).
type shape struct {
	prefix     string // the keys' prefix
	pending    string // SQL: the status of an unpaid order
	deadlines  string // SQL: every order's id and pay deadline (Unix ms), by id
	fresh      func(ctx context.Context, c config, rdb redis.UniversalClient) (*sqlstore.Store, error)
	seedOrders func(ctx context.Context, store *sqlstore.Store, n int, deadline func(int) time.Time) error
	moved      string // SQL: pay_deadline and cancelled_at (Unix ms) of each order moved
	stock      string // SQL: the stock available plus that of the live orders
}

func shapeOf(mode string) shape {
	if mode == "laravel" {
		return shape{
			prefix:     laravelPrefix,
			pending:    "0",
			deadlines:  `SELECT id, CAST(UNIX_TIMESTAMP(pay_deadline) * 1000 AS SIGNED) FROM orders ORDER BY id`,
			fresh:      freshLaravel,
			seedOrders: seedLaravel,
			moved: `SELECT CAST(UNIX_TIMESTAMP(pay_deadline) * 1000 AS SIGNED) AS pay_deadline,
			        CAST(UNIX_TIMESTAMP(closed_at) * 1000 AS SIGNED) AS cancelled_at FROM orders WHERE status = 4`,
			stock: `SELECT (SELECT stock FROM goods WHERE id = 1) +
			        (SELECT COALESCE(SUM(l.num), 0) FROM order_goods l JOIN orders o ON o.id = l.order_id WHERE o.status = 0)`,
		}
	}
	return shape{
		pending:    "'pending'",
		deadlines:  `SELECT id, pay_deadline FROM orders ORDER BY id`,
		fresh:      fresh,
		seedOrders: seedOrders,
		moved:      `SELECT pay_deadline, cancelled_at FROM orders WHERE status = 'expired'`,
		stock: fmt.Sprintf(`SELECT (SELECT available FROM skus WHERE sku = %d) +
		        (SELECT COALESCE(SUM(qty), 0) FROM orders WHERE status = 'pending')`, skuID),
	}
}

// keysMode is how the orders' keys are set: laravel's like orderd's (the
// Scheduler: key and due-index entry, as the example's timers.php --index).
func (sh shape) keysMode(mode string) string {
	if mode == "laravel" {
		return "orderd"
	}
	return mode
}

// freshLaravel empties Redis and recreates the benchmark's database with
// the Laravel example's tables (and no orderd schema).
func freshLaravel(ctx context.Context, c config, rdb redis.UniversalClient) (*sqlstore.Store, error) {
	if err := flush(ctx, rdb); err != nil {
		return nil, err
	}
	admin, err := sqlstore.Open(ctx, c.mysqlBase+"/mysql")
	if err != nil {
		return nil, fmt.Errorf("--mysql: %w", err)
	}
	defer admin.Close()
	for _, q := range []string{"DROP DATABASE IF EXISTS " + benchDB, "CREATE DATABASE " + benchDB} {
		if _, err := admin.DB().ExecContext(ctx, q); err != nil {
			return nil, err
		}
	}
	raw, err := os.ReadFile(filepath.Join(c.laravelDir, "schema.sql"))
	if err != nil {
		return nil, fmt.Errorf("--laravel-dir: %w", err)
	}
	st, err := sqlstore.Open(ctx, c.mysqlBase+"/"+benchDB)
	if err != nil {
		return nil, err
	}
	for _, q := range sqlscript.Statements(string(raw)) {
		if _, err := st.DB().ExecContext(ctx, q); err != nil {
			st.Close()
			return nil, fmt.Errorf("schema.sql: %w", err)
		}
	}
	return st, nil
}

// seedLaravel inserts n unpaid orders of one line each straight into the
// shop's tables in bulk, and takes their stock.
func seedLaravel(ctx context.Context, store *sqlstore.Store, n int, deadline func(int) time.Time) error {
	db := store.DB()
	if _, err := db.ExecContext(ctx, `INSERT INTO goods (id, name, stock) VALUES (1, 'bench', ?)`, skuTotal-n); err != nil {
		return err
	}
	for i := 0; i < n; i += insertRow {
		m := min(n, i+insertRow) - i
		var orders, lines strings.Builder
		orders.WriteString(`INSERT INTO orders (id, user_id, status, pay_deadline) VALUES `)
		lines.WriteString(`INSERT INTO order_goods (order_id, goods_id, num) VALUES `)
		oargs := make([]any, 0, 3*m)
		largs := make([]any, 0, m)
		for j := range m {
			if j > 0 {
				orders.WriteByte(',')
				lines.WriteByte(',')
			}
			orders.WriteString(`(?, ?, 0, FROM_UNIXTIME(?))`)
			ms := deadline(i + j).UnixMilli()
			oargs = append(oargs, i+j+1, i+j+1, fmt.Sprintf("%d.%03d", ms/1000, ms%1000))
			lines.WriteString(`(?, 1, 1)`)
			largs = append(largs, i+j+1)
		}
		if _, err := db.ExecContext(ctx, orders.String(), oargs...); err != nil {
			return fmt.Errorf("seed orders: %w", err)
		}
		if _, err := db.ExecContext(ctx, lines.String(), largs...); err != nil {
			return fmt.Errorf("seed order lines: %w", err)
		}
	}
	return nil
}
