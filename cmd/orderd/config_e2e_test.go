package main_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/orderd/orderd/internal/testkit"
)

// The daemon runs on the settings of its file: its Redis, its database and
// its metrics address come from it, and status reads the same file.
func TestConfigFileRunsTheDaemon(t *testing.T) {
	testkit.Redis(t, redisDB)
	dir := t.TempDir()
	db := "sqlite:" + filepath.Join(dir, "orderd.db")
	if code, out := runCmd(t, []string{"ORDERD_DB=" + db}, "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d: %s", code, out)
	}
	metrics := freeAddr(t)
	t.Setenv("ORDERD_TEST_METRICS", metrics)
	path := filepath.Join(dir, "orderd.yaml")
	if err := os.WriteFile(path, []byte("redis_url: redis://"+testkit.RedisAddr()+"/"+strconv.Itoa(redisDB)+"\n"+
		"db: "+db+"\nmetrics_addr: ${ORDERD_TEST_METRICS}\nsweep_interval: 1s\nlog_format: json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, nil, "listen", "--config", path)
	waitHTTP(t, "http://"+metrics+"/healthz")
	if !strings.Contains(metricsText(t, "http://"+metrics+"/metrics"), "orderd_sweep_interval_seconds 1") {
		t.Fatal("the daemon does not sweep every 1 s, as its file says")
	}
	code, out := runCmd(t, nil, "status", "--config", path, "--json")
	if code == 2 || !strings.Contains(out, testkit.RedisAddr()) {
		t.Fatalf("status --config: exit %d: %s", code, out)
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("listen exited %d after SIGTERM", code)
	}
}
