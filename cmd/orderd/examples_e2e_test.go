package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
)

// examplesDB is the Redis database of the examples' test (the PHP example's
// default, 1, is Laravel's cache database, and the expiry package's tests').
const examplesDB = 8

// laravelPrefix is what a Laravel app's Redis connection and cache store put
// before its cache keys, by default.
const laravelPrefix = "laravel_database_laravel_cache_:"

// The examples in contrib/examples run against a running `orderd listen`: the
// PHP script writes an order's pay timer as Laravel's cache store does and
// reads the transitions stream with XREADGROUP; the Go consumer reads it in a
// group of its own. Both see the order expire, by the key's event.
func TestExamplesPHPAndGo(t *testing.T) {
	php, err := exec.LookPath("php")
	if err != nil {
		t.Fatal("no php: install Debian's php-cli and php-redis (contrib/dev/test.sh does)")
	}
	if out, err := exec.Command(php, "-m").Output(); err != nil || !bytes.Contains(out, []byte("\nredis\n")) {
		t.Fatalf("php has no redis extension (%v): install Debian's php-redis (contrib/dev/test.sh does)", err)
	}
	rdb := testkit.Redis(t, examplesDB)
	dbURL := ordertest.SQLiteURL(t)
	env := []string{"ORDERD_REDIS_URL=redis://" + testkit.RedisAddr() + "/" + strconv.Itoa(examplesDB), "ORDERD_DB=" + dbURL,
		"ORDERD_KEY_PREFIX=" + laravelPrefix, "ORDERD_SWEEP_INTERVAL=1h", "ORDERD_LOG_FORMAT=json"}
	if code, out := runCmd(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: %d %s", code, out)
	}
	addr := freeAddr(t)
	listen := start(t, env, "listen", "--metrics-addr", addr)
	waitHTTP(t, "http://"+addr+"/healthz")

	// An order that the shop's PHP code will time: pending, due in 1 s.
	st := ordertest.Open(t, dbURL)
	svc := order.NewService(st, nil, nil, order.Config{PayTimeout: time.Second})
	ctx := context.Background()
	if _, err := svc.PutSKU(ctx, order.SKU{SKU: 1, Name: "Kettle", PriceCents: 2500, Available: 10}); err != nil {
		t.Fatal(err)
	}
	o, err := svc.Create(ctx, 42, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.FormatInt(o.ID, 10)

	// The Go consumer, in a group of its own, waiting for the expiry.
	consumer := filepath.Join(t.TempDir(), "consumer")
	if out, err := exec.Command("go", "build", "-o", consumer, "../../contrib/examples/consumer").CombinedOutput(); err != nil {
		t.Fatalf("build the Go consumer: %v\n%s", err, out)
	}
	goCmd := exec.Command(consumer, "--redis-url", "redis://"+testkit.RedisAddr()+"/"+strconv.Itoa(examplesDB),
		"--key-prefix", laravelPrefix, "--group", "shop-go", "--until", id+":expired", "--timeout", "60s")
	var goOut, goErr syncBuffer
	goCmd.Stdout, goCmd.Stderr = &goOut, &goErr
	if err := goCmd.Start(); err != nil {
		t.Fatal(err)
	}
	goDone := make(chan error, 1)
	go func() { goDone <- goCmd.Wait() }()
	goExited := false
	t.Cleanup(func() {
		if !goExited {
			goCmd.Process.Kill()
			<-goDone
		}
	})
	testkit.WaitFor(t, 20*time.Second, "the Go consumer reading", func() bool { return strings.Contains(goErr.String(), "reading ") })

	// The PHP script: the Laravel-style timer, then XREADGROUP.
	phpCmd := exec.Command(php, "../../contrib/examples/php/pay_timeout.php", id, "2")
	host, port, _ := strings.Cut(testkit.RedisAddr(), ":")
	phpCmd.Env = append(os.Environ(), "REDIS_HOST="+host, "REDIS_PORT="+port, "REDIS_DB="+strconv.Itoa(examplesDB), "TIMEOUT=60")
	var phpOut, phpErr bytes.Buffer
	phpCmd.Stdout, phpCmd.Stderr = &phpOut, &phpErr
	if err := phpCmd.Run(); err != nil {
		t.Fatalf("php example: %v\nstdout:\n%s\nstderr:\n%s\norderd listen:\n%s", err, &phpOut, &phpErr, listen.stderr)
	}
	t.Logf("php example:\n%s%s", &phpErr, &phpOut)
	checkExpiredLine(t, "php", phpOut.String(), id)

	select {
	case err := <-goDone:
		goExited = true
		if err != nil {
			t.Fatalf("Go consumer: %v\n%s%s", err, &goErr, &goOut)
		}
	case <-time.After(testkit.Scale(60 * time.Second)):
		t.Fatalf("the Go consumer did not see order %s expire:\n%s%s", id, &goErr, &goOut)
	}
	t.Logf("Go consumer:\n%s%s", &goErr, &goOut)
	checkExpiredLine(t, "Go", goOut.String(), id)

	if n, err := rdb.Exists(ctx, laravelPrefix+"order_pay:"+id).Result(); err != nil || n != 0 {
		t.Errorf("the pay timer is still there (%d, %v)", n, err)
	}
	got, err := st.Get(ctx, o.ID)
	if err != nil || got.Status != order.Expired {
		t.Fatalf("order %s is %s (%v), want expired", id, got.Status, err)
	}
	if code := listen.stop(t); code != 0 {
		t.Fatalf("listen exit %d", code)
	}
}

// checkExpiredLine fails unless out has a JSON line saying order id expired
// by its key's event.
func checkExpiredLine(t *testing.T, who, out, id string) {
	t.Helper()
	for line := range strings.Lines(out) {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%s printed %q, not JSON: %v", who, line, err)
		}
		if fmtID(e["order_id"]) == id && e["to"] == "expired" {
			if e["from"] != "pending" || e["source"] != "event" {
				t.Fatalf("%s saw %v, want from pending by an event", who, e)
			}
			return
		}
	}
	t.Fatalf("%s did not print order %s's expiry:\n%s", who, id, out)
}

// fmtID is an order id printed as a JSON string (PHP) or number (Go).
func fmtID(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatInt(int64(f), 10)
	}
	s, _ := v.(string)
	return s
}
