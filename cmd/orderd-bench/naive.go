package main

import (
	"context"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/exp/zapslog"

	"github.com/orderd/orderd/expiry"
	orderdaemon "github.com/orderd/orderd/order/daemon"
)

// naiveListen is the design orderd improves on, run as a daemon of its own
// (`orderd-bench naive-listen REDIS_URL DB_URL`) for the side-by-side runs:
// plain keyspace events handled one transaction per order by 8 workers (as
// the usual tutorial design), no due index, no sweep, and a reader that waits
// for its handlers. It is built here from the library, not shipped in orderd.
func naiveListen(redisURL, dbURL string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p, err := openPeer(ctx, redisURL, dbURL)
	if err != nil {
		return err
	}
	defer p.close()
	rdb, svc := p.rdb, p.svc
	log := slog.New(zapslog.NewHandler(p.log.Core()))
	mux := expiry.NewServeMux()
	mux.Use(expiry.Recover(log), expiry.Retry(expiry.RetryPolicy{}))
	orderdaemon.Register(mux, svc, orderdaemon.BatchConfig{Max: 1})
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{Workers: 8, QueueWait: time.Hour, Logger: log})

	// The metrics the benchmark reads, under orderd's names.
	reg := prometheus.NewRegistry()
	for name, f := range map[string]func(expiry.Stats) uint64{
		"orderd_events_dropped_total": func(s expiry.Stats) uint64 { return s.Dropped },
		"orderd_subscriptions_total":  func(s expiry.Stats) uint64 { return s.Subscriptions },
		"orderd_batch_size_sum":       func(s expiry.Stats) uint64 { return s.Handled }, // one order a transaction
		"orderd_batch_size_count":     func(s expiry.Stats) uint64 { return s.Handled },
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: name},
			func() float64 { return float64(f(l.Stats())) }))
	}
	go func() { _ = serveBenchMetrics(ctx, reg, p.log) }()
	return l.Run(ctx)
}
