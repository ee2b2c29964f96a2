package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/daemon"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/stock"
)

const redisDB = 4 // this package's Redis database

var secret = []byte("test-secret")

type api struct {
	t       testing.TB
	srv     *httptest.Server
	svc     *order.Service
	store   *sqlstore.Store
	counter *stock.Counter
	client  *http.Client
}

func newAPI(t testing.TB, st *sqlstore.Store, cfg order.Config) *api {
	t.Helper()
	rdb := testkit.Redis(t, redisDB)
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{})
	counter := stock.NewCounter(rdb, "")
	counter.CacheSoldOut(time.Second) // as orderd serve does
	wctx, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { defer close(watched); counter.WatchRestocks(wctx, nil) }()
	t.Cleanup(func() { stopWatch(); <-watched })
	svc := order.NewService(st, counter, sched, cfg)
	h, err := httpapi.New(svc, httpapi.Config{JWTSecret: secret, Health: func(ctx context.Context) httpapi.Problems {
		if err := rdb.Ping(ctx).Err(); err != nil {
			return httpapi.Problems{"redis": err.Error()}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tr := &http.Transport{MaxConnsPerHost: 128, MaxIdleConnsPerHost: 128}
	t.Cleanup(tr.CloseIdleConnections)
	a := &api{t: t, srv: srv, svc: svc, store: st, counter: counter, client: &http.Client{Transport: validating{next: tr, tb: t}, Timeout: 30 * time.Second}}
	if d, ok := t.(*testing.T); ok {
		// The daemon, so that orders expire on their own.
		l := daemon.New(svc, rdb, daemon.Config{SweepInterval: time.Hour, Logger: zaptest.NewLogger(d, zaptest.Level(zapWarn)), Listener: expiry.ListenerConfig{Scheduler: sched}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); l.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return a
}

func token(t testing.TB, user int64, admin bool) string {
	tok, err := httpapi.IssueToken(secret, user, admin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// do sends a request and returns the status and the decoded JSON body.
func (a *api) do(method, path, tok string, body any) (int, map[string]any) {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, a.srv.URL+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(raw, &out); err != nil {
			a.t.Fatalf("%s %s: body is not JSON: %q", method, path, raw)
		}
	}
	return resp.StatusCode, out
}

// expect checks status and, for errors, the error code.
func (a *api) expect(method, path, tok string, body any, status int, code string) map[string]any {
	a.t.Helper()
	got, out := a.do(method, path, tok, body)
	if got != status || (code != "" && out["error"] != code) {
		a.t.Fatalf("%s %s: %d %v, want %d %s", method, path, got, out, status, code)
	}
	if status >= 400 && (out["error"] == nil || out["message"] == nil) {
		a.t.Fatalf("%s %s: error body without error/message: %v", method, path, out)
	}
	return out
}

func id(o map[string]any) string { return strconv.FormatInt(int64(o["id"].(float64)), 10) }

func TestEveryEndpoint(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		// A clock the test moves: orders are paid well within their pay
		// timeout however slow the machine, then the deadlines pass at once.
		var skew atomic.Int64
		a := newAPI(t, st, order.Config{Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
		admin, alice, bob := token(t, 1, true), token(t, 2, false), token(t, 3, false)

		a.expect("PUT", "/v1/skus/7", alice, `{"name":"Mug","price_cents":1250,"stock":5,"limit_per_user":2}`, 403, "forbidden")
		a.expect("PUT", "/v1/skus/7", "", `{"name":"Mug","price_cents":1250,"stock":5}`, 401, "unauthorized")
		k := a.expect("PUT", "/v1/skus/7", admin, `{"name":"Mug","price_cents":1250,"stock":5,"limit_per_user":2}`, 200, "")
		if k["available"] != 5.0 || k["name"] != "Mug" || k["limit_per_user"] != 2.0 {
			t.Fatalf("sku %v", k)
		}
		a.expect("GET", "/v1/skus/7", "", nil, 200, "")
		a.expect("GET", "/v1/skus/9", "", nil, 404, "not_found")
		if l := a.expect("GET", "/v1/skus", "", nil, 200, ""); len(l["skus"].([]any)) != 1 {
			t.Fatalf("skus %v", l)
		}

		o := a.expect("POST", "/v1/orders", alice, `{"sku":7,"qty":1}`, 201, "")
		if o["status"] != "pending" || o["amount_cents"] != 1250.0 || o["paid_at"] != nil || o["user_id"] != 2.0 {
			t.Fatalf("order %v", o)
		}
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", o["pay_deadline"].(string)); err != nil {
			t.Fatalf("pay_deadline %q: %v", o["pay_deadline"], err)
		}
		for _, field := range []string{"id", "user_id", "sku", "qty", "amount_cents", "status", "created_at", "pay_deadline",
			"paid_at", "cancelled_at", "shipped_at", "confirm_deadline", "completed_at", "auto_confirmed"} {
			if _, ok := o[field]; !ok {
				t.Errorf("order lacks %q", field)
			}
		}
		a.expect("POST", "/v1/orders", alice, `{"sku":7,"qty":2}`, 409, "limit_exceeded")
		a.expect("PUT", "/v1/skus/8", admin, `{"name":"Gone","price_cents":1,"stock":0}`, 200, "")
		a.expect("POST", "/v1/orders", bob, `{"sku":8,"qty":1}`, 409, "sold_out")
		a.expect("POST", "/v1/orders", bob, `{"sku":99,"qty":1}`, 404, "not_found")

		a.expect("GET", "/v1/orders/"+id(o), alice, nil, 200, "")
		a.expect("GET", "/v1/orders/"+id(o), admin, nil, 200, "")
		a.expect("GET", "/v1/orders/"+id(o), bob, nil, 404, "not_found")
		a.expect("POST", "/v1/orders/"+id(o)+"/pay", bob, nil, 404, "not_found")
		a.expect("POST", "/v1/orders/"+id(o)+"/ship", alice, nil, 403, "forbidden")
		if e := a.expect("POST", "/v1/orders/"+id(o)+"/ship", admin, nil, 409, "invalid_transition"); e["status"] != "pending" {
			t.Fatalf("ship pending: %v", e)
		}
		a.expect("POST", "/v1/orders/"+id(o)+"/pay", alice, nil, 200, "")
		if e := a.expect("POST", "/v1/orders/"+id(o)+"/pay", alice, nil, 409, "invalid_transition"); e["status"] != "paid" {
			t.Fatalf("pay twice: %v", e)
		}
		a.expect("POST", "/v1/orders/"+id(o)+"/cancel", alice, nil, 409, "invalid_transition")
		s := a.expect("POST", "/v1/orders/"+id(o)+"/ship", admin, nil, 200, "")
		if s["status"] != "shipped" || s["confirm_deadline"] == nil {
			t.Fatalf("shipped %v", s)
		}
		c := a.expect("POST", "/v1/orders/"+id(o)+"/confirm", alice, nil, 200, "")
		if c["status"] != "completed" || c["auto_confirmed"] != false {
			t.Fatalf("confirmed %v", c)
		}

		// Cancel gives stock back; an unpaid order expires on its own; a
		// shipped one is confirmed automatically.
		x := a.expect("POST", "/v1/orders", bob, `{"sku":7,"qty":2}`, 201, "")
		if k := a.expect("GET", "/v1/skus/7", "", nil, 200, ""); k["available"] != 2.0 {
			t.Fatalf("available %v", k["available"])
		}
		if x = a.expect("POST", "/v1/orders/"+id(x)+"/cancel", bob, nil, 200, ""); x["status"] != "cancelled" || x["cancelled_at"] == nil {
			t.Fatalf("cancelled %v", x)
		}
		late := a.expect("POST", "/v1/orders", bob, `{"sku":7,"qty":1}`, 201, "")
		auto := a.expect("POST", "/v1/orders", bob, `{"sku":7,"qty":1}`, 201, "")
		a.expect("POST", "/v1/orders/"+id(auto)+"/pay", bob, nil, 200, "")
		a.expect("POST", "/v1/orders/"+id(auto)+"/ship", admin, nil, 200, "")
		skew.Store(int64(25 * time.Hour)) // past both deadlines; what the daemon's sweep then does:
		if n, err := a.svc.Sweep(context.Background(), 0); err != nil || n != 2 {
			t.Fatalf("sweep moved %d (%v), want the unpaid and the shipped order", n, err)
		}
		e := a.expect("GET", "/v1/orders/"+id(late), bob, nil, 200, "")
		c = a.expect("GET", "/v1/orders/"+id(auto), bob, nil, 200, "")
		if e["status"] != "expired" || c["status"] != "completed" || c["auto_confirmed"] != true {
			t.Fatalf("not expired / auto-confirmed: %v %v", e, c)
		}
		if e := a.expect("POST", "/v1/orders/"+id(late)+"/pay", bob, nil, 409, "invalid_transition"); e["status"] != "expired" {
			t.Fatalf("pay after expiry: %v", e)
		}
		l := a.expect("GET", "/v1/orders", bob, nil, 200, "")
		list := l["orders"].([]any)
		if len(list) != 3 || id(list[0].(map[string]any)) != id(auto) {
			t.Fatalf("bob's orders, newest first: %v", l)
		}
		if k := a.expect("GET", "/v1/skus/7", "", nil, 200, ""); k["available"] != 3.0 {
			t.Fatalf("available %v, want 3 (5 - alice's - bob's auto)", k["available"])
		}
		a.expect("GET", "/healthz", "", nil, 200, "")
		if code, _ := a.do("GET", "/metrics", "", nil); code != 200 {
			t.Fatalf("/metrics: %d", code)
		}
		a.expect("GET", "/nope", "", nil, 404, "not_found")
		ordertest.CheckStock(t, st, 7, 5)
	})
}

func forge(header, claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(claims)) + "."
}

func TestBadInput(t *testing.T) {
	st := ordertest.Open(t, ordertest.SQLiteURL(t))
	a := newAPI(t, st, order.Config{})
	admin, alice := token(t, 1, true), token(t, 2, false)
	a.expect("PUT", "/v1/skus/1", admin, `{"name":"x","price_cents":1,"stock":10}`, 200, "")
	expired, _ := httpapi.IssueToken(secret, 2, false, -time.Minute)
	otherKey, _ := httpapi.IssueToken([]byte("other"), 2, true, time.Hour)
	exp := time.Now().Add(time.Hour).Unix()
	tests := []struct {
		name, method, path, tok string
		body                    any
		status                  int
		code                    string
	}{
		{"bad json", "POST", "/v1/orders", alice, `{"sku":1,`, 400, "invalid_request"},
		{"not an object", "POST", "/v1/orders", alice, `[1,2]`, 400, "invalid_request"},
		{"empty body", "POST", "/v1/orders", alice, ``, 400, "invalid_request"},
		{"unknown field", "POST", "/v1/orders", alice, `{"sku":1,"qty":1,"price":0}`, 400, "invalid_request"},
		{"wrong type", "POST", "/v1/orders", alice, `{"sku":"1","qty":1}`, 400, "invalid_request"},
		{"float qty", "POST", "/v1/orders", alice, `{"sku":1,"qty":1.5}`, 400, "invalid_request"},
		{"two objects", "POST", "/v1/orders", alice, `{"sku":1,"qty":1}{"sku":1,"qty":1}`, 400, "invalid_request"},
		{"qty 0", "POST", "/v1/orders", alice, `{"sku":1,"qty":0}`, 400, "invalid_request"},
		{"qty missing", "POST", "/v1/orders", alice, `{"sku":1}`, 400, "invalid_request"},
		{"qty negative", "POST", "/v1/orders", alice, `{"sku":1,"qty":-3}`, 400, "invalid_request"},
		{"qty absurd", "POST", "/v1/orders", alice, `{"sku":1,"qty":1000000000000}`, 400, "invalid_request"},
		{"qty overflow", "POST", "/v1/orders", alice, `{"sku":1,"qty":99999999999999999999999}`, 400, "invalid_request"},
		{"sku 0", "POST", "/v1/orders", alice, `{"sku":0,"qty":1}`, 400, "invalid_request"},
		{"huge body", "POST", "/v1/orders", alice, `{"sku":1,"qty":1,"x":"` + strings.Repeat("a", 70<<10) + `"}`, 400, "invalid_request"},
		{"id not a number", "GET", "/v1/orders/abc", alice, nil, 400, "invalid_request"},
		{"id negative", "POST", "/v1/orders/-1/pay", alice, nil, 400, "invalid_request"},
		{"id overflow", "GET", "/v1/orders/99999999999999999999", alice, nil, 400, "invalid_request"},
		{"sku not a number", "GET", "/v1/skus/x", "", nil, 400, "invalid_request"},
		{"unknown order", "GET", "/v1/orders/424242", alice, nil, 404, "not_found"},
		{"sku missing fields", "PUT", "/v1/skus/2", admin, `{"name":"x"}`, 400, "invalid_request"},
		{"sku negative stock", "PUT", "/v1/skus/2", admin, `{"name":"x","price_cents":1,"stock":-1}`, 400, "invalid_request"},
		{"sku empty name", "PUT", "/v1/skus/2", admin, `{"name":"","price_cents":1,"stock":1}`, 400, "invalid_request"},
		{"no token", "GET", "/v1/orders", "", nil, 401, "unauthorized"},
		{"garbage token", "GET", "/v1/orders", "abc.def.ghi", nil, 401, "unauthorized"},
		{"expired token", "GET", "/v1/orders", expired, nil, 401, "unauthorized"},
		{"forged signature", "GET", "/v1/orders", otherKey, nil, 401, "unauthorized"},
		{"alg none", "PUT", "/v1/skus/3", forge(`{"alg":"none","typ":"JWT"}`, fmt.Sprintf(`{"sub":"1","admin":true,"exp":%d}`, exp)), `{"name":"x","price_cents":1,"stock":1}`, 401, "unauthorized"},
		{"no exp", "GET", "/v1/orders", forge(`{"alg":"none"}`, `{"sub":"1"}`), nil, 401, "unauthorized"},
		{"sub not a number", "GET", "/v1/orders", mustSign(t, `{"sub":"alice","exp":`+strconv.FormatInt(exp, 10)+`}`), nil, 401, "unauthorized"},
		{"exp as a string", "GET", "/v1/orders", mustSign(t, `{"sub":"2","exp":"`+strconv.FormatInt(exp, 10)+`"}`), nil, 401, "unauthorized"},
		{"sub as a number", "GET", "/v1/orders", mustSign(t, `{"sub":2,"exp":`+strconv.FormatInt(exp, 10)+`}`), nil, 401, "unauthorized"},
		{"ADMIN in capitals", "PUT", "/v1/skus/3", mustSign(t, `{"sub":"2","ADMIN":true,"exp":`+strconv.FormatInt(exp, 10)+`}`), `{"name":"x","price_cents":1,"stock":1}`, 401, "unauthorized"},
		{"Admin capitalised", "PUT", "/v1/skus/3", mustSign(t, `{"sub":"2","Admin":true,"exp":`+strconv.FormatInt(exp, 10)+`}`), `{"name":"x","price_cents":1,"stock":1}`, 401, "unauthorized"},
		{"admin twice", "PUT", "/v1/skus/3", mustSign(t, `{"sub":"2","admin":false,"admin":true,"exp":`+strconv.FormatInt(exp, 10)+`}`), `{"name":"x","price_cents":1,"stock":1}`, 401, "unauthorized"},
		{"admin as a number", "PUT", "/v1/skus/3", mustSign(t, `{"sub":"2","admin":1,"exp":`+strconv.FormatInt(exp, 10)+`}`), `{"name":"x","price_cents":1,"stock":1}`, 401, "unauthorized"},
		{"pay with GET", "GET", "/v1/orders/1/pay", alice, nil, 405, "method_not_allowed"},
		{"delete a sku", "DELETE", "/v1/skus/1", admin, nil, 405, "method_not_allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.t = t
			a.expect(tt.method, tt.path, tt.tok, tt.body, tt.status, tt.code)
		})
	}
	a.t = t
	ordertest.CheckStock(t, st, 1, 10)

	// A known path with another method names the methods it takes.
	for path, want := range map[string]string{"/v1/orders/1/pay": "POST", "/v1/skus/1": "GET, HEAD, PUT", "/v1/orders": "GET, HEAD, POST"} {
		req, _ := http.NewRequest("PATCH", a.srv.URL+path, nil)
		resp, err := a.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != want {
			t.Errorf("PATCH %s: %d, Allow %q; want 405 and %q", path, resp.StatusCode, resp.Header.Get("Allow"), want)
		}
	}
	// Someone else's order and one that does not exist get the same body.
	o := a.expect("POST", "/v1/orders", alice, `{"sku":1,"qty":1}`, 201, "")
	bob := token(t, 3, false)
	_, theirs := a.do("GET", "/v1/orders/"+id(o), bob, nil)
	_, missing := a.do("GET", "/v1/orders/100001", bob, nil)
	if fmt.Sprint(theirs) != fmt.Sprint(missing) {
		t.Errorf("someone else's order answers %v, a missing one %v: the body tells which ids exist", theirs, missing)
	}
}

// mustSign signs raw claims with the test secret (HS256).
func mustSign(t testing.TB, claims string) string {
	t.Helper()
	return signHS256(secret, `{"alg":"HS256","typ":"JWT"}`, claims)
}

// The flash sale: 100 units, one per user, 2,000 buyers at once (some trying
// twice) through the real HTTP server.
func TestFlashSale(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		// Long enough that no order expires during the sale, even under -race
		// on a busy machine: the sale itself must not see stock come back.
		const payTimeout = 8 * time.Second
		a := newAPI(t, st, order.Config{PayTimeout: payTimeout})
		saleStart := time.Now()
		admin := token(t, 1, true)
		a.expect("PUT", "/v1/skus/42", admin, `{"name":"Phone","price_cents":99900,"stock":100,"limit_per_user":1}`, 200, "")

		const buyers = 2000
		type result struct {
			user   int64
			status int
			body   map[string]any
		}
		results := make(chan result, buyers+buyers/4)
		var wg sync.WaitGroup
		for u := int64(100); u < 100+buyers; u++ {
			tries := 1
			if u%4 == 0 {
				tries = 2 // a quarter of the buyers click twice
			}
			tok := token(t, u, false)
			for range tries {
				wg.Go(func() {
					s, b := a.do("POST", "/v1/orders", tok, `{"sku":42,"qty":1}`)
					results <- result{u, s, b}
				})
			}
		}
		wg.Wait()
		close(results)
		created := map[int64][]map[string]any{}
		var soldOut, limited int
		for r := range results {
			switch {
			case r.status == 201:
				created[r.user] = append(created[r.user], r.body)
			case r.status == 409 && r.body["error"] == "sold_out":
				soldOut++
			case r.status == 409 && r.body["error"] == "limit_exceeded":
				limited++
			default:
				t.Fatalf("buyer %d: %d %v", r.user, r.status, r.body)
			}
		}
		n := 0
		for u, os := range created {
			n += len(os)
			if len(os) > 1 {
				t.Fatalf("user %d got %d orders", u, len(os))
			}
		}
		if time.Since(saleStart) > payTimeout {
			t.Fatalf("the sale took %v, longer than the pay timeout: orders expired during it", time.Since(saleStart))
		}
		if n != 100 {
			t.Fatalf("%d orders created from 100 units", n)
		}
		t.Logf("created %d, sold out %d, over the limit %d", n, soldOut, limited)

		// Pay 30 of them; the other 70 expire and their stock comes back.
		paid := 0
		for u, os := range created {
			if paid == 30 {
				break
			}
			a.expect("POST", "/v1/orders/"+id(os[0])+"/pay", token(t, u, false), nil, 200, "")
			paid++
		}
		deadline := time.Now().Add(payTimeout + 20*time.Second)
		for {
			k := a.expect("GET", "/v1/skus/42", "", nil, 200, "")
			if k["available"] == 70.0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("available %v, want 70 after the unpaid orders expire", k["available"])
			}
			time.Sleep(50 * time.Millisecond)
		}
		ordertest.CheckStock(t, st, 42, 100)
		testkit.WaitFor(t, 10*time.Second, "the Redis counter at 70 as in the database (the give-back follows the commit)", func() bool {
			n, ok, err := a.counter.Available(context.Background(), 42)
			return err == nil && ok && n == 70
		})
	})
}

// An admin moves a pending order's pay deadline or a shipped order's
// confirm deadline, and its timer with it, and expires a pending order now;
// nobody else may, and no other status allows it.
func TestMoveDeadlineAndExpireNow(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		a := newAPI(t, st, order.Config{PayTimeout: time.Hour})
		rdb := redis.NewClient(&redis.Options{Addr: testkit.RedisAddr(), DB: redisDB})
		t.Cleanup(func() { rdb.Close() })
		ctx := context.Background()
		admin, alice, bob := token(t, 1, true), token(t, 2, false), token(t, 3, false)
		a.expect("PUT", "/v1/skus/7", admin, `{"name":"Mug","price_cents":100,"stock":10}`, 200, "")
		available := func() float64 { return a.expect("GET", "/v1/skus/7", "", nil, 200, "")["available"].(float64) }

		o := a.expect("POST", "/v1/orders", alice, `{"sku":7,"qty":1}`, 201, "")
		path := "/v1/orders/" + id(o)
		later := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Millisecond)
		body := fmt.Sprintf(`{"pay_deadline":%q}`, later.Format(time.RFC3339Nano))
		a.expect("POST", path+"/deadline", alice, body, 403, "forbidden")
		a.expect("POST", path+"/deadline", bob, body, 403, "forbidden")
		a.expect("POST", path+"/deadline", "", body, 401, "unauthorized")
		a.expect("POST", "/v1/orders/999999/deadline", admin, body, 404, "not_found")
		for _, bad := range []string{`{}`, `{"pay_deadline":null}`, `{"pay_deadline":"soon"}`, `{"deadline":"2026-01-01T00:00:00Z"}`,
			fmt.Sprintf(`{"pay_deadline":%q,"confirm_deadline":%q}`, later.Format(time.RFC3339), later.Format(time.RFC3339))} {
			a.expect("POST", path+"/deadline", admin, bad, 400, "invalid_request")
		}
		if e := a.expect("POST", path+"/deadline", admin, fmt.Sprintf(`{"confirm_deadline":%q}`, later.Format(time.RFC3339)), 409, "invalid_transition"); e["status"] != "pending" {
			t.Fatalf("confirm deadline of a pending order: %v", e)
		}
		got := a.expect("POST", path+"/deadline", admin, body, 200, "")
		if got["pay_deadline"] != later.Format("2006-01-02T15:04:05.000Z") || got["status"] != "pending" {
			t.Fatalf("moved: %v, want pay_deadline %s", got, later)
		}
		if ttl := rdb.PTTL(ctx, order.PayKey(int64(o["id"].(float64)))).Val(); ttl < time.Hour+59*time.Minute || ttl > 2*time.Hour {
			t.Fatalf("the timer's key has %v left, want about 2 h", ttl)
		}
		// A deadline in the past means now: the daemon expires the order.
		a.expect("POST", path+"/deadline", admin, `{"pay_deadline":"2000-01-01T00:00:00Z"}`, 200, "")
		testkit.WaitFor(t, 10*time.Second, "the order expired at its new deadline", func() bool {
			return a.expect("GET", path, admin, nil, 200, "")["status"] == "expired"
		})
		if e := a.expect("POST", path+"/deadline", admin, body, 409, "invalid_transition"); e["status"] != "expired" {
			t.Fatalf("deadline of an expired order: %v", e)
		}

		// Expire now: a pending order only, by an admin; stock comes back.
		before := available()
		p := a.expect("POST", "/v1/orders", alice, `{"sku":7,"qty":2}`, 201, "")
		a.expect("POST", "/v1/orders/"+id(p)+"/expire", alice, nil, 403, "forbidden")
		a.expect("POST", "/v1/orders/999999/expire", admin, nil, 404, "not_found")
		x := a.expect("POST", "/v1/orders/"+id(p)+"/expire", admin, nil, 200, "")
		if x["status"] != "expired" || x["cancelled_at"] == nil {
			t.Fatalf("expired now: %v", x)
		}
		if got := available(); got != before {
			t.Fatalf("available %v after expiring, want %v back", got, before)
		}
		if e := a.expect("POST", "/v1/orders/"+id(p)+"/expire", admin, nil, 409, "invalid_transition"); e["status"] != "expired" {
			t.Fatalf("expire twice: %v", e)
		}
		if n := rdb.Exists(ctx, order.PayKey(int64(p["id"].(float64)))).Val(); n != 0 {
			t.Fatal("the expired order's timer key is still set")
		}

		// A shipped order: its confirm deadline moves, not its pay deadline.
		s := a.expect("POST", "/v1/orders", alice, `{"sku":7,"qty":1}`, 201, "")
		spath := "/v1/orders/" + id(s)
		a.expect("POST", spath+"/pay", alice, nil, 200, "")
		if e := a.expect("POST", spath+"/deadline", admin, body, 409, "invalid_transition"); e["status"] != "paid" {
			t.Fatalf("pay deadline of a paid order: %v", e)
		}
		a.expect("POST", spath+"/expire", admin, nil, 409, "invalid_transition")
		a.expect("POST", spath+"/ship", admin, nil, 200, "")
		a.expect("POST", spath+"/deadline", admin, body, 409, "invalid_transition")
		got = a.expect("POST", spath+"/deadline", admin, fmt.Sprintf(`{"confirm_deadline":%q}`, later.Format(time.RFC3339Nano)), 200, "")
		if got["confirm_deadline"] != later.Format("2006-01-02T15:04:05.000Z") || got["status"] != "shipped" {
			t.Fatalf("moved: %v, want confirm_deadline %s", got, later)
		}
		if ttl := rdb.PTTL(ctx, order.ConfirmKey(int64(s["id"].(float64)))).Val(); ttl < time.Hour+59*time.Minute || ttl > 2*time.Hour {
			t.Fatalf("the confirm timer's key has %v left, want about 2 h", ttl)
		}
		a.expect("POST", spath+"/confirm", alice, nil, 200, "")
		a.expect("POST", spath+"/deadline", admin, body, 409, "invalid_transition")
	})
}
