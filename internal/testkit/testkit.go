// Package testkit is what every package's tests share: the test Redis that
// contrib/dev/test.sh starts (ORDERD_TEST_REDIS), polling for a condition
// with a deadline scaled for slow machines, a TCP proxy that breaks a link for
// real, and killing a package's own Redis subscribers. It starts nothing and
// fails loudly when a server is missing.
package testkit

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisAddr is the test Redis, host:port.
func RedisAddr() string {
	if a := os.Getenv("ORDERD_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:16379"
}

// Redis returns a client for database db of the test Redis, emptied. Each
// package uses its own database so packages can run side by side.
func Redis(tb testing.TB, db int) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: RedisAddr(), DB: db, PoolSize: 64})
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("no Redis at %s (set ORDERD_TEST_REDIS or run contrib/dev/test.sh): %v", RedisAddr(), err)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// Scale multiplies every WaitFor timeout: ORDERD_TEST_TIMEOUT_SCALE (a
// number, default 1) gives slow machines more time without touching a test.
func Scale(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv("ORDERD_TEST_TIMEOUT_SCALE"), 64); err == nil && f > 0 {
		return time.Duration(float64(d) * f)
	}
	return d
}

// WaitFor polls cond every few milliseconds until it holds, and fails the
// test when timeout (scaled) passes first.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	timeout = Scale(timeout)
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// KillSubscribers cuts the pub/sub connections of rdb's database (and only
// those: other packages' daemons on the same server are left alone), as a
// network failure would, and returns how many it cut.
func KillSubscribers(tb testing.TB, rdb *redis.Client) int {
	tb.Helper()
	ctx := context.Background()
	list, err := rdb.ClientList(ctx).Result()
	if err != nil {
		tb.Fatal(err)
	}
	db := "db=" + strconv.Itoa(rdb.Options().DB)
	n := 0
	for line := range strings.Lines(list) {
		fields := strings.Fields(line)
		var id string
		sub, ours := false, false
		for _, f := range fields {
			switch {
			case strings.HasPrefix(f, "id="):
				id = strings.TrimPrefix(f, "id=")
			case f == db:
				ours = true
			case strings.HasPrefix(f, "sub=") && f != "sub=0", strings.HasPrefix(f, "psub=") && f != "psub=0":
				sub = true
			}
		}
		if !sub || !ours {
			continue
		}
		if err := rdb.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
			tb.Fatal(fmt.Errorf("kill subscriber %s: %w", id, err))
		}
		n++
	}
	return n
}
