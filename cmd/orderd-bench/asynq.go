package main

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
)

// The peer: hibiken/asynq, a delayed task per order in a sorted set that the
// server's forwarder moves to the pending list every
// DelayedTaskCheckInterval (5 s by default), handled by a worker each.
const (
	asynqPayTask     = "order:pay_timeout"
	asynqConfirmTask = "order:confirm_timeout"
)

// asynqModes are the benchmark's asynq modes and their forwarder's interval
// (0: asynq's default, 5 s).
var asynqModes = map[string]time.Duration{"asynq": 0, "asynq-100ms": 100 * time.Millisecond}

func isAsynq(mode string) bool { _, ok := asynqModes[mode]; return ok }

// asynqListen is the daemon an asynq user would write for pay timeouts
// (`orderd-bench asynq-listen REDIS_URL DB_URL INTERVAL`): an asynq server
// with its default settings but the forwarder's interval, whose handler
// expires the order in one transaction if it is still pending and gives its
// stock back (orderd's own Service, one order at a time).
func asynqListen(redisURL, dbURL, interval string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	every, err := time.ParseDuration(interval)
	if err != nil {
		return err
	}
	p, err := openPeer(ctx, redisURL, dbURL)
	if err != nil {
		return err
	}
	defer p.close()
	log, rdb, svc := p.log, p.rdb, p.svc

	var handled atomic.Uint64
	mux := asynq.NewServeMux()
	mux.HandleFunc(asynqPayTask, func(ctx context.Context, t *asynq.Task) error {
		id, err := strconv.ParseInt(string(t.Payload()), 10, 64)
		if err != nil {
			return fmt.Errorf("%w: bad order id %q", asynq.SkipRetry, t.Payload())
		}
		if _, err := svc.ExpireOrders(ctx, []int64{id}, order.SourceEvent); err != nil {
			return err
		}
		handled.Add(1)
		return nil
	})
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{DelayedTaskCheckInterval: every, LogLevel: asynq.WarnLevel})
	if err := srv.Start(mux); err != nil {
		return err
	}
	defer srv.Shutdown()
	log.Info("subscribed") // what the benchmark waits for: the server runs

	// The metrics the benchmark reads, under orderd's names.
	reg := prometheus.NewRegistry()
	for _, name := range []string{"orderd_batch_size_sum", "orderd_batch_size_count"} { // one order a transaction
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: name},
			func() float64 { return float64(handled.Load()) }))
	}
	return serveBenchMetrics(ctx, reg, log)
}

// serveBenchMetrics serves reg's metrics on a loopback port, logs the address
// as `orderd listen` does (the benchmark reads it from the log), and returns
// when ctx ends.
func serveBenchMetrics(ctx context.Context, reg *prometheus.Registry, log *zap.Logger) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	log.Info("serving /metrics and /healthz", zap.String("addr", ln.Addr().String()))
	<-ctx.Done()
	return nil
}

// enqueueTimers schedules a task per timer, processed at its deadline, as an
// asynq user's API does when an order is created (many at once: Enqueue is
// one round trip a task).
func enqueueTimers(ctx context.Context, rdb redis.UniversalClient, timers []expiry.Timer) error {
	client := asynq.NewClientFromRedisClient(rdb)
	const workers = 32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := atomic.Int64{}
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(timers) {
					return
				}
				t := timers[i]
				typ, id := asynqPayTask, strings.TrimPrefix(t.Key, "order_pay:")
				if rest, ok := strings.CutPrefix(t.Key, "order_confirm:"); ok {
					typ, id = asynqConfirmTask, rest
				}
				// asynq keeps a task's time in whole seconds and runs it in
				// the second it names, up to a second early: an order must
				// not expire before its deadline, so the task goes to the
				// next whole second, as a careful asynq user would do.
				at := t.Deadline
				if at.Truncate(time.Second) != at {
					at = at.Truncate(time.Second).Add(time.Second)
				}
				if _, err := client.EnqueueContext(ctx, asynq.NewTask(typ, []byte(id)), asynq.ProcessAt(at)); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}
