package sqlstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
)

func TestParseURL(t *testing.T) {
	good := map[string]string{
		"sqlite:orderd.db":                             "sqlite",
		"sqlite:/var/lib/orderd/orderd.db":             "sqlite",
		"mysql://u:p@127.0.0.1:3306/orderd":            "mysql",
		"mysql://u:p@db.internal/orderd?tls=preferred": "mysql",
	}
	for url, driver := range good {
		if d, dsn, err := sqlstore.ParseURL(url); err != nil || d != driver || dsn == "" {
			t.Errorf("ParseURL(%q) = %q, %q, %v", url, d, dsn, err)
		}
	}
	if _, dsn, _ := sqlstore.ParseURL("mysql://u:p@127.0.0.1/orderd"); !strings.Contains(dsn, "127.0.0.1:3306") {
		t.Errorf("default port missing in %q", dsn)
	}
	for _, url := range []string{"", "sqlite:", "postgres://x/y", "mysql://u:p@h:1/", "mysql://u:p@/db", "mysql://h/a/b", "orderd.db"} {
		if _, _, err := sqlstore.ParseURL(url); err == nil {
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
