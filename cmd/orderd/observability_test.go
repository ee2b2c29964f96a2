package main_test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
)

// The alert rules load (promtool check rules) and fire when they should,
// and only then (promtool test rules: contrib/prometheus/orderd-alerts.test.yml).
func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "orderd-alerts.yml"},
		{"test", "rules", "orderd-alerts.test.yml"},
		{"check", "config", "prometheus.example.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../../contrib/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

var metricName = regexp.MustCompile(`\borderd_[a-z_]+\b`)

// Every metric the Grafana dashboard and the alert rules name is one that a
// running `orderd listen` or `orderd serve` exports.
func TestDashboardAndAlertsNameRealMetrics(t *testing.T) {
	dir := t.TempDir()
	env := []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB),
		"ORDERD_DB=sqlite:" + filepath.Join(dir, "o.db"), "ORDERD_JWT_SECRET=" + e2eSecret, "ORDERD_LOG_FORMAT=json",
		"ORDERD_KEY_PREFIX=orderd-names:"}
	testkit.Redis(t, redisDB)
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	apiAddr, metricsAddr := freeAddr(t), freeAddr(t)
	start(t, env, "serve", "--addr", apiAddr)
	start(t, env, "listen", "--metrics-addr", metricsAddr)
	waitHTTP(t, "http://"+apiAddr+"/healthz")
	waitHTTP(t, "http://"+metricsAddr+"/healthz")
	c := &client{t: t, base: "http://" + apiAddr, http: &http.Client{Timeout: 10 * time.Second}}
	c.must("GET", "/v1/skus", "", "", 200, "") // the HTTP series exist once a request was served

	exported := map[string]bool{}
	for _, url := range []string{"http://" + apiAddr + "/metrics", "http://" + metricsAddr + "/metrics"} {
		for line := range strings.Lines(metricsText(t, url)) {
			if strings.HasPrefix(line, "#") {
				continue
			}
			name, _, _ := strings.Cut(strings.Fields(line)[0], "{")
			exported[name] = true
		}
	}

	named := map[string][]string{} // metric → files naming it
	for _, f := range []string{"../../contrib/grafana/orderd.json", "../../contrib/prometheus/orderd-alerts.yml"} {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".json") {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatalf("%s is not JSON: %v", f, err)
			}
		}
		for _, m := range metricName.FindAllString(string(raw), -1) {
			named[m] = append(named[m], filepath.Base(f))
		}
	}
	if len(named) < 20 {
		t.Fatalf("only %d metric names found in the dashboard and the rules", len(named))
	}
	for m, files := range named {
		if !exported[m] {
			slices.Sort(files)
			t.Errorf("%s (named in %v) is exported by neither listen nor serve", m, slices.Compact(files))
		}
	}
}
