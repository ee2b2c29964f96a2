package expiry_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
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

// testLogger logs to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// logRecord is one line a logRecorder kept.
type logRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]any
}

// logRecorder is a slog.Handler that keeps what is logged at Min or above.
type logRecorder struct {
	Min slog.Level
	mu  sync.Mutex
	all []logRecord
}

func (h *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= h.Min }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h *logRecorder) WithGroup(string) slog.Handler                { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{Level: r.Level, Msg: r.Message, Attrs: map[string]any{}}
	var add func(a slog.Attr)
	add = func(a slog.Attr) {
		if a.Value.Kind() == slog.KindGroup {
			for _, g := range a.Value.Group() {
				add(g)
			}
			return
		}
		rec.Attrs[a.Key] = a.Value.Resolve().Any()
	}
	r.Attrs(func(a slog.Attr) bool { add(a); return true })
	h.mu.Lock()
	h.all = append(h.all, rec)
	h.mu.Unlock()
	return nil
}

// records returns what was kept, those whose message contains snippet.
func (h *logRecorder) records(snippet string) []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logRecord
	for _, r := range h.all {
		if strings.Contains(r.Msg, snippet) {
			out = append(out, r)
		}
	}
	return out
}
