package main_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/stock"
)

// browser starts Debian's chromium, headless, driven by chromedp; the test
// fails without it (contrib/dev/test.sh installs it).
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("no chromium: install Debian's chromium (contrib/dev/test.sh does)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 1000), chromedp.Flag("disable-gpu", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	ctx, cancel := context.WithTimeout(bctx, testkit.Scale(3*time.Minute))
	t.Cleanup(func() { cancel(); cancelBrowser(); cancelAlloc() })
	return ctx
}

// run runs browser actions, failing the test on an error.
func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// get runs one browser action that reads a value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// screenshot writes the page as PNG under the test's temp dir, and under
// ORDERD_CONSOLE_SCREENSHOTS when set (how docs/console-overview.png is made).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png := get(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	dirs := []string{t.TempDir()}
	if d := os.Getenv("ORDERD_CONSOLE_SCREENSHOTS"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshot %s: %d bytes", name, len(png))
}

// The console in a real browser: the overview's counts, read-only pages
// without a token, signing in, finding an order, extending it (its new
// deadline and TTL shown), expiring another, and the overview's counts
// moving by themselves as the daemon expires orders; the timers and
// listeners pages. A screenshot of each page goes under the test's temp dir.
func TestConsoleInABrowser(t *testing.T) {
	ctx := browser(t)
	rdb := testkit.Redis(t, redisDB)
	dbURL := ordertest.MySQLURL(t)
	keys := order.Keys{Prefix: "console:"}
	env := []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB), "ORDERD_DB=" + dbURL,
		"ORDERD_KEY_PREFIX=" + keys.Prefix, "ORDERD_JWT_SECRET=" + e2eSecret, "ORDERD_LOG_FORMAT=json"}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	metrics, addr := freeAddr(t), freeAddr(t)
	start(t, env, "listen", "--metrics-addr", metrics)
	start(t, env, "console", "--addr", addr)
	waitHTTP(t, "http://"+metrics+"/healthz")
	waitHTTP(t, "http://"+addr+"/")
	base := "http://" + addr

	st := ordertest.Open(t, dbURL)
	st.SetOutbox(true) // as serve's: the creations reach the transitions stream
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: keys.Prefix, Index: keys.DueIndex()})
	counter := stock.NewCounter(rdb, keys.Stock())
	svc := order.NewService(st, counter, sched, order.Config{Keys: keys, PayTimeout: time.Hour})
	bg := context.Background()
	if _, err := svc.PutSKU(bg, order.SKU{SKU: 1, Name: "Mug", PriceCents: 1200, Available: 100}); err != nil {
		t.Fatal(err)
	}
	var held []order.Order
	for user := range int64(2) {
		o, err := svc.Create(bg, user+2, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, o)
	}
	a, b := strconv.FormatInt(held[0].ID, 10), strconv.FormatInt(held[1].ID, 10)

	text := func(sel string) string {
		t.Helper()
		// The overview's live part is replaced every 3 s: a read that meets
		// its node just gone reads again.
		for range 3 {
			if s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel))); err == nil {
				return strings.TrimSpace(s)
			}
		}
		return strings.TrimSpace(get(t, ctx, "read "+sel, chromedp.Text(chromedp.CSS(sel))))
	}
	count := func(sel string) int {
		t.Helper()
		return len(get(t, ctx, "count "+sel, chromedp.Nodes(chromedp.CSSAll(sel), chromedp.AtLeast(0))))
	}
	ttl := func() time.Duration {
		t.Helper()
		res := get(t, ctx, "read the TTL", chromedp.AttributeValue(chromedp.CSS("#timer-ttl"), "data-ms"))
		ms, err := strconv.ParseInt(res.Value, 10, 64)
		if !res.Exists || err != nil {
			t.Fatalf("#timer-ttl data-ms %q", res.Value)
		}
		return time.Duration(ms) * time.Millisecond
	}

	// The overview, before signing in: counts, read-only.
	run(t, ctx, "open the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#count-pending")))
	if got := text("#count-pending"); got != "2" {
		t.Fatalf("overview: %s pending, want 2", got)
	}
	if got := text("#events"); got != "on" {
		t.Fatalf("overview: expired-key events %q, want on", got)
	}
	testkit.WaitFor(t, 10*time.Second, "the overview showing the listener's start-up sweep, which moved nothing", func() bool {
		return strings.Contains(text("#last-sweep"), "moved 0")
	})
	if count("#signin-link") != 1 || count("#signout") != 0 {
		t.Fatal("overview: not read-only before signing in")
	}
	run(t, ctx, "open an order, read-only", chromedp.Navigate(base+"/orders/"+a), chromedp.WaitVisible(chromedp.CSS("#order-status")))
	if count("#extend")+count("#expire") != 0 {
		t.Fatal("an order's buttons are shown without signing in")
	}

	// Signing in with an admin token.
	_, admin := runCmd(t, env, "token", "--user", "1", "--admin")
	run(t, ctx, "sign in", chromedp.Navigate(base+"/signin"), chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), strings.TrimSpace(admin)), chromedp.Click(chromedp.CSS("#signin-go")),
		chromedp.WaitVisible(chromedp.CSS("#signout")))

	// Find an order, extend it: the new deadline and TTL are shown.
	run(t, ctx, "find an order", chromedp.SetValue(chromedp.CSS("#search-id"), a), chromedp.Click(chromedp.CSS("#search-go")),
		chromedp.WaitVisible(chromedp.CSS("#extend")))
	if got := text("#order-status"); got != "pending" {
		t.Fatalf("order %s: %s, want pending", a, got)
	}
	before := ttl()
	if before < 59*time.Minute || before > time.Hour {
		t.Fatalf("order %s: TTL %v, want about 1 h", a, before)
	}
	run(t, ctx, "extend it by 30m", chromedp.SetValue(chromedp.CSS("#extend-by"), "30m"), chromedp.Click(chromedp.CSS("#extend")),
		chromedp.WaitVisible(chromedp.CSS("#notice")))
	want := held[0].PayDeadline.Add(30 * time.Minute).UTC().Format("2006-01-02 15:04:05.000Z")
	if got := text("#pay-deadline"); got != want {
		t.Fatalf("pay deadline after extending: %s, want %s", got, want)
	}
	if after := ttl(); after < before+29*time.Minute {
		t.Fatalf("TTL %v after extending by 30m (was %v)", after, before)
	}
	screenshot(t, ctx, "order.png")
	testkit.WaitFor(t, 10*time.Second, "the order page listing its creation and its moved deadline from the stream", func() bool {
		run(t, ctx, "reload the order", chromedp.Navigate(base+"/orders/"+a), chromedp.WaitVisible(chromedp.CSS("#order-status")))
		return count("tr.transition") == 2
	})

	// Expire another now.
	run(t, ctx, "expire another", chromedp.Navigate(base+"/orders/"+b), chromedp.WaitVisible(chromedp.CSS("#expire")),
		chromedp.Click(chromedp.CSS("#expire")), chromedp.WaitVisible(chromedp.CSS("#notice")))
	if got := text("#order-status"); got != "expired" {
		t.Fatalf("order %s after expire now: %s", b, got)
	}
	if k, err := st.GetSKU(bg, 1); err != nil || k.Available != 99 {
		t.Fatalf("available %d (%v) after expiring one of two, want 99", k.Available, err)
	}

	// The overview's counts move by themselves as the daemon expires orders.
	run(t, ctx, "open the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#count-expired")))
	get(t, ctx, "mark the page", chromedp.Evaluate[bool](`window.stillThisPage = true`))
	if got := text("#count-expired"); got != "1" {
		t.Fatalf("overview: %s expired, want 1", got)
	}
	short := order.NewService(st, counter, sched, order.Config{Keys: keys, PayTimeout: 2 * time.Second})
	for user := range int64(3) {
		if _, err := short.Create(bg, user+10, 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 30*time.Second, "the overview showing 4 expired without a reload", func() bool {
		// The live part is replaced every 3 s: a read may meet the node
		// just gone, and simply reads again.
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#count-expired")))
		return err == nil && strings.TrimSpace(s) == "4"
	})
	if !get(t, ctx, "check the page was not reloaded", chromedp.Evaluate[bool](`window.stillThisPage === true`)) {
		t.Fatal("the overview was reloaded: its counts must move in place")
	}
	screenshot(t, ctx, "overview.png")

	// Timers and listeners.
	run(t, ctx, "open the timers", chromedp.Navigate(base+"/timers"), chromedp.WaitVisible(chromedp.CSS("#shards")))
	if n := count("tr[data-shard]"); n != 16 {
		t.Fatalf("the timers page shows %d shards, want 16", n)
	}
	screenshot(t, ctx, "timers.png")
	run(t, ctx, "open the listeners", chromedp.Navigate(base+"/listeners"), chromedp.WaitVisible(chromedp.CSS("tr.listener")))
	if n := count("tr.listener"); n != 1 {
		t.Fatalf("the listeners page shows %d listeners, want 1", n)
	}
	screenshot(t, ctx, "listeners.png")

	// Signed out, the buttons go.
	run(t, ctx, "sign out", chromedp.Click(chromedp.CSS("#signout")), chromedp.WaitVisible(chromedp.CSS("#signin-link")),
		chromedp.Navigate(base+"/orders/"+a), chromedp.WaitVisible(chromedp.CSS("#order-status")))
	if count("#extend") != 0 {
		t.Fatal("the buttons are still there after signing out")
	}
}

// A console that cannot reach Redis or the database says which, on every
// page, with 503; a button's POST without a session or with a wrong CSRF
// token is refused.
func TestConsoleSaysWhatItCannotReach(t *testing.T) {
	testkit.Redis(t, redisDB)
	dbURL := ordertest.MySQLURL(t)
	good := []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB), "ORDERD_DB=" + dbURL,
		"ORDERD_JWT_SECRET=" + e2eSecret, "ORDERD_LOG_FORMAT=json"}
	if code, out := runCmd(t, good, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	for name, tt := range map[string]struct {
		env  []string
		says string
	}{
		"redis":    {[]string{"ORDERD_REDIS_URL=redis://127.0.0.1:1/0"}, "--redis-url"},
		"database": {[]string{"ORDERD_DB=mysql://orderd:orderd@127.0.0.1:1/orderd"}, "--db"},
	} {
		t.Run(name, func(t *testing.T) {
			addr := freeAddr(t)
			start(t, append(append([]string{}, good...), tt.env...), "console", "--addr", addr)
			testkit.WaitFor(t, 10*time.Second, "the console answering", func() bool {
				resp, err := http.Get("http://" + addr + "/")
				if err == nil {
					resp.Body.Close()
				}
				return err == nil
			})
			for _, path := range []string{"/", "/?part=live", "/timers", "/listeners", "/orders/1"} {
				resp, err := http.Get("http://" + addr + path)
				if err != nil {
					t.Fatal(err)
				}
				var b strings.Builder
				_, _ = io.Copy(&b, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(b.String(), `data-role="unreachable"`) || !strings.Contains(b.String(), tt.says) {
					t.Fatalf("GET %s with %s down: %d, want 503 naming %s:\n%s", path, name, resp.StatusCode, tt.says, b.String())
				}
			}
		})
	}
	addr := freeAddr(t)
	start(t, good, "console", "--addr", addr)
	waitHTTP(t, "http://"+addr+"/")
	post := func(c *http.Client, path string, form url.Values) int {
		t.Helper()
		resp, err := c.PostForm("http://"+addr+path, form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(http.DefaultClient, "/orders/1/expire", url.Values{"csrf": {"x"}}); code != http.StatusForbidden {
		t.Fatalf("a button's POST without a session: %d, want 403", code)
	}
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	_, user := runCmd(t, good, "token", "--user", "2")
	if code := post(c, "/signin", url.Values{"token": {strings.TrimSpace(user)}}); code != http.StatusUnauthorized {
		t.Fatalf("signing in with a user's token: %d, want 401", code)
	}
	_, admin := runCmd(t, good, "token", "--user", "1", "--admin")
	if code := post(c, "/signin", url.Values{"token": {strings.TrimSpace(admin)}}); code != http.StatusOK { // redirected to the overview
		t.Fatalf("signing in with an admin token: %d", code)
	}
	if code := post(c, "/orders/1/expire", url.Values{"csrf": {"forged"}}); code != http.StatusForbidden {
		t.Fatalf("a button's POST with a wrong CSRF token: %d, want 403", code)
	}
}
