package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/order/ordertest"
)

// The systemd units must pass systemd-analyze verify without a word of
// complaint (it exits 0 on unknown keys, so any output fails the test).
func TestSystemdUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not available on this machine")
	}
	units, _ := filepath.Glob("../../systemd/*.service")
	if len(units) != 2 {
		t.Fatalf("want the serve and listen units, found %v", units)
	}
	dir := t.TempDir()
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"EnvironmentFile=", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict"} {
			if !strings.Contains(string(raw), want) {
				t.Errorf("%s lacks %s", u, want)
			}
		}
		// Point ExecStart at the binary under test: verify checks that it exists.
		unit := strings.ReplaceAll(string(raw), "/usr/local/bin/orderd", binary)
		path := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", filepath.Base(u), err, out)
		}
	}
}

// contrib/nohup/orderd.sh starts the daemon with a pid and a log file and
// stops it cleanly.
func TestNohupScript(t *testing.T) {
	ordertest.Redis(t, redisDB)
	dir := t.TempDir()
	env := append(os.Environ(),
		"ORDERD_BIN="+binary,
		"ORDERD_RUN_DIR="+dir,
		"ORDERD_ENV_FILE=/nonexistent",
		"ORDERD_REDIS_URL=redis://"+ordertest.RedisAddr()+"/"+strconv.Itoa(redisDB),
		"ORDERD_DB=sqlite:"+filepath.Join(dir, "orderd.db"),
		"ORDERD_METRICS_ADDR=",
	)
	script := func(args ...string) (string, error) {
		cmd := exec.Command("bash", append([]string{"../../contrib/nohup/orderd.sh"}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if code, out := runCmd(t, env[len(env)-5:], "migrate"); code != 0 {
		t.Fatalf("migrate: %s", out)
	}
	if out, err := script("start", "listen"); err != nil || !strings.Contains(out, "started") {
		t.Fatalf("start: %v %s", err, out)
	}
	if out, err := script("status", "listen"); err != nil || !strings.Contains(out, "running") {
		t.Fatalf("status: %v %s", err, out)
	}
	log := filepath.Join(dir, "orderd-listen.log")
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(log)
		if strings.Contains(string(b), "subscribed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log never said subscribed:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := script("stop", "listen"); err != nil || !strings.Contains(out, "stopped") {
		t.Fatalf("stop: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "orderd-listen.pid")); !os.IsNotExist(err) {
		t.Fatal("pid file left behind")
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "orderd listen stopped") {
		t.Fatalf("no clean stop in the log:\n%s", b)
	}
}
