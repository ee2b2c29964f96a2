package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/transitions"
)

//go:embed console
var consoleFiles embed.FS

type consoleOptions struct {
	statusOptions
	Addr string
}

func newConsoleCmd(g *globalOptions) *cobra.Command {
	o := &consoleOptions{statusOptions: statusOptions{globalOptions: g, Next: 10}}
	cmd := &cobra.Command{
		Use:   "console [--addr 127.0.0.1:8090] [--config FILE]",
		Short: "Serve the operator console, a web UI: overview, timers, one order, listeners",
		Long: `Serve the operator console on --addr (loopback by default: reach it from
elsewhere through an SSH tunnel, e.g. ssh -L 8090:127.0.0.1:8090 host).

It reads the database and Redis directly, with the flags of serve and listen
(--db, --redis-url, --key-prefix; --config for timers on your own tables).
Pages: Overview (refreshed every few seconds by itself), Timers (the due
index per shard, the dead set), Order (one order, its timer and its
transitions), Listeners. Without signing in the pages are read-only; an
admin token (orderd token --user ID --admin, checked with --jwt-secret) pasted
once on the sign-in page is kept in an HttpOnly, SameSite=Strict cookie and
enables the buttons (extend, expire now, re-arm), each a POST with a CSRF
token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runConsole(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Addr, "addr", "127.0.0.1:8090", "listen address of the console")
	addConfigFlag(cmd, g)
	return cmd
}

func runConsole(ctx context.Context, o *consoleOptions) error {
	c, err := newConsole(o)
	if err != nil {
		return err
	}
	defer c.close()
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return usageErrorf("--addr %q: %v", o.Addr, err)
	}
	srv := &http.Server{Handler: c.routes(), ReadHeaderTimeout: 10 * time.Second}
	o.log.Info("console listening", zap.String("addr", ln.Addr().String()), zap.Bool("sign_in", c.secret != nil))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return runtimeError(err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return runtimeError(srv.Shutdown(sctx))
}

// console serves the pages. The database side opens on the first request
// that can reach it, so that the console starts (and says what it cannot
// reach) while a server is down.
type console struct {
	o      *consoleOptions
	secret []byte // nil: nobody can sign in (no --jwt-secret), pages read-only
	tmpl   map[string]*template.Template

	mu  sync.Mutex
	d   *deps
	own []ownTimer
}

var consolePages = []string{"overview", "timers", "order", "listeners", "signin", "message"}

func newConsole(o *consoleOptions) (*console, error) {
	c := &console{o: o, tmpl: map[string]*template.Template{}}
	if o.JWTSecret != "" {
		secret, err := o.secret("it checks the admin tokens of the console")
		if err != nil {
			return nil, err
		}
		c.secret = secret
	}
	funcs := template.FuncMap{
		"ts": func(t any) string {
			switch v := t.(type) {
			case time.Time:
				if v.IsZero() {
					return "-"
				}
				return v.UTC().Format("2006-01-02 15:04:05.000Z")
			case *time.Time:
				if v == nil {
					return "-"
				}
				return v.UTC().Format("2006-01-02 15:04:05.000Z")
			}
			return fmt.Sprint(t)
		},
		"until": func(t time.Time) string { return time.Until(t).Round(time.Millisecond).String() },
		"ms":    func(v int64) string { return (time.Duration(v) * time.Millisecond).String() },
		"join":  strings.Join,
		"deref": func(b *bool) bool { return b != nil && *b },
	}
	for _, p := range consolePages {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(consoleFiles, "console/layout.html", "console/"+p+".html")
		if err != nil {
			return nil, err
		}
		c.tmpl[p] = t
	}
	return c, nil
}

func (c *console) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.d != nil {
		c.d.close()
	}
}

// deps returns the connections, opening them the first time they answer.
func (c *console) deps(ctx context.Context) (*deps, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.d != nil {
		return c.d, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var err error
	if c.ownTables() {
		c.d, c.own, err = openOwnTables(ctx, c.o.globalOptions, false)
	} else {
		c.d, err = c.o.open(ctx)
	}
	return c.d, err
}

func (c *console) ownTables() bool { return c.o.config != nil && len(c.o.config.timers) > 0 }

// reach says which of Redis and the database does not answer, if any.
func (c *console) reach(ctx context.Context, d *deps) []string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var out []string
	if err := d.rdb.Ping(ctx).Err(); err != nil {
		out = append(out, fmt.Sprintf("Redis (--redis-url %s) does not answer: %v", c.o.redis, err))
	}
	if err := d.store.Ping(ctx); err != nil {
		out = append(out, fmt.Sprintf("The database (--db) does not answer: %v", err))
	}
	return out
}

const consoleCookie = "orderd_console"

// session is who is looking: signed in (an admin token in the cookie) or not.
type session struct {
	SignedIn bool
	CSRF     string
	CanSign  bool // the console has a secret to check tokens with
}

func (c *console) session(r *http.Request) session {
	s := session{CanSign: c.secret != nil}
	ck, err := r.Cookie(consoleCookie)
	if err != nil || c.secret == nil || httpapi.CheckAdminToken(c.secret, ck.Value) != nil {
		return s
	}
	s.SignedIn, s.CSRF = true, c.csrf(ck.Value)
	return s
}

// csrf is the token every form of a session carries: an HMAC of the
// session's admin token, which a page of another site cannot read.
func (c *console) csrf(token string) string {
	m := hmac.New(sha256.New, c.secret)
	m.Write([]byte("orderd console csrf\x00" + token))
	return hex.EncodeToString(m.Sum(nil))
}

// page is what every page's template gets.
type page struct {
	Title       string
	Nav         string
	Session     session
	Unreachable []string // Redis or the database, saying which
	Error       string
	Notice      string
	Data        any
	Live        bool // the overview's live part alone, for its refresh
}

func (c *console) render(w http.ResponseWriter, name string, status int, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'none'")
	if len(p.Unreachable) > 0 && status == http.StatusOK {
		status = http.StatusServiceUnavailable
	}
	w.WriteHeader(status)
	tmpl := "layout.html"
	if p.Live {
		tmpl = "live"
	}
	if err := c.tmpl[name].ExecuteTemplate(w, tmpl, p); err != nil {
		c.o.log.Warn("console: render", zap.String("page", name), zap.Error(err))
	}
}

func (c *console) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("GET /timers", c.timers)
	mux.HandleFunc("GET /listeners", c.listeners)
	mux.HandleFunc("GET /orders", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimSpace(r.URL.Query().Get("id"))
		http.Redirect(w, r, "/orders/"+url.PathEscape(id), http.StatusSeeOther)
	})
	mux.HandleFunc("GET /orders/{id}", c.order)
	mux.HandleFunc("GET /signin", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, "signin", http.StatusOK, page{Title: "Sign in", Session: c.session(r)})
	})
	mux.HandleFunc("POST /signin", c.signIn)
	mux.HandleFunc("POST /signout", c.action(func(w http.ResponseWriter, r *http.Request, _ *deps) (string, error) {
		http.SetCookie(w, &http.Cookie{Name: consoleCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		return "/", nil
	}))
	mux.HandleFunc("POST /orders/{id}/extend", c.action(c.extend))
	mux.HandleFunc("POST /orders/{id}/expire", c.action(c.expire))
	mux.HandleFunc("POST /timers/rearm", c.action(c.rearm))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, "message", http.StatusNotFound, page{Title: "Not found", Session: c.session(r), Error: "No such page."})
	})
	return mux
}

// overviewData is the overview: the status report of the built-in timers or
// of a file's own, and the lateness of recent transitions.
type overviewData struct {
	Builtin  *statusReport
	Own      *ownTablesReport
	Lateness []latenessRow
	At       time.Time
}

type latenessRow struct {
	What     string
	N        int
	P50, P99 time.Duration
}

func (c *console) overview(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Overview", Nav: "overview", Session: c.session(r)}
	p.Live = r.URL.Query().Get("part") == "live"
	d, ok := c.reachable(r.Context(), &p)
	if !ok {
		c.render(w, "overview", http.StatusServiceUnavailable, p)
		return
	}
	data := overviewData{At: time.Now().UTC()}
	if c.ownTables() {
		rep, err := buildOwnTablesReport(r.Context(), &c.o.statusOptions, d, c.own)
		if err != nil {
			p.Error = err.Error()
		}
		data.Own = &rep
	} else {
		rep, err := buildStatus(r.Context(), &c.o.statusOptions, d)
		if err != nil {
			p.Error = err.Error()
		}
		data.Builtin = &rep
		if data.Lateness, err = recentLateness(r.Context(), d, 10*time.Minute); err != nil && p.Error == "" {
			p.Error = err.Error()
		}
	}
	p.Data = data
	c.render(w, "overview", http.StatusOK, p)
}

// reachable returns the connections, or fills p with what cannot be reached.
func (c *console) reachable(ctx context.Context, p *page) (*deps, bool) {
	d, err := c.deps(ctx)
	if err != nil {
		p.Unreachable = []string{err.Error()}
		return nil, false
	}
	if p.Unreachable = c.reach(ctx, d); len(p.Unreachable) > 0 {
		return nil, false
	}
	return d, true
}

// recentLateness reads, from the database, how late the transitions a
// deadline made in the last window were: expiries (cancelled_at after the
// pay deadline) and automatic confirmations.
func recentLateness(ctx context.Context, d *deps, window time.Duration) ([]latenessRow, error) {
	since := time.Now().Add(-window).UnixMilli()
	var out []latenessRow
	for _, q := range []struct{ what, query string }{
		{"expired (pay timeout)", `SELECT cancelled_at - pay_deadline FROM orders WHERE status = 'expired' AND cancelled_at >= ? LIMIT 100000`},
		{"completed (auto-confirmed)", `SELECT completed_at - confirm_deadline FROM orders WHERE status = 'completed' AND auto_confirmed = TRUE AND completed_at >= ? LIMIT 100000`},
	} {
		var ms []int64
		if err := d.store.DB().SelectContext(ctx, &ms, d.store.DB().Rebind(q.query), since); err != nil {
			return nil, fmt.Errorf("read the lateness of recent transitions: %w", err)
		}
		row := latenessRow{What: q.what, N: len(ms)}
		if len(ms) > 0 {
			slices.Sort(ms)
			at := func(f float64) time.Duration { return time.Duration(ms[int(f*float64(len(ms)-1))]) * time.Millisecond }
			row.P50, row.P99 = at(.5), at(.99)
		}
		out = append(out, row)
	}
	return out, nil
}

// timersData is the due index: per shard, its next timers; and the dead set.
type timersData struct {
	Index indexStatus
	Next  map[string][]expiry.TimerInfo
	Dead  []expiry.TimerInfo
}

func (c *console) timers(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Timers", Nav: "timers", Session: c.session(r), Notice: r.URL.Query().Get("notice")}
	d, ok := c.reachable(r.Context(), &p)
	if !ok {
		c.render(w, "timers", http.StatusServiceUnavailable, p)
		return
	}
	st, _, err := readRedisState(r.Context(), d.rdb, d.sched)
	data := timersData{Index: st.Index, Next: map[string][]expiry.TimerInfo{}}
	if err == nil {
		for i, sh := range d.sched.Shards() {
			var ts []expiry.TimerInfo
			if ts, err = d.sched.Timers(r.Context(), i, time.Time{}, time.Time{}, 3); err != nil {
				break
			}
			data.Next[sh] = ts
		}
	}
	if err == nil {
		data.Dead, err = d.sched.Dead(r.Context(), 100)
	}
	if err != nil {
		p.Error = err.Error()
	}
	p.Data = data
	c.render(w, "timers", http.StatusOK, p)
}

func (c *console) listeners(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Listeners", Nav: "listeners", Session: c.session(r)}
	d, ok := c.reachable(r.Context(), &p)
	if !ok {
		c.render(w, "listeners", http.StatusServiceUnavailable, p)
		return
	}
	st, _, err := readRedisState(r.Context(), d.rdb, d.sched)
	if err != nil {
		p.Error = err.Error()
	}
	relay, _ := d.rdb.Get(r.Context(), c.o.keys().TransitionsRelay()).Result()
	relay, _, _ = strings.Cut(relay, "#")
	p.Data = struct {
		Index indexStatus
		Relay string
	}{st.Index, relay}
	c.render(w, "listeners", http.StatusOK, p)
}

// orderData is one order: its row and timer, and its transitions.
type orderData struct {
	ID          int64
	Order       order.Order
	View        orderView
	Transitions []order.Change
	Scanned     int64 // stream entries read to find them (the newest)
}

// streamScan bounds the stream entries the order page reads, newest first.
const streamScan = 50000

func (c *console) order(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Order", Nav: "order", Session: c.session(r), Notice: r.URL.Query().Get("notice")}
	id, err := pathOrderID(r)
	if err != nil {
		p.Error = err.Error()
		c.render(w, "order", http.StatusBadRequest, p)
		return
	}
	p.Title = fmt.Sprintf("Order %d", id)
	if c.ownTables() {
		p.Error = "The timers run on your own tables (--config): their records are yours to look up; the Timers page shows their timers."
		c.render(w, "order", http.StatusNotFound, p)
		return
	}
	d, ok := c.reachable(r.Context(), &p)
	if !ok {
		c.render(w, "order", http.StatusServiceUnavailable, p)
		return
	}
	svc := order.NewService(d.store, d.counter, d.sched, c.o.serviceConfig(nil))
	oo := &ordersOptions{globalOptions: c.o.globalOptions}
	view, err := oo.view(r.Context(), svc, d, id)
	if err != nil {
		status := http.StatusOK
		if order.ErrorCode(err) == order.CodeNotFound {
			p.Error, status = fmt.Sprintf("No order %d.", id), http.StatusNotFound
		} else {
			p.Error = err.Error()
		}
		c.render(w, "order", status, p)
		return
	}
	data := orderData{ID: id, Order: view.order, View: view}
	msgs, err := d.rdb.XRevRangeN(r.Context(), c.o.keys().Transitions(), "+", "-", streamScan).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		p.Error = "read the transitions stream: " + err.Error()
	}
	data.Scanned = int64(len(msgs))
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Values["order_id"] != strconv.FormatInt(id, 10) {
			continue
		}
		if ch, err := transitions.Decode(msgs[i].Values); err == nil {
			data.Transitions = append(data.Transitions, ch)
		}
	}
	p.Data = data
	c.render(w, "order", http.StatusOK, p)
}

// action wraps a button's POST: signed in, with the session's CSRF token;
// it redirects to the page f returns (with a notice) or shows f's error.
func (c *console) action(f func(w http.ResponseWriter, r *http.Request, d *deps) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.session(r)
		p := page{Title: "Not allowed", Session: s}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			p.Error = "Bad form: " + err.Error()
			c.render(w, "message", http.StatusBadRequest, p)
			return
		}
		if !s.SignedIn {
			p.Error = "Sign in with an admin token first: without one the console is read-only."
			c.render(w, "message", http.StatusForbidden, p)
			return
		}
		if !hmac.Equal([]byte(r.PostForm.Get("csrf")), []byte(s.CSRF)) {
			p.Error = "This form is stale or did not come from this console (CSRF token): reload the page and try again."
			c.render(w, "message", http.StatusForbidden, p)
			return
		}
		d, ok := c.reachable(r.Context(), &p)
		if !ok {
			c.render(w, "message", http.StatusServiceUnavailable, p)
			return
		}
		to, err := f(w, r, d)
		if err != nil {
			p.Title, p.Error = "Not done", err.Error()
			status := http.StatusInternalServerError
			switch order.ErrorCode(err) {
			case order.CodeNotFound:
				status = http.StatusNotFound
			case order.CodeInvalidTransition:
				status = http.StatusConflict
			case order.CodeInvalidRequest:
				status = http.StatusBadRequest
			}
			c.render(w, "message", status, p)
			return
		}
		http.Redirect(w, r, to, http.StatusSeeOther)
	}
}

func (c *console) signIn(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Sign in", Session: c.session(r)}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if c.secret == nil {
		p.Error = "This console was started without --jwt-secret: it cannot check tokens, and stays read-only."
		c.render(w, "signin", http.StatusForbidden, p)
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if err := httpapi.CheckAdminToken(c.secret, tok); err != nil {
		p.Error = "Not signed in: " + err.Error()
		c.render(w, "signin", http.StatusUnauthorized, p)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: consoleCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// pathOrderID is the order id of the request's path.
func pathOrderID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, order.Errorf(order.CodeInvalidRequest, "%q is not an order id (a positive integer)", r.PathValue("id"))
	}
	return id, nil
}

func orderPath(id int64, notice string) string {
	return fmt.Sprintf("/orders/%d?notice=%s", id, url.QueryEscape(notice))
}

func (c *console) extend(w http.ResponseWriter, r *http.Request, d *deps) (string, error) {
	id, err := pathOrderID(r)
	if err != nil {
		return "", err
	}
	by, err := time.ParseDuration(strings.TrimSpace(r.PostForm.Get("by")))
	if err != nil {
		return "", order.Errorf(order.CodeInvalidRequest, "%q is not a duration (e.g. 10m, 1h30m, -5m)", r.PostForm.Get("by"))
	}
	svc := order.NewService(d.store, d.counter, d.sched, c.o.serviceConfig(nil))
	oo := &ordersOptions{globalOptions: c.o.globalOptions, By: by}
	if err := oo.extend(r.Context(), svc, id); err != nil {
		return "", err
	}
	c.o.log.Info("console: deadline moved", zap.Int64("order", id), zap.Duration("by", by))
	return orderPath(id, "Deadline moved by "+by.String()+"."), nil
}

func (c *console) expire(w http.ResponseWriter, r *http.Request, d *deps) (string, error) {
	id, err := pathOrderID(r)
	if err != nil {
		return "", err
	}
	cfg := c.o.serviceConfig(nil)
	cfg.GiveBacks = d.giveBacks
	svc := order.NewService(d.store, d.counter, d.sched, cfg)
	if _, err := svc.ExpireNow(r.Context(), id); err != nil {
		return "", err
	}
	c.o.log.Info("console: order expired", zap.Int64("order", id))
	return orderPath(id, "Expired now; its stock is back."), nil
}

func (c *console) rearm(w http.ResponseWriter, r *http.Request, d *deps) (string, error) {
	key := r.PostForm.Get("key")
	if err := d.sched.Rearm(r.Context(), key); err != nil {
		if errors.Is(err, expiry.ErrNotDead) {
			return "", order.Errorf(order.CodeInvalidTransition, "%s is not in the dead set (re-armed already?)", key)
		}
		return "", err
	}
	c.o.log.Info("console: timer re-armed", zap.String("key", key))
	back := r.PostForm.Get("back")
	if !strings.HasPrefix(back, "/") || strings.HasPrefix(back, "//") {
		back = "/timers"
	}
	sep := "?"
	if strings.Contains(back, "?") {
		sep = "&"
	}
	return back + sep + "notice=" + url.QueryEscape("Re-armed "+key+": it is due now."), nil
}
