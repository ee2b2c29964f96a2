package main_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
)

// healthz reads a /healthz: its status code and body.
func healthz(t *testing.T, url string) (int, map[string]string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var body map[string]string
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("%s: not JSON: %s", url, b)
	}
	return resp.StatusCode, body
}

// Redis set to evict any key (maxmemory-policy allkeys-lru): listen and
// serve say so in their log, /healthz (503, field "eviction") and a gauge,
// and `orderd status` exits 1 naming the setting; once the policy is
// noeviction, all is well again. The relay notices the transitions stream
// vanishing (as eviction makes it) and counts it.
func TestEvictionPolicyIsReported(t *testing.T) {
	rs := testkit.StartPrivateRedis(t, "--maxmemory-policy", "allkeys-lru", "--notify-keyspace-events", "Ex")
	dbPath := filepath.Join(rs.Dir, "o.db")
	env := []string{"ORDERD_REDIS_URL=unix://" + rs.Sock, "ORDERD_DB=sqlite:" + dbPath, "ORDERD_LOG_FORMAT=json",
		"ORDERD_JWT_SECRET=" + e2eSecret}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	metricsAddr, apiAddr := freeAddr(t), freeAddr(t)
	listen := start(t, env, "listen", "--metrics-addr", metricsAddr)
	serve := start(t, env, "serve", "--addr", apiAddr)
	waitHTTP(t, "http://"+metricsAddr+"/metrics")
	waitHTTP(t, "http://"+apiAddr+"/metrics")
	for _, url := range []string{"http://" + metricsAddr, "http://" + apiAddr} {
		var body map[string]string
		testkit.WaitFor(t, 20*time.Second, url+"/healthz naming eviction", func() bool {
			var code int
			code, body = healthz(t, url+"/healthz")
			return code == 503 && strings.Contains(body["eviction"], "maxmemory-policy")
		})
		if !strings.Contains(body["eviction"], "allkeys-lru") || !strings.Contains(body["eviction"], "noeviction") {
			t.Errorf("%s/healthz eviction %q: want the policy and the fix", url, body["eviction"])
		}
		if !strings.Contains(metricsText(t, url+"/metrics"), "orderd_redis_eviction_unsafe 1") {
			t.Errorf("%s/metrics: orderd_redis_eviction_unsafe is not 1", url)
		}
	}
	for name, p := range map[string]*proc{"listen": listen, "serve": serve} {
		if !containsLine(p.stderr.String(), `"level":"error"`, "may evict keys without a TTL", "maxmemory-policy") {
			t.Errorf("%s logged no error line naming maxmemory-policy:\n%s", name, p.stderr)
		}
	}
	code, _, out := status(t, env)
	if code != 1 || !strings.Contains(out, "maxmemory-policy") {
		t.Fatalf("status: exit %d, want 1 naming maxmemory-policy:\n%s", code, out)
	}

	// The stream vanishes (as an eviction does it): the relay says so.
	c := &client{t: t, base: "http://" + apiAddr, http: &http.Client{Timeout: 30 * time.Second}}
	_, admin := runCmd(t, env, "token", "--user", "1", "--admin")
	admin, user := strings.TrimSpace(admin), signFor(t, 2)
	c.must("PUT", "/v1/skus/1", admin, `{"name":"Mug","price_cents":100,"stock":10,"limit_per_user":0}`, 200, "")
	c.must("POST", "/v1/orders", user, `{"sku":1,"qty":1}`, 201, "")
	stream := order.Keys{}.Transitions()
	ctx := context.Background()
	testkit.WaitFor(t, 10*time.Second, "the order's creation in the stream", func() bool {
		return rs.Client.XLen(ctx, stream).Val() == 1
	})
	rs.Client.Del(ctx, stream)
	c.must("POST", "/v1/orders", user, `{"sku":1,"qty":1}`, 201, "")
	testkit.WaitFor(t, 10*time.Second, "the relay counting the vanished stream", func() bool {
		return strings.Contains(metricsText(t, "http://"+metricsAddr+"/metrics"), "orderd_transitions_stream_lost_total 1") ||
			strings.Contains(metricsText(t, "http://"+apiAddr+"/metrics"), "orderd_transitions_stream_lost_total 1")
	})

	// Fixed: healthy again, within a check interval.
	if err := rs.Client.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{"http://" + metricsAddr, "http://" + apiAddr} {
		testkit.WaitFor(t, 30*time.Second, url+"/healthz ok again", func() bool {
			code, _ := healthz(t, url+"/healthz")
			return code == 200
		})
	}
	if code, _, out := status(t, env); strings.Contains(out, "maxmemory-policy") {
		t.Fatalf("status after the fix: exit %d, still naming maxmemory-policy:\n%s", code, out)
	}
}
