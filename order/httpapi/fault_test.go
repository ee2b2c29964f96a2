package httpapi_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/stock"
)

// A database that hangs (MariaDB frozen, its packets held by a proxy) costs a
// request at most the request timeout, answered 503 unavailable; once the
// database answers again, so does the API.
func TestFrozenDatabaseAnswers503(t *testing.T) {
	url := ordertest.MySQLURL(t)
	ordertest.Open(t, url) // migrated, straight
	host := strings.TrimPrefix(ordertest.MySQLBase(), "mysql://orderd:orderd@")
	proxy := testkit.NewProxy(t, host)
	st, err := sqlstore.Open(context.Background(), strings.Replace(url, host, proxy.Addr(), 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })

	rdb := testkit.Redis(t, redisDB)
	svc := order.NewService(st, stock.NewCounter(rdb, ""), nil, order.Config{})
	h, err := httpapi.New(svc, httpapi.Config{JWTSecret: secret, RequestTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := &api{t: t, srv: srv, svc: svc, store: st, client: srv.Client()}
	a.client.Timeout = 30 * time.Second
	admin, alice := token(t, 1, true), token(t, 2, false)
	a.expect("PUT", "/v1/skus/1", admin, map[string]any{"name": "Mug", "price_cents": 100, "stock": 5}, 200, "")

	proxy.Freeze()
	for _, r := range []struct{ method, path, tok string }{
		{"GET", "/v1/skus/1", ""},
		{"POST", "/v1/orders", alice},
		{"GET", "/v1/orders", alice},
	} {
		start := time.Now()
		var body any
		if r.method == "POST" {
			body = map[string]any{"sku": 1, "qty": 1}
		}
		a.expect(r.method, r.path, r.tok, body, 503, "unavailable")
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("%s %s took %v with the database frozen", r.method, r.path, took)
		}
	}
	proxy.Thaw()
	a.expect("POST", "/v1/orders", alice, map[string]any{"sku": 1, "qty": 1}, 201, "")
	ordertest.CheckStock(t, st, 1, 5)
}

// A name in any script comes back byte for byte through the API, on both
// stores (the MariaDB database defaults to latin1).
func TestUTF8NamesThroughAPI(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		a := newAPI(t, st, order.Config{})
		admin := token(t, 1, true)
		name := "Kaffeebecher ☕ 日本語 😀"
		a.expect("PUT", "/v1/skus/901", admin, map[string]any{"name": name, "price_cents": 1200, "stock": 3}, 200, "")
		if got := a.expect("GET", "/v1/skus/901", "", nil, 200, "")["name"]; got != name {
			t.Fatalf("name came back as %q, want %q", got, name)
		}
	})
}
