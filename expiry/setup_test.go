package expiry_test

import (
	"testing"

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

// privateRedis starts a redis-server of the test's own, for tests that
// change server-wide settings.
func privateRedis(tb testing.TB, args ...string) *redis.Client {
	tb.Helper()
	return testkit.StartPrivateRedis(tb, args...).Client
}
