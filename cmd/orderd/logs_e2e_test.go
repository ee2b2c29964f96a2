package main_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order/ordertest"
)

// With --log-format json, `listen` and `serve` write nothing but JSON lines,
// go-redis's and the MySQL driver's included, and no stack trace, through a
// Redis restart and cut database connections: jq parses every line.
func TestJSONLogsThroughRestarts(t *testing.T) {
	jq := tool(t, "jq", "jq")
	rs := testkit.StartPrivateRedis(t)
	ctx := context.Background()
	if err := rs.Client.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
		t.Fatal(err)
	}
	url := ordertest.MySQLURL(t)
	host := strings.TrimPrefix(ordertest.MySQLBase(), "mysql://orderd:orderd@")
	db := testkit.NewProxy(t, host)
	env := []string{"ORDERD_REDIS_URL=unix://" + rs.Sock, "ORDERD_DB=" + strings.Replace(url, host, db.Addr(), 1),
		"ORDERD_JWT_SECRET=" + e2eSecret, "ORDERD_LOG_FORMAT=json", "ORDERD_SWEEP_INTERVAL=1s"}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	apiAddr, metricsAddr := freeAddr(t), freeAddr(t)
	serve := start(t, env, "serve", "--addr", apiAddr)
	listen := start(t, env, "listen", "--metrics-addr", metricsAddr, "--set-notify-config")
	apiHealth, daemonHealth := "http://"+apiAddr+"/healthz", "http://"+metricsAddr+"/healthz"
	waitHTTP(t, apiHealth)
	waitHTTP(t, daemonHealth)
	c := &client{t: t, base: "http://" + apiAddr, http: &http.Client{Timeout: 30 * time.Second}}
	_, admin := runCmd(t, env, "token", "--user", "1", "--admin")
	c.must("PUT", "/v1/skus/1", strings.TrimSpace(admin), `{"name":"Mug","price_cents":100,"stock":100}`, 200, "")
	order := func() { c.must("POST", "/v1/orders", signFor(t, 2), `{"sku":1,"qty":1}`, 201, "") }
	order()

	// Redis restarted (killed: its data and run-time settings are gone).
	rs.Kill()
	testkit.WaitFor(t, 10*time.Second, "serve reporting Redis down", func() bool {
		code, body := health(t, apiHealth)
		return code == 503 && body["redis"] != ""
	})
	rs.Start()
	waitHTTP(t, apiHealth)
	waitHTTP(t, daemonHealth) // resubscribed, events set again
	order()

	// The database's connections cut, as a restart does to them.
	db.Cut()
	testkit.WaitFor(t, 10*time.Second, "serve reporting the database down", func() bool {
		code, body := health(t, apiHealth)
		return code == 503 && body["database"] != ""
	})
	db.Restore()
	waitHTTP(t, apiHealth)
	waitHTTP(t, daemonHealth)
	order()

	for name, p := range map[string]*proc{"serve": serve, "listen": listen} {
		if code := p.stop(t); code != 0 {
			t.Errorf("%s exit %d", name, code)
		}
		out := p.stderr.String()
		path := filepath.Join(t.TempDir(), name+".log")
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		if res, err := exec.Command(jq, "-c", ".msg", path).CombinedOutput(); err != nil {
			t.Errorf("jq cannot parse the %s log: %v\n%s\nthe log:\n%s", name, err, res, out)
		}
		if strings.Contains(out, `"stacktrace"`) || strings.Contains(out, "goroutine ") {
			t.Errorf("a stack trace in the %s log:\n%s", name, out)
		}
		t.Logf("%s: %d JSON lines", name, strings.Count(out, "\n"))
	}
}
