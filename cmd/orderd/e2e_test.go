package main_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order/ordertest"
)

const redisDB = 5 // this package's Redis database

// e2eSecret is the tests' --jwt-secret: 32 bytes, the shortest taken.
const e2eSecret = "e2e-secret-of-thirty-two-bytes!!"

var binary string // built once by TestMain

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "orderd-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "orderd")
	// Built with the race detector, unless ORDERD_E2E_RACE=0: a run for
	// figures (BENCHMARKS.md) wants the binary as shipped.
	args := []string{"build", "-race", "-o", binary, "."}
	if os.Getenv("ORDERD_E2E_RACE") == "0" {
		args = slices.Delete(args, 1, 2)
	}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running orderd.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	cmd.Stdout = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("orderd %s output:\n%s", args[0], p.stderr)
		}
	})
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("orderd did not stop within 30 s of SIGTERM")
	}
	return p.cmd.ProcessState.ExitCode()
}

// runCmd runs orderd to completion and returns its exit code and output.
func runCmd(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered 200 (last: %v)", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type client struct {
	t    *testing.T
	base string
	http *http.Client
}

func (c *client) call(method, path, tok, body string) (int, map[string]any) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		c.t.Fatalf("%s %s: %d, body not JSON: %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func (c *client) must(method, path, tok, body string, status int, code string) map[string]any {
	c.t.Helper()
	got, out := c.call(method, path, tok, body)
	if got != status || (code != "" && out["error"] != code) {
		c.t.Fatalf("%s %s: %d %v, want %d %s", method, path, got, out, status, code)
	}
	return out
}

func oid(o map[string]any) string { return strconv.FormatInt(int64(o["id"].(float64)), 10) }

// TestBinaryEndToEnd runs the built orderd (migrate, serve, listen) against
// real Redis and MariaDB and walks the HTTP API.
func TestBinaryEndToEnd(t *testing.T) {
	testkit.Redis(t, redisDB) // empties this package's database
	env := []string{
		"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB),
		"ORDERD_DB=" + ordertest.MySQLURL(t),
		"ORDERD_JWT_SECRET=" + e2eSecret,
		"ORDERD_PAY_TIMEOUT=6s",
		"ORDERD_CONFIRM_TIMEOUT=1500ms",
		"ORDERD_SWEEP_INTERVAL=1s",
		"ORDERD_LOG_FORMAT=json",
	}
	// serve refuses to run on an old schema; migrate is idempotent.
	apiAddr, metricsAddr := freeAddr(t), freeAddr(t)
	if code, out := runCmd(t, env, "serve", "--addr", apiAddr); code != 2 || !strings.Contains(out, "orderd migrate") {
		t.Fatalf("serve before migrate: exit %d %s", code, out)
	}
	if code, out := runCmd(t, env, "migrate", "status"); code != 0 || !strings.Contains(out, "schema version 0 of 5: 5 migration(s) to apply") {
		t.Fatalf("migrate status before migrate: exit %d %s", code, out)
	}
	for range 2 {
		if code, out := runCmd(t, env, "migrate"); code != 0 {
			t.Fatalf("migrate: exit %d %s", code, out)
		}
	}
	if code, out := runCmd(t, env, "migrate", "status"); code != 0 || !strings.Contains(out, "schema version 5: up to date") {
		t.Fatalf("migrate status: exit %d %s", code, out)
	}
	serve := start(t, env, "serve", "--addr", apiAddr)
	listen := start(t, env, "listen", "--metrics-addr", metricsAddr)
	waitHTTP(t, "http://"+apiAddr+"/healthz")
	waitHTTP(t, "http://"+metricsAddr+"/healthz")

	tok := func(user int, admin bool) string {
		args := []string{"token", "--user", strconv.Itoa(user)}
		if admin {
			args = append(args, "--admin")
		}
		code, out := runCmd(t, env, args...)
		if code != 0 {
			t.Fatalf("token: exit %d %s", code, out)
		}
		return strings.TrimSpace(out)
	}
	admin, alice, bob := tok(1, true), tok(2, false), tok(3, false)
	c := &client{t: t, base: "http://" + apiAddr, http: &http.Client{
		Timeout: 30 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 128, MaxIdleConnsPerHost: 128}}}

	// SKUs.
	c.must("PUT", "/v1/skus/1", "", `{"name":"Mug","price_cents":900,"stock":10}`, 401, "unauthorized")
	c.must("PUT", "/v1/skus/1", alice, `{"name":"Mug","price_cents":900,"stock":10}`, 403, "forbidden")
	c.must("PUT", "/v1/skus/1", admin, `{"name":"Mug","price_cents":900,"stock":10,"limit_per_user":0}`, 200, "")
	c.must("PUT", "/v1/skus/1", admin, `{"name":"Mug","price_cents":900,"stock":10,"color":"red"}`, 400, "invalid_request")
	c.must("GET", "/v1/skus/1", "", "", 200, "")
	c.must("GET", "/v1/skus/2", "", "", 404, "not_found")
	c.must("GET", "/v1/skus", "", "", 200, "")

	// An order that expires, one that is cancelled, one confirmed by hand,
	// one confirmed automatically.
	unpaid := c.must("POST", "/v1/orders", alice, `{"sku":1,"qty":2}`, 201, "")
	cancelled := c.must("POST", "/v1/orders", alice, `{"sku":1,"qty":1}`, 201, "")
	manual := c.must("POST", "/v1/orders", bob, `{"sku":1,"qty":1}`, 201, "")
	auto := c.must("POST", "/v1/orders", bob, `{"sku":1,"qty":1}`, 201, "")
	c.must("POST", "/v1/orders", bob, `{"sku":1,"qty":0}`, 400, "invalid_request")
	c.must("POST", "/v1/orders", bob, `{"sku":1,"qty":50}`, 409, "sold_out")
	c.must("GET", "/v1/orders/"+oid(unpaid), bob, "", 404, "not_found")
	c.must("GET", "/v1/orders/"+oid(unpaid), admin, "", 200, "")
	c.must("POST", "/v1/orders/"+oid(cancelled)+"/cancel", alice, "", 200, "")
	for _, o := range []map[string]any{manual, auto} {
		c.must("POST", "/v1/orders/"+oid(o)+"/pay", bob, "", 200, "")
		c.must("POST", "/v1/orders/"+oid(o)+"/ship", bob, "", 403, "forbidden")
		if s := c.must("POST", "/v1/orders/"+oid(o)+"/ship", admin, "", 200, ""); s["confirm_deadline"] == nil {
			t.Fatalf("shipped without confirm_deadline: %v", s)
		}
	}
	c.must("POST", "/v1/orders/"+oid(manual)+"/confirm", bob, "", 200, "")
	c.must("POST", "/v1/orders/"+oid(manual)+"/confirm", bob, "", 409, "invalid_transition")
	if l := c.must("GET", "/v1/orders", bob, "", 200, ""); len(l["orders"].([]any)) != 2 {
		t.Fatalf("bob's orders: %v", l)
	}

	// The flash sale through the real binaries: 100 units, one per user,
	// 2,000 buyers, a quarter of them clicking twice.
	c.must("PUT", "/v1/skus/9", admin, `{"name":"Phone","price_cents":99900,"stock":100,"limit_per_user":1}`, 200, "")
	type res struct {
		user, status int
		body         map[string]any
	}
	results := make(chan res, 2500)
	var wg sync.WaitGroup
	for u := 1000; u < 3000; u++ {
		tk := signFor(t, u)
		clicks := 1 + boolInt(u%4 == 0)
		for range clicks {
			wg.Go(func() {
				s, b := c.call("POST", "/v1/orders", tk, `{"sku":9,"qty":1}`)
				results <- res{u, s, b}
			})
		}
	}
	wg.Wait()
	close(results)
	won := map[int]map[string]any{}
	for r := range results {
		switch {
		case r.status == 201:
			if won[r.user] != nil {
				t.Fatalf("user %d got two orders", r.user)
			}
			won[r.user] = r.body
		case r.status == 409 && (r.body["error"] == "sold_out" || r.body["error"] == "limit_exceeded"):
		default:
			t.Fatalf("flash sale: %d %v", r.status, r.body)
		}
	}
	if len(won) != 100 {
		t.Fatalf("%d orders from 100 units", len(won))
	}
	paid := 0
	for u, o := range won {
		if paid == 25 {
			break
		}
		c.must("POST", "/v1/orders/"+oid(o)+"/pay", signFor(t, u), "", 200, "")
		paid++
	}

	// Wait for the daemon: the unpaid orders expire, the shipped one is
	// confirmed automatically, and the stock comes back.
	deadline := time.Now().Add(30 * time.Second)
	for {
		u := c.must("GET", "/v1/orders/"+oid(unpaid), alice, "", 200, "")
		a := c.must("GET", "/v1/orders/"+oid(auto), bob, "", 200, "")
		k9 := c.must("GET", "/v1/skus/9", "", "", 200, "")
		if u["status"] == "expired" && a["status"] == "completed" && a["auto_confirmed"] == true && k9["available"] == 75.0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not act: unpaid %v, auto %v, sku 9 %v", u["status"], a["status"], k9["available"])
		}
		time.Sleep(100 * time.Millisecond)
	}
	if e := c.must("POST", "/v1/orders/"+oid(unpaid)+"/pay", alice, "", 409, "invalid_transition"); e["status"] != "expired" {
		t.Fatalf("pay after expiry: %v", e)
	}
	if k := c.must("GET", "/v1/skus/1", "", "", 200, ""); k["available"] != 8.0 {
		t.Fatalf("sku 1 available %v, want 8", k["available"])
	}

	// Metrics on both.
	for _, u := range []string{"http://" + apiAddr + "/metrics", "http://" + metricsAddr + "/metrics"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"orderd_", "go_goroutines"} {
			if !strings.Contains(string(body), want) {
				t.Fatalf("%s lacks %s", u, want)
			}
		}
	}
	if !strings.Contains(metricsText(t, "http://"+metricsAddr+"/metrics"), `orderd_transition_lateness_seconds_count{source="event",to="expired"}`) {
		t.Fatal("no lateness recorded for expiries")
	}

	// Clean stop on SIGTERM.
	if code := serve.stop(t); code != 0 {
		t.Fatalf("serve exit %d after SIGTERM", code)
	}
	if code := listen.stop(t); code != 0 {
		t.Fatalf("listen exit %d after SIGTERM", code)
	}
}

func metricsText(t *testing.T, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

var tokens sync.Map

// signFor mints a user token in-process (the token command is tested above;
// 2,000 process starts would only slow the test down).
func signFor(t *testing.T, user int) string {
	if v, ok := tokens.Load(user); ok {
		return v.(string)
	}
	tok := signToken(t, e2eSecret, user)
	tokens.Store(user, tok)
	return tok
}

// What only the servers can tell about the settings is a configuration error
// (exit 2, naming the flag), so that systemd does not restart the unit in a
// loop; a server that does not answer is a runtime failure (exit 1).
func TestServerSideConfigurationExitCodes(t *testing.T) {
	redisURL := "redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB)
	migrated := ordertest.MySQLURL(t)
	if code, out := runCmd(t, []string{"ORDERD_DB=" + migrated}, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	host := strings.TrimPrefix(ordertest.MySQLBase(), "mysql://orderd:orderd@")
	tests := []struct {
		name     string
		redis    string
		db       string
		code     int
		mentions string
	}{
		{"wrong database password", redisURL, "mysql://orderd:wrong@" + host + "/orderd", 2, "--db"},
		{"database does not exist", redisURL, ordertest.MySQLBase() + "/no_such_database", 2, "--db"},
		{"schema older than the binary", redisURL, "sqlite:" + filepath.Join(t.TempDir(), "empty.db"), 2, "orderd migrate"},
		{"sqlite file cannot be opened", redisURL, "sqlite:/nonexistent/dir/orderd.db", 2, "--db"},
		{"redis DB index out of range", "redis://" + testkit.RedisAddr() + "/999", migrated, 2, "--redis-url"},
		{"redis does not answer", "redis://127.0.0.1:1/0", migrated, 1, "--redis-url"},
		{"database does not answer", redisURL, "mysql://orderd:orderd@127.0.0.1:1/orderd", 1, "--db"},
		{"no node of several answers", redisURL, "mysql://orderd:orderd@127.0.0.1:1,127.0.0.1:2/orderd", 1, "--db"},
		{"wrong password on every node", redisURL, "mysql://orderd:wrong@127.0.0.1:1," + host + "/orderd", 2, "--db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := []string{"ORDERD_REDIS_URL=" + tt.redis, "ORDERD_DB=" + tt.db, "ORDERD_LOG_FORMAT=json"}
			code, out := runCmd(t, env, "listen", "--metrics-addr", "")
			if code != tt.code || !strings.Contains(out, tt.mentions) {
				t.Fatalf("exit %d, output %q; want exit %d naming %s", code, out, tt.code, tt.mentions)
			}
			if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines != 1 {
				t.Fatalf("%d lines of output, want one clear line:\n%s", lines, out)
			}
			if !json.Valid([]byte(out)) {
				t.Fatalf("with --log-format json, the error is not a JSON line: %s", out)
			}
		})
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	tests := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"listen", "--sweep-interval", "0s"}, nil, "--sweep-interval"},
		{[]string{"listen", "--redis-url", "http://x"}, nil, "--redis-url"},
		{[]string{"listen", "--redis-url", "redis+sentinel://127.0.0.1:26379"}, nil, "master_name"},
		{[]string{"listen", "--redis-url", "redis+ring://127.0.0.1:6379"}, nil, "--redis-url"},
		{[]string{"listen", "--redis-url", "redis+cluster://127.0.0.1:7000/?bogus=1"}, nil, "--redis-url"},
		{[]string{"migrate", "--db", "postgres://x"}, nil, "--db"},
		{[]string{"migrate", "--db", "mysql://u:p@h:1/"}, nil, "--db"},
		{[]string{"migrate", "--db", "mysql://u:p@h1:3306,,h2:3306/orderd"}, nil, "--db"},
		{[]string{"migrate", "--db", "mysql://u:p@h1,h1:3306/orderd"}, nil, "--db"},
		{[]string{"migrate", "--db", "mysql://u:p@h1:3306,h2:99999/orderd"}, nil, "--db"},
		{[]string{"serve"}, []string{"ORDERD_JWT_SECRET="}, "--jwt-secret"},
		{[]string{"token", "--user", "1"}, []string{"ORDERD_JWT_SECRET="}, "--jwt-secret"},
		{[]string{"token", "--user", "0", "--jwt-secret", e2eSecret}, nil, "--user"},
		{[]string{"token", "--user", "1", "--jwt-secret", "CHANGE-ME"}, nil, "--jwt-secret"},
		{[]string{"serve"}, []string{"ORDERD_JWT_SECRET=" + e2eSecret[:31]}, "--jwt-secret"},
		{[]string{"listen", "--log-level", "loud"}, nil, "--log-level"},
		{[]string{"listen", "--no-such-flag"}, nil, "no-such-flag"},
		{[]string{"no-such-command"}, nil, "unknown command"},
		{[]string{"migrate"}, []string{"ORDERD_PAY_TIMEOUT=soon"}, "ORDERD_PAY_TIMEOUT"},
		{[]string{"listen", "--transitions-maxlen", "-1"}, nil, "--transitions-maxlen"},
		{[]string{"serve"}, []string{"ORDERD_TRANSITIONS_MAXLEN=lots"}, "ORDERD_TRANSITIONS_MAXLEN"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out := runCmd(t, tt.env, tt.args...)
			if code != 2 || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, output %q; want exit 2 naming %s", code, out, tt.want)
			}
		})
	}
	if code, out := runCmd(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "orderd ") {
		t.Fatalf("version: %d %q", code, out)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if code, out := runCmd(t, nil, "completion", shell); code != 0 || !strings.Contains(out, "orderd") || len(out) < 500 {
			t.Fatalf("completion %s: exit %d, %d bytes", shell, code, len(out))
		}
	}
}

// listen checks notify-keyspace-events: off means exit 2 with what to set,
// unless asked to set it.
func TestListenNotifyCheck(t *testing.T) {
	rs := testkit.StartPrivateRedis(t, "--notify-keyspace-events", "")
	dir, sock := rs.Dir, rs.Sock
	env := []string{"ORDERD_REDIS_URL=unix://" + sock, "ORDERD_DB=sqlite:" + filepath.Join(dir, "o.db"), "ORDERD_LOG_FORMAT=json"}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	code, out := runCmd(t, env, "listen", "--metrics-addr", "")
	if code != 2 || !strings.Contains(out, "notify-keyspace-events") || !strings.Contains(out, "--set-notify-config") {
		t.Fatalf("listen with events off: exit %d %q", code, out)
	}
	p := start(t, env, "listen", "--metrics-addr", "", "--set-notify-config")
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.stderr.String(), "subscribed") {
		if time.Now().After(deadline) {
			t.Fatalf("listen --set-notify-config did not subscribe:\n%s", p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// The demo runs on a Redis Cluster and behind Sentinel too.
func TestDemoOnClusterAndSentinel(t *testing.T) {
	t.Run("cluster", func(t *testing.T) {
		testkit.Cluster(t, "orderd-demo-")
		demo(t, testkit.ClusterURL())
	})
	t.Run("sentinel", func(t *testing.T) {
		testkit.Sentinel(t, redisDB)
		demo(t, testkit.SentinelURL(redisDB))
	})
}

func demo(t *testing.T, redisURL string) {
	t.Helper()
	code, out := runCmd(t, []string{"ORDERD_REDIS_URL=" + redisURL},
		"demo", "--shoppers", "80", "--stock", "30", "--pay-timeout", "4s", "--confirm-timeout", "1500ms")
	if code != 0 || !strings.Contains(out, "every order reached the state it should") || !strings.Contains(out, "summary") {
		t.Fatalf("demo on %s: exit %d\n%s", redisURL, code, out)
	}
}

func TestDemo(t *testing.T) {
	testkit.Redis(t, redisDB)
	code, out := runCmd(t, []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB)},
		"demo", "--shoppers", "80", "--stock", "30", "--pay-timeout", "4s", "--confirm-timeout", "1500ms")
	if code != 0 || !strings.Contains(out, "every order reached the state it should") || !strings.Contains(out, "summary") {
		t.Fatalf("demo: exit %d\n%s", code, out)
	}
}
