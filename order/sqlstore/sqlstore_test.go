package sqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
)

func TestParseURL(t *testing.T) {
	good := map[string]struct {
		driver string
		nodes  []string
	}{
		"sqlite:orderd.db":                             {"sqlite", nil},
		"sqlite:/var/lib/orderd/orderd.db":             {"sqlite", nil},
		"mysql://u:p@127.0.0.1:3306/orderd":            {"mysql", []string{"127.0.0.1:3306"}},
		"mysql://u:p@127.0.0.1/orderd":                 {"mysql", []string{"127.0.0.1:3306"}},
		"mysql://u:p@db.internal/orderd?tls=preferred": {"mysql", []string{"db.internal:3306"}},
		"mysql://u:p@[::1]:13306/orderd":               {"mysql", []string{"[::1]:13306"}},
		"mysql://u:p%40x@10.0.0.1:3306,10.0.0.2,[::1]/orderd?wsrep_sync_wait=1": {
			"mysql", []string{"10.0.0.1:3306", "10.0.0.2:3306", "[::1]:3306"}},
	}
	for url, want := range good {
		u, err := sqlstore.ParseURL(url)
		if err != nil || u.Driver != want.driver || !slices.Equal(u.Nodes, want.nodes) {
			t.Errorf("ParseURL(%q) = %q %q, %v; want %q %q", url, u.Driver, u.Nodes, err, want.driver, want.nodes)
		}
	}
	for _, url := range []string{"", "sqlite:", "postgres://x/y", "mysql://u:p@h:1/", "mysql://u:p@/db", "mysql://h/a/b", "orderd.db",
		"mysql://u:p@h1,,h2/db", "mysql://u:p@h1:3306,h1/db", "mysql://u:p@h1:99999/db", "mysql://u:p@h1:x/db",
		"mysql://u:p@h1,h2:0/db", "mysql://u:p@h1,/db", "mysql://u:p@::1/db"} {
		if _, err := sqlstore.ParseURL(url); err == nil {
			t.Errorf("ParseURL(%q) accepted", url)
		}
	}
}

func TestMigrateIsIdempotent(t *testing.T) {
	for name, url := range map[string]string{"sqlite": ordertest.SQLiteURL(t), "mysql": ordertest.MySQLURL(t)} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st, err := sqlstore.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.CheckSchema(ctx); !errors.Is(err, sqlstore.ErrSchemaOutdated) {
				t.Fatalf("CheckSchema on an empty database: %v", err)
			}
			if applied, err := st.Migrate(ctx); err != nil || len(applied) == 0 {
				t.Fatalf("first migrate: %v %v", applied, err)
			}
			if applied, err := st.Migrate(ctx); err != nil || len(applied) != 0 {
				t.Fatalf("second migrate applied %v, %v", applied, err)
			}
			if err := st.CheckSchema(ctx); err != nil {
				t.Fatalf("CheckSchema after migrate: %v", err)
			}
		})
	}
}

// A value the database cannot store is the request's fault, not a 503: a
// table left in latin1 (created before migration 2, then converted back by
// hand) refuses an emoji, and PutSKU says invalid_request.
func TestDataErrorIsInvalidRequest(t *testing.T) {
	st := ordertest.Open(t, ordertest.MySQLURL(t))
	ctx := context.Background()
	if _, err := st.DB().ExecContext(ctx, "ALTER TABLE skus CONVERT TO CHARACTER SET latin1"); err != nil {
		t.Fatal(err)
	}
	_, err := st.PutSKU(ctx, order.SKU{SKU: 1, Name: "Becher 😀", Available: 1})
	if code := order.ErrorCode(err); code != order.CodeInvalidRequest {
		t.Fatalf("PutSKU of a name the table cannot hold: %v (code %s), want invalid_request", err, code)
	}
}

// The tables hold any UTF-8 text byte for byte, whatever the database's
// default character set (ordertest creates it latin1).
func TestUTF8RoundTrip(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		ctx := context.Background()
		name := "Kaffeebecher ☕ 日本語 😀 \u00e9\u0301"
		if _, err := st.PutSKU(ctx, order.SKU{SKU: 901, Name: name, PriceCents: 1, Available: 1}); err != nil {
			t.Fatal(err)
		}
		k, err := st.GetSKU(ctx, 901)
		if err != nil || k.Name != name {
			t.Fatalf("name came back as %q (%v), want %q", k.Name, err, name)
		}
	})
}

// Every session of a store on MariaDB/MySQL runs READ COMMITTED (no gap
// locks between concurrent batches and creations), set once per connection
// rather than by each transaction, whatever Options say.
func TestSessionsAreReadCommitted(t *testing.T) {
	url := ordertest.MySQLURL(t)
	ctx := context.Background()
	for _, opts := range []sqlstore.Options{{}, {TxIdleTimeout: time.Second, LockWait: time.Second}} {
		st, err := sqlstore.OpenWith(ctx, url, opts)
		if err != nil {
			t.Fatal(err)
		}
		db := st.DB()
		db.SetMaxIdleConns(4)
		conns := make([]*sql.Conn, 3) // several sessions: each new one is set too
		for i := range conns {
			if conns[i], err = db.Conn(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range conns {
			var level string
			if err := c.QueryRowContext(ctx, `SELECT @@SESSION.tx_isolation`).Scan(&level); err != nil {
				t.Fatal(err)
			}
			if level != "READ-COMMITTED" {
				t.Errorf("%+v: session %d runs %s, want READ-COMMITTED", opts, i, level)
			}
			c.Close()
		}
		st.Close()
	}
}
