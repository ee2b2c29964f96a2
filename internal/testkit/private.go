package testkit

import (
	"context"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// PrivateRedis is a redis-server of the test's own on a unix socket, for
// tests that change server-wide settings or restart the server. It stops at
// the test's end.
type PrivateRedis struct {
	tb     testing.TB
	Dir    string        // its working directory (the test's)
	Sock   string        // its unix socket
	Client *redis.Client // a client of it, which does not retry
	args   []string
	cmd    *exec.Cmd
}

// StartPrivateRedis starts a private redis-server with the extra args.
func StartPrivateRedis(tb testing.TB, args ...string) *PrivateRedis {
	tb.Helper()
	dir := tb.TempDir()
	p := &PrivateRedis{tb: tb, Dir: dir, Sock: filepath.Join(dir, "redis.sock"), args: args}
	p.Client = redis.NewClient(&redis.Options{Network: "unix", Addr: p.Sock, MaxRetries: -1})
	p.Start()
	tb.Cleanup(func() { p.Kill(); p.Client.Close() })
	return p
}

// Start starts the server (again), with the args it was first given.
func (p *PrivateRedis) Start() {
	p.tb.Helper()
	p.cmd = exec.Command("redis-server", append([]string{"--port", "0", "--unixsocket", p.Sock,
		"--save", "", "--appendonly", "no", "--dir", p.Dir}, p.args...)...)
	if err := p.cmd.Start(); err != nil {
		p.tb.Fatalf("start redis-server: %v", err)
	}
	WaitFor(p.tb, 10*time.Second, "the private redis-server up", func() bool {
		return p.Client.Ping(context.Background()).Err() == nil
	})
}

// Kill kills the server: its data and its settings made at run time are gone.
func (p *PrivateRedis) Kill() {
	if p.cmd != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		p.cmd = nil
	}
}

// Restart kills the server and starts it again on the same socket.
func (p *PrivateRedis) Restart() {
	p.tb.Helper()
	p.Kill()
	p.Start()
}

// Stop stops the server as an operator would (SIGTERM: it saves its data
// when persistence is on, then exits); Start brings it back.
func (p *PrivateRedis) Stop() {
	if p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
		p.cmd = nil
	}
}
