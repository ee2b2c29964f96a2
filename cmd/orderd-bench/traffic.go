package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/stock"
)

// The traffic scenario is a shop's day: `orderd serve` takes orders over
// HTTP at --rate per second for --duration, each with a 3 s pay timeout and
// left unpaid, while `orderd listen` expires the earlier ones and a million
// other timers wait in Redis. Lateness is cancelled_at − pay_deadline of each
// expired order, as in steady; unlike steady, orders are written (by serve,
// into the same tables, the outbox and the due index) while others expire.

// trafficPayTimeout is the pay timeout of the traffic scenario's orders.
const trafficPayTimeout = 3 * time.Second

// benchSecret signs the traffic scenario's tokens (serve's --jwt-secret).
const benchSecret = "orderd-bench-secret-of-32-bytes!"

// runTraffic runs the traffic scenario, orderd mode only.
func runTraffic(ctx context.Context, c config, rdb redis.UniversalClient) (result, error) {
	res := result{Scenario: "traffic", Mode: "orderd", Listeners: 1}
	store, err := fresh(ctx, c, rdb)
	if err != nil {
		return res, err
	}
	defer store.Close()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: dueIndex})
	t0 := time.Now()
	if err := seedOtherKeys(ctx, rdb, sched, "", c.otherKeys, "orderd"); err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "   %d other timers set in %v\n", c.otherKeys, time.Since(t0).Round(time.Millisecond))
	svc := order.NewService(store, stock.NewCounter(rdb, ""), nil, order.Config{})
	if _, err := svc.PutSKU(ctx, order.SKU{SKU: skuID, Name: "bench", PriceCents: 100, Available: skuTotal}); err != nil {
		return res, err
	}

	d, err := startDaemon(ctx, c, "orderd")
	if err != nil {
		return res, err
	}
	defer d.kill()
	addr, stopServe, err := startServe(ctx, c)
	if err != nil {
		return res, err
	}
	defer stopServe()

	tx0, err := transactions(ctx, store)
	if err != nil {
		return res, err
	}
	cpu0 := readCPU(ctx, rdb, []int{d.cmd.Process.Pid})
	probe := startProbe(ctx, rdb)
	defer probe()
	created, failed, first, err := createOrders(ctx, "http://"+addr, c.rate, c.duration)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "   %d orders created over HTTP at %d/s (%d refused)\n", created, c.rate, failed)
	last := time.Now().Add(trafficPayTimeout)
	for {
		var any []int64
		if err := store.DB().SelectContext(ctx, &any, `SELECT id FROM orders WHERE status = 'pending' LIMIT 1`); err != nil {
			return res, err
		}
		if len(any) == 0 || time.Now().After(last.Add(5*time.Minute)) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	h := probe()
	res.Host = &h
	tx1, err := transactions(ctx, store)
	if err != nil {
		return res, err
	}
	res.Transactions = tx1 - tx0
	cpu := readCPU(ctx, rdb, []int{d.cmd.Process.Pid}).sub(cpu0)
	res.CPUDaemonS, res.CPURedisS, res.CPUMachineS = cpu.daemons, cpu.redis, cpu.machine
	res.RSSMB = d.peakRSSMB()
	if m, err := d.metrics(); err == nil {
		if n := m["orderd_batch_size_count"]; n > 0 {
			res.MeanBatch = m["orderd_batch_size_sum"] / n
		}
		res.Dropped = m["orderd_events_dropped_total"]
		res.Rescued = m["orderd_sweep_rescued_total"]
	}
	if err := d.stop(); err != nil {
		return res, err
	}
	sh := shapeOf("orderd")
	return collect(ctx, store, res, created, first, sh.moved, sh.stock)
}

// startServe starts `orderd serve` on a free port with the traffic
// scenario's pay timeout, and returns its address and a function that stops
// it.
func startServe(ctx context.Context, c config) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(c.orderd, "serve", "--redis-url", c.redisURL, "--db", c.mysqlBase+"/"+benchDB,
		"--addr", addr, "--pay-timeout", trafficPayTimeout.String(), "--jwt-secret", benchSecret,
		"--log-format", "json", "--log-level", "warn")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(os.Stderr, "   serve:", sc.Text())
		}
	}()
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return addr, stop, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return "", nil, fmt.Errorf("orderd serve did not answer within 30 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// createOrders posts orders to serve at rate per second for d, from 100
// users in turn, each order one unit of the bench SKU, and returns how many
// were created, how many refused, and when the first was sent. The sends
// are paced by the clock, not by the answers: a slow server gets the same
// load (up to 256 requests in flight).
func createOrders(ctx context.Context, base string, rate int, d time.Duration) (created, failed int, first time.Time, err error) {
	const users = 100
	tokens := make([]string, users)
	for i := range users {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": strconv.Itoa(i + 1), "exp": time.Now().Add(time.Hour).Unix()})
		if tokens[i], err = tok.SignedString([]byte(benchSecret)); err != nil {
			return 0, 0, first, err
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}}
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	n := int(float64(rate) * d.Seconds())
	first = time.Now()
	for i := range n {
		at := first.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if wait := time.Until(at); wait > 0 {
			select {
			case <-ctx.Done():
				return int(ok.Load()), int(bad.Load()), first, ctx.Err()
			case <-time.After(wait):
			}
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/orders", strings.NewReader(`{"sku":1,"qty":1}`))
			req.Header.Set("Authorization", "Bearer "+tokens[i%users])
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				bad.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 201 {
				ok.Add(1)
			} else {
				bad.Add(1)
			}
		})
	}
	wg.Wait()
	return int(ok.Load()), int(bad.Load()), first, nil
}

// idleWindow is how long the idle scenario counts commands.
const idleWindow = 10 * time.Second

// runIdle starts `orderd listen` on an empty database and Redis, lets it
// settle, and counts the commands Redis processes for idleWindow: the cost
// of a listener with nothing to do, paid for as long as it runs. Redis
// serves the benchmark alone; the two INFO calls are taken off.
func runIdle(ctx context.Context, c config, rdb redis.UniversalClient) (result, error) {
	res := result{Scenario: "idle", Mode: "orderd", Listeners: 1}
	store, err := fresh(ctx, c, rdb)
	if err != nil {
		return res, err
	}
	defer store.Close()
	d, err := startDaemon(ctx, c, "orderd")
	if err != nil {
		return res, err
	}
	defer d.kill()
	select { // its start-up: leases taken, catch-up sweep, first checks
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(2 * time.Second):
	}
	commands := func() (float64, error) {
		info, err := rdb.Info(ctx, "stats").Result()
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				return strconv.ParseFloat(v, 64)
			}
		}
		return 0, fmt.Errorf("INFO stats has no total_commands_processed")
	}
	n0, err := commands()
	if err != nil {
		return res, err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(idleWindow):
	}
	n1, err := commands()
	if err != nil {
		return res, err
	}
	res.IdleCommandsPerS = (n1 - n0 - 1) / time.Since(start).Seconds()
	res.RSSMB = d.peakRSSMB()
	res.StockOK = true
	return res, d.stop()
}
