package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/daemon"
	"github.com/orderd/orderd/order/httpapi"
)

type listenOptions struct {
	*globalOptions
	MetricsAddr     string
	SetNotifyConfig bool
	SkipNotifyCheck bool
	Workers         int
	BatchMax        int
	Reaper          bool
}

func newListenCmd(g *globalOptions) *cobra.Command {
	o := &listenOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "listen",
		Short: "Run the expiry daemon (under systemd, supervisor or nohup)",
		Long: `Run the expiry daemon: expire unpaid orders (order_pay:<id>) and confirm
receipt of shipped ones (order_confirm:<id>) when their Redis keys expire, and
sweep the database at start-up, after every reconnect and every
--sweep-interval for anything the events missed. Stops cleanly on SIGTERM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runtimeError(runListen(cmd.Context(), o))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.MetricsAddr, "metrics-addr", "127.0.0.1:9464", "serve /metrics and /healthz here (empty disables)")
	f.BoolVar(&o.SetNotifyConfig, "set-notify-config", false, "turn on expired-key events (notify-keyspace-events) if they are off")
	f.BoolVar(&o.SkipNotifyCheck, "skip-notify-check", false, "do not read notify-keyspace-events (for Redis services that disable CONFIG)")
	f.IntVar(&o.Workers, "workers", 2048, "concurrent expiry handlers (bounds the orders in flight)")
	f.IntVar(&o.BatchMax, "batch-max", 500, "most orders applied in one transaction (1: one transaction per order)")
	f.BoolVar(&o.Reaper, "reaper", true, "touch due timers so Redis announces them at once (false: wait for Redis to notice)")
	addConfigFlag(cmd, g)
	return cmd
}

// checkNotify makes sure Redis publishes expired-key events, or says what to do.
func checkNotify(ctx context.Context, o *listenOptions, d *deps) error {
	if o.SkipNotifyCheck {
		return nil
	}
	err := expiry.CheckNotify(ctx, d.rdb)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, expiry.ErrNotifyDisabled) && o.SetNotifyConfig:
		if err := expiry.EnableNotify(ctx, d.rdb); err != nil {
			return usageErrorf("--set-notify-config: %v", err)
		}
		o.log.Warn("turned on expired-key events (notify-keyspace-events) as asked; persist it in the Redis configuration")
		return nil
	case errors.Is(err, expiry.ErrNotifyDisabled):
		return usageErrorf("%v; or run with --set-notify-config to let orderd set it", err)
	case errors.Is(err, expiry.ErrConfigUnavailable):
		return usageErrorf("%v; once it is set, run with --skip-notify-check", err)
	default:
		return err
	}
}

// reapInterval is the listener's ReapInterval: its default, or none
// (--reaper=false).
func (o *listenOptions) reapInterval() time.Duration {
	if !o.Reaper {
		return -1
	}
	return 0
}

// notifyMode is what the listener does about notify-keyspace-events.
func (o *listenOptions) notifyMode() expiry.NotifyPolicy {
	switch {
	case o.SkipNotifyCheck:
		return expiry.NotifyIgnore
	case o.SetNotifyConfig:
		return expiry.NotifyEnable
	}
	return expiry.NotifyCheck
}

// serveOps serves /metrics and /healthz on --metrics-addr, if set: healthy
// while Redis and the database answer and the listener hears expired-key
// events. The returned wait blocks until the server stopped.
func (o *listenOptions) serveOps(ctx context.Context, m *daemonMetrics, d *deps, l *expiry.Listener) (wait func(), err error) {
	if o.MetricsAddr == "" {
		return func() {}, nil
	}
	health := func(ctx context.Context) httpapi.Problems {
		p := d.health(ctx)
		h := l.Health()
		if h.Notify != nil {
			p["notify"] = h.Notify.Error()
		}
		if h.Eviction != nil {
			p["eviction"] = h.Eviction.Error()
		}
		if !h.Subscribed {
			p["subscription"] = "not subscribed to expired-key events (yet): expirations are not heard"
		}
		return p
	}
	if wait, err = serveOps(ctx, o.MetricsAddr, m.reg, health, o.log); err != nil {
		return nil, usageErrorf("--metrics-addr %q: %v", o.MetricsAddr, err)
	}
	return wait, nil
}

// checkSizes refuses a --workers or --batch-max that is not positive.
func (o *listenOptions) checkSizes() error {
	if o.Workers <= 0 {
		return usageErrorf("--workers must be positive, not %d", o.Workers)
	}
	if o.BatchMax <= 0 {
		return usageErrorf("--batch-max must be positive, not %d", o.BatchMax)
	}
	return nil
}

func runListen(ctx context.Context, o *listenOptions) error {
	if o.config != nil && len(o.config.timers) > 0 {
		return runOwnTables(ctx, o)
	}
	if err := o.checkSizes(); err != nil {
		return err
	}
	d, err := o.openWith(ctx, serverSessions)
	if err != nil {
		return err
	}
	defer d.close()
	if err := checkNotify(ctx, o, d); err != nil {
		return err
	}
	ctx, stopSchema := d.watchSchema(ctx)
	defer stopSchema()

	m := newDaemonMetrics()
	cfg := o.serviceConfig(m.onTransition)
	cfg.GiveBacks = d.giveBacks
	defer d.startGiveBacks()() // stopped after the listener: its last give-backs land
	svc := order.NewService(d.store, d.counter, d.sched, cfg)
	var wakeRelay func()
	var l *daemon.Daemon
	listenerID := func() string {
		if l == nil {
			return ""
		}
		return l.ID()
	}
	l = daemon.New(svc, d.rdb, daemon.Config{
		OnStockRebuilt: m.onStockRebuilt,
		SweepInterval:  o.SweepInterval,
		Batch: daemon.BatchConfig{Max: o.BatchMax, OnBatch: func(timer string, size, moved int) {
			m.onBatch(timer, size, moved)
			if moved > 0 {
				wakeRelay()
			}
		}},
		Logger:  o.log,
		OnSweep: m.recordSweeps(d.rdb, d.sched.Index(), listenerID),
		OnSwept: m.onSwept,
		PingDB:  d.store.Ping,
		Leases:  d.store,
		Listener: expiry.ListenerConfig{
			Scheduler:    d.sched,
			Notify:       o.notifyMode(),
			Sentinel:     o.redis.sentinel,
			Workers:      o.Workers,
			ReapInterval: o.reapInterval(),
		},
	})
	m.watchListener(l.Listener)
	m.timers(timerNames(daemon.BuiltIn(svc))...)
	wakeRelay, stopRelay := o.startRelay(d, l.ID(), m.reg)
	// Stopped after the listener: what its last batches committed is relayed.
	defer stopRelay()
	m.reg.MustRegister(newOrdersCollector(d.store, o.log))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orderd_sweep_interval_seconds", Help: "The --sweep-interval: overdue orders older than this were missed by the sweep too.",
	}, func() float64 { return o.SweepInterval.Seconds() }))
	wait, err := o.serveOps(ctx, m, d, l.Listener)
	if err != nil {
		return err
	}
	o.log.Info("orderd listen starting", zap.Stringer("redis", o.redis), zap.Int("redis_db", o.redis.db()),
		zap.String("key_prefix", o.KeyPrefix), zap.Duration("sweep_interval", o.SweepInterval))
	err = l.Run(ctx)
	wait()
	if err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	if err := schemaError(ctx); err != nil {
		return err
	}
	s := l.Stats()
	o.log.Info("orderd listen stopped", zap.Uint64("received", s.Received), zap.Uint64("handled", s.Handled),
		zap.Uint64("failed", s.Failed), zap.Uint64("dropped", s.Dropped))
	return nil
}
