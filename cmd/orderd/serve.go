package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
)

type serveOptions struct {
	*globalOptions
	Addr string
}

func newServeCmd(g *globalOptions) *cobra.Command {
	o := &serveOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the order HTTP API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runtimeError(runServe(cmd.Context(), o))
		},
	}
	cmd.Flags().StringVar(&o.Addr, "addr", "127.0.0.1:8080", "listen address of the HTTP API")
	return cmd
}

// evictionCheckInterval is how often serve reads Redis's maxmemory-policy.
const evictionCheckInterval = 10 * time.Second

// evictionWatch is what serve knows of Redis's maxmemory-policy: one that may
// evict keys without a TTL (allkeys-*) can silently drop the stock counters,
// the transitions stream and the due index. (listen's listener checks it
// itself, with expired-key events.)
type evictionWatch struct {
	rdb redis.UniversalClient
	log *zap.Logger
	err atomic.Pointer[string]
}

func (w *evictionWatch) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.check(ctx)
		}
	}
}

func (w *evictionWatch) check(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := expiry.CheckEviction(ctx, w.rdb)
	switch {
	case err == nil:
		if w.err.Swap(nil) != nil {
			w.log.Info("Redis keeps keys without a TTL again (maxmemory-policy)")
		}
	case errors.Is(err, expiry.ErrEvictionUnsafe):
		msg := err.Error()
		if prev := w.err.Swap(&msg); prev == nil || *prev != msg {
			w.log.Error("Redis may evict keys without a TTL: stock counters, the transitions stream and timers can vanish silently", zap.Error(err))
		}
	default:
		w.log.Debug("maxmemory-policy not read", zap.Error(err))
	}
}

// problem is the last check's finding, or "" when the policy is safe.
func (w *evictionWatch) problem() string {
	if p := w.err.Load(); p != nil {
		return *p
	}
	return ""
}

func runServe(ctx context.Context, o *serveOptions) error {
	secret, err := o.secret("serve refuses to start without one")
	if err != nil {
		return err
	}
	d, err := o.openWith(ctx, serverSessions)
	if err != nil {
		return err
	}
	defer d.close()
	ctx, stopSchema := d.watchSchema(ctx)
	defer stopSchema()
	// A sold-out SKU costs no Redis call for a second; units coming back
	// anywhere (an expiry, a cancel, a restock) clear the flag at once.
	d.counter.CacheSoldOut(time.Second)
	// maxmemory-policy is read at start, after every (re)subscription (a
	// Redis restarted may have other settings) and every 10 s.
	ev := &evictionWatch{rdb: d.rdb, log: o.log}
	ev.check(ctx)
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		d.counter.WatchRestocks(wctx, func() { go ev.check(wctx) })
	}()
	defer func() { stopWatch(); <-watched }()
	go ev.run(wctx, evictionCheckInterval)

	cfg := o.serviceConfig(nil)
	cfg.GiveBacks = d.giveBacks
	defer d.startGiveBacks()()
	svc := order.NewService(d.store, d.counter, d.sched, cfg)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), dbRetries)
	_, stopRelay := o.startRelay(d, "", reg)
	defer stopRelay()
	reg.MustRegister(evictionGauge(func() bool { return ev.problem() != "" }))
	health := func(ctx context.Context) httpapi.Problems {
		p := d.health(ctx)
		if e := ev.problem(); e != "" {
			p["eviction"] = e
		}
		return p
	}
	h, err := httpapi.New(svc, httpapi.Config{JWTSecret: secret, Logger: o.log, Registry: reg, Health: health})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return usageErrorf("--addr %q: %v", o.Addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(o.log),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	o.log.Info("orderd serve listening", zap.String("addr", ln.Addr().String()))

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	o.log.Info("stopping: finishing in-flight requests")
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	o.log.Info("orderd serve stopped")
	return schemaError(ctx)
}
