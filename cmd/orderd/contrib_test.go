package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
)

// The systemd units must pass systemd-analyze verify without a word of
// complaint (it exits 0 on unknown keys, so any output fails the test), and
// rate 2.0 or better on systemd-analyze security's exposure scale.
func TestSystemdUnits(t *testing.T) {
	sa := tool(t, "systemd-analyze", "systemd")
	units, _ := filepath.Glob("../../systemd/*.service")
	if len(units) != 2 {
		t.Fatalf("want the serve and listen units, found %v", units)
	}
	dir := t.TempDir()
	exposure := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"EnvironmentFile=", "Restart=on-failure", "RestartPreventExitStatus=2", "NoNewPrivileges=yes", "ProtectSystem=strict", "UMask=0077"} {
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
		out, _ = exec.Command(sa, "security", "--offline=yes", "--no-pager", path).CombinedOutput()
		m := exposure.FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s gave no exposure level:\n%s", filepath.Base(u), out)
		}
		if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
			t.Errorf("%s: exposure %s, want 2.0 or less:\n%s", filepath.Base(u), m[1], out)
		} else {
			t.Logf("%s: exposure %s", filepath.Base(u), m[1])
		}
	}
}

// tool returns the path of command, failing (not skipping) when it is
// missing: contrib/dev/test.sh installs it from Debian's package pkg.
func tool(t *testing.T, command, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(command)
	if err != nil {
		t.Fatalf("%s is missing: install Debian's %s package (contrib/dev/test.sh does)", command, pkg)
	}
	return path
}

// The example environment file is valid shell (set -a; . file) and valid for
// systemd's EnvironmentFile (KEY=value lines, no trailing comments), with
// every commented-out setting switched on too.
func TestEnvExample(t *testing.T) {
	raw, err := os.ReadFile("../../systemd/orderd.env.example")
	if err != nil {
		t.Fatal(err)
	}
	setting := regexp.MustCompile(`^#? ?(ORDERD_[A-Z_]+=.*)$`)
	valid := regexp.MustCompile(`^ORDERD_[A-Z_]+=[^\s#'"]*$`)
	var lines []string
	want := map[string]string{}
	for line := range strings.Lines(string(raw)) {
		line = strings.TrimRight(line, "\n")
		m := setting.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if !valid.MatchString(m[1]) {
			t.Errorf("%q: want KEY=value with no spaces, quotes or comment after it", line)
		}
		lines = append(lines, m[1])
		k, v, _ := strings.Cut(m[1], "=")
		want[k] = v
	}
	if len(want) < 8 {
		t.Fatalf("only %d settings found", len(want))
	}
	path := filepath.Join(t.TempDir(), "orderd.env")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", "-euc", `set -a; . "$1"; set +a; env`, "bash", path).CombinedOutput()
	if err != nil {
		t.Fatalf("sourcing the example: %v\n%s", err, out)
	}
	for k, v := range want {
		if !strings.Contains(string(out), "\n"+k+"="+v+"\n") {
			t.Errorf("after sourcing, %s is not %q", k, v)
		}
	}
}

// contrib/nohup/orderd.sh starts the daemon with a pid and a log file, says
// "started" only once it is healthy and "failed" when it exits instead, and
// stops it cleanly.
func TestNohupScript(t *testing.T) {
	testkit.Redis(t, redisDB)
	dir := t.TempDir()
	metrics := freeAddr(t)
	settings := []string{
		"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB),
		"ORDERD_DB=sqlite:" + filepath.Join(dir, "orderd.db"),
		"ORDERD_METRICS_ADDR=" + metrics,
	}
	env := append(os.Environ(), "ORDERD_BIN="+binary, "ORDERD_RUN_DIR="+dir, "ORDERD_ENV_FILE=/nonexistent", "ORDERD_START_WAIT=20")
	env = append(env, settings...)
	script := func(args ...string) (string, error) {
		cmd := exec.Command("bash", append([]string{"../../contrib/nohup/orderd.sh"}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// Before migrate, listen exits 2 at once: start must say it failed.
	if out, err := script("start", "listen"); err == nil || !strings.Contains(out, "failed to start (exit 2)") || !strings.Contains(out, "orderd migrate") {
		t.Fatalf("start of a listen that exits: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "orderd-listen.pid")); !os.IsNotExist(err) {
		t.Fatal("pid file left behind by a failed start")
	}
	if code, out := runCmd(t, settings, "migrate"); code != 0 {
		t.Fatalf("migrate: %s", out)
	}
	out, err := script("start", "listen")
	if err != nil || !strings.Contains(out, "started and healthy") {
		t.Fatalf("start: %v %s", err, out)
	}
	if code, body := health(t, "http://"+metrics+"/healthz"); code != 200 {
		t.Fatalf("start said healthy, /healthz says %d %v", code, body)
	}
	if out, err := script("status", "listen"); err != nil || !strings.Contains(out, "running") {
		t.Fatalf("status: %v %s", err, out)
	}
	log := filepath.Join(dir, "orderd-listen.log")
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

// supervisord (Debian's supervisor package) runs both shipped program
// sections: both come up RUNNING and healthy, and stop cleanly.
func TestSupervisorSections(t *testing.T) {
	supervisord := tool(t, "supervisord", "supervisor")
	supervisorctl := tool(t, "supervisorctl", "supervisor")
	testkit.Redis(t, redisDB)
	dir := t.TempDir()
	apiAddr, metricsAddr := freeAddr(t), freeAddr(t)
	settings := []string{
		"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB),
		"ORDERD_DB=sqlite:" + filepath.Join(dir, "orderd.db"),
		"ORDERD_JWT_SECRET=" + e2eSecret,
		"ORDERD_LOG_FORMAT=json",
		"ORDERD_ADDR=" + apiAddr,
		"ORDERD_METRICS_ADDR=" + metricsAddr,
	}
	if code, out := runCmd(t, settings, "migrate"); code != 0 {
		t.Fatalf("migrate: %s", out)
	}

	// The shipped sections, pointed at this test's binary, directories and
	// servers (and at the user running the test).
	raw, err := os.ReadFile("../../contrib/supervisor/orderd.conf")
	if err != nil {
		t.Fatal(err)
	}
	quoted := make([]string, len(settings))
	for i, kv := range settings {
		k, v, _ := strings.Cut(kv, "=")
		quoted[i] = k + `="` + v + `"`
	}
	sections := strings.NewReplacer("/usr/local/bin/orderd", binary, "/var/log/orderd", filepath.Join(dir, "log"),
		"/var/lib/orderd", dir).Replace(string(raw))
	sections = regexp.MustCompile(`(?m)^user=.*\n`).ReplaceAllString(sections, "")
	sections = regexp.MustCompile(`(?m)^environment=.*$`).ReplaceAllLiteralString(sections, "environment="+strings.Join(quoted, ","))
	if err := os.Mkdir(filepath.Join(dir, "log"), 0o755); err != nil {
		t.Fatal(err)
	}
	include := filepath.Join(dir, "orderd.conf")
	main := filepath.Join(dir, "supervisord.conf")
	sock := filepath.Join(dir, "supervisor.sock")
	for path, text := range map[string]string{
		include: sections,
		main: "[supervisord]\nlogfile=" + filepath.Join(dir, "supervisord.log") + "\npidfile=" + filepath.Join(dir, "supervisord.pid") +
			"\nchildlogdir=" + dir + "\n[unix_http_server]\nfile=" + sock +
			"\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n" +
			"[supervisorctl]\nserverurl=unix://" + sock + "\n[include]\nfiles=" + include + "\n",
	} {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sd := exec.Command(supervisord, "-n", "-c", main)
	sd.Env = []string{"PATH=" + os.Getenv("PATH")} // the sections carry the settings
	if err := sd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { sd.Wait(); close(done) }()
	t.Cleanup(func() {
		sd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			sd.Process.Kill()
			<-done
		}
		if t.Failed() {
			for _, f := range []string{"supervisord.log", "log/listen.log", "log/serve.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("%s:\n%s", f, b)
			}
		}
	})
	ctl := func(args ...string) string {
		out, _ := exec.Command(supervisorctl, append([]string{"-c", main}, args...)...).CombinedOutput()
		return string(out)
	}
	testkit.WaitFor(t, 30*time.Second, "both programs RUNNING", func() bool {
		return strings.Count(ctl("status"), "RUNNING") == 2
	})
	for _, url := range []string{"http://" + apiAddr + "/healthz", "http://" + metricsAddr + "/healthz"} {
		waitHTTP(t, url)
	}
	ctl("stop", "all")
	status := ctl("status")
	if strings.Count(status, "STOPPED") != 2 {
		t.Fatalf("after stop all:\n%s", status)
	}
	for _, f := range []string{"listen.log", "serve.log"} {
		b, _ := os.ReadFile(filepath.Join(dir, "log", f))
		if !strings.Contains(string(b), "stopped") {
			t.Errorf("%s has no clean stop:\n%s", f, b)
		}
	}
}
