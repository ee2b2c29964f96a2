package main_test

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
)

// `orderd serve` and `orderd listen` work with the cluster and the sentinel
// forms of --redis-url: an order placed through the API expires on time.
func TestServeAndListenOnClusterAndSentinel(t *testing.T) {
	for name, url := range map[string]func(t *testing.T) string{
		"cluster":  func(t *testing.T) string { testkit.Cluster(t, "orderd-e2e:"); return testkit.ClusterURL() },
		"sentinel": func(t *testing.T) string { testkit.Sentinel(t, redisDB); return testkit.SentinelURL(redisDB) },
	} {
		t.Run(name, func(t *testing.T) {
			env := []string{"ORDERD_REDIS_URL=" + url(t), "ORDERD_DB=sqlite:" + filepath.Join(t.TempDir(), "o.db"),
				"ORDERD_KEY_PREFIX=orderd-e2e:", "ORDERD_JWT_SECRET=" + e2eSecret, "ORDERD_PAY_TIMEOUT=1s",
				"ORDERD_SWEEP_INTERVAL=1h", "ORDERD_LOG_FORMAT=json"}
			if code, out := runCmd(t, env, "migrate"); code != 0 {
				t.Fatalf("migrate: %d %s", code, out)
			}
			apiAddr, metricsAddr := freeAddr(t), freeAddr(t)
			serve := start(t, env, "serve", "--addr", apiAddr)
			listen := start(t, env, "listen", "--metrics-addr", metricsAddr)
			waitHTTP(t, "http://"+apiAddr+"/healthz")
			waitHTTP(t, "http://"+metricsAddr+"/healthz") // subscribed on every master
			c := &client{t: t, base: "http://" + apiAddr, http: &http.Client{Timeout: 30 * time.Second}}
			_, admin := runCmd(t, env, "token", "--user", "1", "--admin")
			c.must("PUT", "/v1/skus/1", strings.TrimSpace(admin), `{"name":"Mug","price_cents":100,"stock":10}`, 200, "")
			var ids []string
			for range 6 { // keys on more than one master
				ids = append(ids, oid(c.must("POST", "/v1/orders", signFor(t, 2), `{"sku":1,"qty":1}`, 201, "")))
			}
			testkit.WaitFor(t, 15*time.Second, "every order expired by its event (no sweep for an hour)", func() bool {
				for _, id := range ids {
					if _, o := c.call("GET", "/v1/orders/"+id, signFor(t, 2), ""); o["status"] != "expired" {
						return false
					}
				}
				return true
			})
			if k := c.must("GET", "/v1/skus/1", "", "", 200, ""); k["available"] != 10.0 {
				t.Fatalf("stock not given back: %v", k)
			}
			for _, p := range []*proc{serve, listen} {
				if code := p.stop(t); code != 0 {
					t.Fatalf("exit %d", code)
				}
			}
		})
	}
}
