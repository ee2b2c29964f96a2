package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/stock"
)

// `orderd orders show|extend|expire ID`: an operator on the box sees an
// order with its timer, moves its deadline and the timer with it, and
// expires it now; a status that does not allow it, or no such order, is
// exit 1 saying so; bad usage is exit 2.
func TestOrdersCommand(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	url := ordertest.MySQLURL(t)
	keys := order.Keys{Prefix: "cli:"}
	env := []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(redisDB), "ORDERD_DB=" + url,
		"ORDERD_KEY_PREFIX=" + keys.Prefix, "ORDERD_LOG_FORMAT=console"}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	st := ordertest.Open(t, url)
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: keys.Prefix, Index: keys.DueIndex()})
	svc := order.NewService(st, stock.NewCounter(rdb, keys.Stock()), sched, order.Config{Keys: keys, PayTimeout: time.Hour})
	ctx := context.Background()
	if _, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "Mug", Available: 10}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for user := range int64(3) {
		o, err := svc.Create(ctx, user+1, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, strconv.FormatInt(o.ID, 10))
	}
	paid, _ := strconv.ParseInt(ids[2], 10, 64)
	if _, err := svc.Pay(ctx, 3, paid); err != nil {
		t.Fatal(err)
	}

	type view struct {
		Order struct {
			Status      string `json:"status"`
			PayDeadline string `json:"pay_deadline"`
		} `json:"order"`
		Deadline *time.Time `json:"deadline"`
		Timer    *struct {
			Key   string `json:"key"`
			TTL   int64  `json:"ttl_ms"`
			Index *struct {
				Deadline time.Time `json:"deadline"`
			} `json:"due_index"`
		} `json:"timer"`
	}
	orders := func(wantCode int, args ...string) view {
		t.Helper()
		code, out, errOut := runStdout(t, env, append([]string{"orders"}, append(args, "--json")...)...)
		if code != wantCode {
			t.Fatalf("orders %v: exit %d, want %d:\n%s%s", args, code, wantCode, out, errOut)
		}
		var v view
		if code == 0 {
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("orders %v: %v\n%s", args, err, out)
			}
		}
		return v
	}
	checkTimer := func(v view, left time.Duration) {
		t.Helper()
		if v.Timer == nil || v.Timer.Index == nil || v.Deadline == nil || !v.Timer.Index.Deadline.Equal(*v.Deadline) {
			t.Fatalf("timer %+v, want a due-index entry at the deadline %v", v.Timer, v.Deadline)
		}
		if got := time.Duration(v.Timer.TTL) * time.Millisecond; got < left-time.Minute || got > left {
			t.Fatalf("the timer's key has %v left, want about %v", got, left)
		}
	}

	v := orders(0, "show", ids[0])
	if v.Order.Status != "pending" || v.Timer.Key != keys.Pay(mustID(t, ids[0])) {
		t.Fatalf("show: %+v", v)
	}
	checkTimer(v, time.Hour)
	v = orders(0, "extend", ids[0], "--by", "30m")
	checkTimer(v, 90*time.Minute)
	to := time.Now().Add(3 * time.Hour).UTC().Truncate(time.Millisecond)
	v = orders(0, "extend", ids[0], "--to", to.Format(time.RFC3339Nano))
	if !v.Deadline.Equal(to) {
		t.Fatalf("extend --to %v: deadline %v", to, v.Deadline)
	}
	checkTimer(v, 3*time.Hour)
	code, text := runCmd(t, env, "orders", "show", ids[0])
	for _, want := range []string{"status", "pending", "timer key", "cli:order_pay:" + ids[0], "due index"} {
		if code != 0 || !strings.Contains(text, want) {
			t.Fatalf("show (text): exit %d, no %q in:\n%s", code, want, text)
		}
	}

	v = orders(0, "expire", ids[1])
	if v.Order.Status != "expired" || v.Timer != nil {
		t.Fatalf("expire: %+v", v)
	}
	if n, _ := rdb.Exists(ctx, keys.Pay(mustID(t, ids[1]))).Result(); n != 0 {
		t.Fatal("the expired order's timer key is still set")
	}
	ordertest.CheckStock(t, st, 1, 10)
	if k, _ := st.GetSKU(ctx, 1); k.Available != 8 {
		t.Fatalf("available %d after expiring one of three, want 8", k.Available)
	}
	testkit.WaitFor(t, 5*time.Second, "the Redis stock counter given back", func() bool {
		n, ok, err := stock.NewCounter(rdb, keys.Stock()).Available(ctx, 1)
		return err == nil && ok && n == 8
	})

	for _, tt := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"expire", ids[1]}, 1, "it is expired"},
		{[]string{"extend", ids[2], "--by", "1m"}, 1, "is paid"},
		{[]string{"expire", ids[2]}, 1, "it is paid"},
		{[]string{"show", "999999"}, 1, "not found"},
		{[]string{"show", "x"}, 2, "order id"},
		{[]string{"show"}, 2, "arg"},
		{[]string{"extend", ids[0]}, 2, "--by"},
		{[]string{"extend", ids[0], "--by", "1m", "--to", to.Format(time.RFC3339)}, 2, "--by"},
		{[]string{"extend", ids[0], "--to", "tomorrow"}, 2, "--to"},
	} {
		code, out := runCmd(t, env, append([]string{"orders"}, tt.args...)...)
		if code != tt.code || !strings.Contains(out, tt.says) {
			t.Errorf("orders %v: exit %d, want %d saying %q:\n%s", tt.args, code, tt.code, tt.says, out)
		}
	}
}

// runStdout runs orderd to completion and returns its exit code, its
// standard output and its standard error apart.
func runStdout(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

func mustID(t *testing.T, s string) int64 {
	t.Helper()
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
