package expiry_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testDB is this package's Redis database; other packages use others, so
// packages can run side by side on one server.
const testDB = 1

func redisAddr() string {
	if a := os.Getenv("ORDERD_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:16379"
}

// setup returns a client for this package's database, emptied. It fails the
// test when no Redis answers: start one with contrib/dev/test.sh.
func setup(tb testing.TB) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr(), DB: testDB})
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("no Redis at %s (set ORDERD_TEST_REDIS or run contrib/dev/test.sh): %v", redisAddr(), err)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// privateRedis starts a redis-server of the test's own on a unix socket, for
// tests that change server-wide settings.
func privateRedis(tb testing.TB, args ...string) *redis.Client {
	tb.Helper()
	dir := tb.TempDir()
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command("redis-server", append([]string{"--port", "0", "--unixsocket", sock,
		"--save", "", "--appendonly", "no", "--dir", dir}, args...)...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock})
	tb.Cleanup(func() { rdb.Close() })
	for i := 0; ; i++ {
		if rdb.Ping(context.Background()).Err() == nil {
			return rdb
		}
		if i > 100 {
			tb.Fatal("private redis-server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
