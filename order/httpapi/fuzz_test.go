package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/ordertest"
)

// FuzzAPI feeds arbitrary methods, paths, bodies and tokens to the handlers:
// never a 5xx, never a panic, and every error has the JSON error body.
func FuzzAPI(f *testing.F) {
	st := ordertest.Open(f, ordertest.SQLiteURL(f))
	svc := order.NewService(st, nil, nil, order.Config{})
	h, err := httpapi.New(svc, httpapi.Config{JWTSecret: secret})
	if err != nil {
		f.Fatal(err)
	}
	admin, user := token(f, 1, true), token(f, 2, false)
	for _, s := range []struct{ method, path, body string }{
		{"PUT", "/v1/skus/1", `{"name":"x","price_cents":1,"stock":3,"limit_per_user":1}`},
		{"POST", "/v1/orders", `{"sku":1,"qty":1}`},
		{"POST", "/v1/orders/1/pay", ``},
		{"POST", "/v1/orders/1/ship", ``},
		{"GET", "/v1/orders/1", ``},
		{"POST", "/v1/orders", `{"sku":1,"qty":"1"}`},
		{"POST", "/v1/orders", `{"sku":1e400,"qty":-0}`},
		{"GET", "/v1/skus/%00", ``},
	} {
		for _, tok := range []string{"", admin, user, "x.y.z"} {
			f.Add(s.method, s.path, s.body, tok)
		}
	}
	f.Fuzz(func(t *testing.T, method, path, body, tok string) {
		switch method {
		case "GET", "PUT", "POST", "DELETE":
		default:
			method = "POST"
		}
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#?") || strings.Contains(path, "..") {
			return // not a request line net/http would accept
		}
		req, err := http.NewRequest(method, "http://orderd"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		if tok != "" && !strings.ContainsAny(tok, "\r\n") {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() { defer close(done); h.ServeHTTP(rec, req) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s %s did not answer", method, path)
		}
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", method, path, body, rec.Code, rec.Body)
		}
		if rec.Code >= 400 && rec.Code != http.StatusMovedPermanently {
			var e struct{ Error, Message string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || e.Message == "" {
				t.Fatalf("%s %s: %d with body %q", method, path, rec.Code, rec.Body)
			}
		}
	})
}
