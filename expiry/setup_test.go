package expiry_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/internal/testkit"
)

// testDB is this package's Redis database; other packages use others, so
// packages can run side by side on one server.
const testDB = 1

// setup returns a client for this package's database, emptied. It fails the
// test when no Redis answers: start one with contrib/dev/test.sh.
func setup(tb testing.TB) *redis.Client {
	tb.Helper()
	return testkit.Redis(tb, testDB)
}

// privateRedis starts a redis-server of the test's own on a unix socket, for
// tests that change server-wide settings or restart the server.
func privateRedis(tb testing.TB, args ...string) *redis.Client {
	tb.Helper()
	return startPrivate(tb, args...).client
}

type private struct {
	tb     testing.TB
	dir    string
	sock   string
	cmd    *exec.Cmd
	client *redis.Client
}

func startPrivate(tb testing.TB, args ...string) *private {
	tb.Helper()
	dir := tb.TempDir()
	p := &private{tb: tb, dir: dir, sock: filepath.Join(dir, "redis.sock")}
	p.start(args...)
	p.client = redis.NewClient(&redis.Options{Network: "unix", Addr: p.sock})
	tb.Cleanup(func() { p.client.Close() })
	tb.Cleanup(p.stop)
	return p
}

func (p *private) start(args ...string) {
	p.tb.Helper()
	p.cmd = exec.Command("redis-server", append([]string{"--port", "0", "--unixsocket", p.sock,
		"--save", "", "--appendonly", "no", "--dir", p.dir}, args...)...)
	if err := p.cmd.Start(); err != nil {
		p.tb.Fatalf("start redis-server: %v", err)
	}
	probe := redis.NewClient(&redis.Options{Network: "unix", Addr: p.sock, MaxRetries: -1})
	defer probe.Close()
	deadline := time.Now().Add(10 * time.Second)
	for probe.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			p.tb.Fatal("private redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *private) stop() {
	if p.cmd != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		p.cmd = nil
	}
}

// restart kills the server (its data and run-time settings are lost) and
// starts it again on the same socket with args.
func (p *private) restart(args ...string) {
	p.tb.Helper()
	p.stop()
	p.start(args...)
}
