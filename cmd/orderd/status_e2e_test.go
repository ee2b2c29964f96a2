package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/stock"
)

// statusJSON is the part of `orderd status --json` the tests read.
type statusJSON struct {
	Schema struct{ Version, Latest int64 } `json:"schema"`
	Notify struct {
		On *bool `json:"on"`
	} `json:"expired_events"`
	Orders  map[string]int64 `json:"orders"`
	Overdue []struct {
		Status        string  `json:"status"`
		Count         int64   `json:"count"`
		OldestSeconds float64 `json:"oldest_age_seconds"`
	} `json:"overdue"`
	Next []struct {
		ID     int64  `json:"id"`
		Status string `json:"status"`
	} `json:"next_deadlines"`
	Index struct {
		Timers    int64 `json:"timers"`
		Overdue   int64 `json:"overdue"`
		Shards    []struct{ Holder string }
		Listeners []struct {
			ID     string   `json:"id"`
			Shards []string `json:"shards"`
		} `json:"listeners"`
		Sweeper string `json:"sweeper"`
		Dead    []struct {
			Key       string `json:"key"`
			LastError string `json:"last_error"`
		} `json:"dead"`
	} `json:"due_index"`
	Stream struct {
		On            bool    `json:"on"`
		Entries       int64   `json:"entries"`
		Relay         string  `json:"relay"`
		Backlog       int64   `json:"backlog"`
		OldestSeconds float64 `json:"backlog_oldest_age_seconds"`
	} `json:"transitions_stream"`
	Problems []string `json:"problems"`
	Healthy  bool     `json:"healthy"`
}

// status runs `orderd status --json` and returns its exit code, its report
// (stdout) and all it printed.
func status(t *testing.T, env []string, args ...string) (int, statusJSON, string) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"status", "--json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	code, all := cmd.ProcessState.ExitCode(), string(stdout)+stderr.String()
	var s statusJSON
	if err := json.Unmarshal(stdout, &s); err != nil {
		t.Fatalf("status --json: exit %d, stdout not JSON (%v):\n%s", code, err, all)
	}
	return code, s, all
}

// `orderd status` against a database and Redis in a known state: orders
// overdue by 45 minutes, expired-key events off, no listener. It says so and
// exits 1; once events are on and a listener has swept, it exits 0 and shows
// the listener and the shards it holds.
func TestStatusTellsWhatIsTrue(t *testing.T) {
	rs := testkit.StartPrivateRedis(t) // a fresh redis-server: notify-keyspace-events is ""
	dbPath := filepath.Join(rs.Dir, "o.db")
	env := []string{"ORDERD_REDIS_URL=unix://" + rs.Sock, "ORDERD_DB=sqlite:" + dbPath,
		"ORDERD_SWEEP_INTERVAL=10s", "ORDERD_LOG_FORMAT=json"}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}

	// The known state, written as `orderd serve` would, with a clock moved
	// back an hour for the first three orders.
	st := ordertest.Open(t, "sqlite:"+dbPath)
	var skew atomic.Int64
	sched := expiry.NewScheduler(rs.Client, expiry.SchedulerConfig{Index: order.Keys{}.DueIndex()})
	svc := order.NewService(st, stock.NewCounter(rs.Client, ""), sched, order.Config{
		Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	ctx := context.Background()
	if _, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "Mug", Available: 100}); err != nil {
		t.Fatal(err)
	}
	skew.Store(int64(-time.Hour))
	for u := range 3 { // pending, due 45 minutes ago
		if _, err := svc.Create(ctx, int64(u+1), 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	skew.Store(0)
	var fresh []int64
	for u := range 3 {
		o, err := svc.Create(ctx, int64(u+10), 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		fresh = append(fresh, o.ID)
	}
	if _, err := svc.Pay(ctx, 12, fresh[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Ship(ctx, fresh[2]); err != nil {
		t.Fatal(err)
	}

	code, s, out := status(t, env)
	if code != 1 || s.Healthy {
		t.Fatalf("exit %d, healthy %v; want 1 and false:\n%s", code, s.Healthy, out)
	}
	if s.Orders["pending"] != 5 || s.Orders["shipped"] != 1 || s.Orders["expired"] != 0 {
		t.Errorf("orders %v, want 5 pending and 1 shipped", s.Orders)
	}
	if len(s.Overdue) != 2 || s.Overdue[0].Status != "pending" || s.Overdue[0].Count != 3 ||
		s.Overdue[0].OldestSeconds < 44*60 || s.Overdue[0].OldestSeconds > 46*60 || s.Overdue[1].Count != 0 {
		t.Errorf("overdue %+v, want 3 pending, the oldest 45 minutes", s.Overdue)
	}
	if len(s.Next) != 3 || s.Next[0].ID != fresh[0] || s.Next[1].ID != fresh[1] || s.Next[2].ID != fresh[2] || s.Next[2].Status != "shipped" {
		t.Errorf("next deadlines %+v, want %v (the last one shipped)", s.Next, fresh)
	}
	if s.Notify.On == nil || *s.Notify.On {
		t.Errorf("expired-key events reported on (or unknown) on a Redis without them")
	}
	if s.Index.Timers != 6 || s.Index.Overdue != 3 || len(s.Index.Shards) != 16 || len(s.Index.Listeners) != 0 {
		t.Errorf("due index: %d timers, %d overdue, %d shards, %d listeners; want 6, 3, 16, 0",
			s.Index.Timers, s.Index.Overdue, len(s.Index.Shards), len(s.Index.Listeners))
	}
	// 6 orders created, one paid and shipped, the first 3 an hour ago: the
	// outbox holds them, as no relay runs.
	if !s.Stream.On || s.Stream.Entries != 0 || s.Stream.Relay != "" || s.Stream.Backlog != 8 || s.Stream.OldestSeconds < 59*60 {
		t.Errorf("transitions stream %+v, want on, empty, no relay, 8 in the outbox for an hour", s.Stream)
	}
	for _, want := range []string{"overdue", "expired-key events", "no `orderd listen`", "wait in the outbox"} {
		if !strings.Contains(strings.Join(s.Problems, "\n"), want) {
			t.Errorf("problems %q do not mention %q", s.Problems, want)
		}
	}
	if s.Schema.Version != s.Schema.Latest {
		t.Errorf("schema %+v", s.Schema)
	}

	// Events on, a listener running: it sweeps the overdue orders and holds
	// every shard and the sweep.
	if err := rs.Client.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
		t.Fatal(err)
	}
	metrics := freeAddr(t)
	listen := start(t, env, "listen", "--metrics-addr", metrics)
	waitHTTP(t, "http://"+metrics+"/healthz")
	testkit.WaitFor(t, 30*time.Second, "status healthy", func() bool {
		code, s, _ = status(t, env)
		return code == 0 && len(s.Index.Listeners) == 1 && len(s.Index.Listeners[0].Shards) == 16 && s.Stream.Entries == 11
	})
	if s.Stream.Backlog != 0 || s.Stream.Relay != s.Index.Listeners[0].ID {
		t.Errorf("transitions stream %+v, want the outbox empty, relayed by the listener", s.Stream)
	}
	if !s.Healthy || s.Orders["expired"] != 3 || s.Overdue[0].Count != 0 || s.Index.Sweeper != s.Index.Listeners[0].ID || len(s.Problems) != 0 {
		t.Fatalf("after the sweep: %+v", s)
	}
	code, table := runCmd(t, env, "status")
	for _, want := range []string{"on (every node)", "pending 2, paid 0, shipped 1", "listeners           1 live", s.Index.Listeners[0].ID} {
		if code != 0 || !strings.Contains(table, want) {
			t.Fatalf("status table (exit %d) lacks %q:\n%s", code, want, table)
		}
	}
	if code := listen.stop(t); code != 0 {
		t.Fatalf("listen exit %d", code)
	}

	// A timer whose handling failed every attempt waits in the dead set:
	// status lists it and exits 1 until it is re-armed.
	failing := expiry.NewListener(rs.Client, expiry.HandlerFunc(func(context.Context, expiry.Event) error {
		return errors.New("the database refused")
	}), expiry.ListenerConfig{Scheduler: sched, MaxAttempts: 1})
	lctx, stopFailing := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- failing.Run(lctx) }()
	if err := sched.Schedule(ctx, "order_pay:999999", time.Now()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "a dead timer", func() bool { return failing.Stats().Dead == 1 })
	stopFailing()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	code, s, out = status(t, env)
	if code != 1 || len(s.Index.Dead) != 1 || s.Index.Dead[0].Key != "order_pay:999999" ||
		!strings.Contains(s.Index.Dead[0].LastError, "refused") || !strings.Contains(strings.Join(s.Problems, "\n"), "dead set") {
		t.Fatalf("with a dead timer: exit %d, dead %+v, problems %q; want exit 1 listing it\n%s", code, s.Index.Dead, s.Problems, out)
	}
	if code, table := runCmd(t, env, "status"); code != 1 || !strings.Contains(table, "order_pay:999999") {
		t.Fatalf("status table (exit %d) does not list the dead timer:\n%s", code, table)
	}
	if err := sched.Rearm(ctx, "order_pay:999999"); err != nil {
		t.Fatal(err)
	}
	if code, s, _ = status(t, env); len(s.Index.Dead) != 0 {
		t.Fatalf("re-armed, status still lists %+v", s.Index.Dead)
	}
}

// `orderd status` reads every node of a Cluster and the master behind
// Sentinel.
func TestStatusOnClusterAndSentinel(t *testing.T) {
	for name, url := range map[string]func(t *testing.T) string{
		"cluster":  func(t *testing.T) string { testkit.Cluster(t, "orderd-status:"); return testkit.ClusterURL() },
		"sentinel": func(t *testing.T) string { testkit.Sentinel(t, redisDB); return testkit.SentinelURL(redisDB) },
	} {
		t.Run(name, func(t *testing.T) {
			env := []string{"ORDERD_REDIS_URL=" + url(t), "ORDERD_DB=sqlite:" + filepath.Join(t.TempDir(), "o.db"),
				"ORDERD_KEY_PREFIX=orderd-status:", "ORDERD_LOG_FORMAT=json"}
			if code, out := runCmd(t, env, "migrate"); code != 0 {
				t.Fatalf("migrate: %d %s", code, out)
			}
			code, s, out := status(t, env)
			if code != 0 || !s.Healthy || s.Notify.On == nil || !*s.Notify.On || len(s.Index.Shards) != 16 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
		})
	}
}
