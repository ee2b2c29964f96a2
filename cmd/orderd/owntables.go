package main

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order/daemon"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/sqltimer"
)

// runOwnTables is orderd listen with the timers of a configuration file: it
// runs them against the shop's own database (--db), with the engine the
// built-in timers run on, and creates nothing there.
func runOwnTables(ctx context.Context, o *listenOptions) error {
	cf := o.config
	for _, tc := range cf.timers {
		if tc.Webhook != nil {
			return usageErrorf("config %s: timer %q: webhook timers are not run by this version of orderd; use claim and apply", cf.path, tc.Name)
		}
	}
	if err := o.checkSizes(); err != nil {
		return err
	}
	rdb := o.redis.client()
	defer rdb.Close()
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := rdb.Ping(pingCtx).Err()
	cancel()
	if err != nil {
		if redisRefuses(err) {
			return usageErrorf("--redis-url: Redis at %s refuses the settings: %v", o.redis, err)
		}
		return runtimeError(fmt.Errorf("redis at %s does not answer (--redis-url): %w", o.redis, err))
	}
	store, err := sqlstore.OpenWith(ctx, o.DB, serverSessions) // sessions only: the shop's schema is its own
	if err != nil {
		if sqlstore.IsConfigError(err) {
			return usageErrorf("--db: %v", err)
		}
		return runtimeError(fmt.Errorf("database (--db): %w", err))
	}
	defer store.Close()

	var timers []daemon.Timer
	for _, tc := range cf.timers {
		ids := sqltimer.IntIDs
		if tc.ID == "string" {
			ids = sqltimer.StringIDs
		}
		t, err := sqltimer.New(store.DB().DB, sqltimer.Config{Name: tc.Name, IDs: ids, Claim: tc.Claim, Apply: tc.Apply, Sweep: tc.Sweep, Deadline: tc.Deadline})
		if err == nil {
			err = t.Check(ctx)
		}
		if err != nil {
			return usageErrorf("config %s: %v", cf.path, err)
		}
		timers = append(timers, daemon.SQLTimer(t, tc.Key, orDefault(tc.BatchMax, o.BatchMax)))
	}
	d := &deps{rdb: rdb, store: store}
	if err := checkNotify(ctx, o, d); err != nil {
		return err
	}
	reap := time.Duration(0) // the listener's default
	if !o.Reaper {
		reap = -1
	}
	notify := expiry.NotifyCheck
	switch {
	case o.SkipNotifyCheck:
		notify = expiry.NotifyIgnore
	case o.SetNotifyConfig:
		notify = expiry.NotifyEnable
	}
	keys := o.keys()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: keys.Prefix, Index: keys.DueIndex()})
	m := newDaemonMetrics()
	l := daemon.NewTimers(rdb, keys.Prefix, timers, daemon.Config{
		SweepInterval: o.SweepInterval,
		Batch:         daemon.BatchConfig{Max: o.BatchMax, OnBatch: m.onBatch},
		Logger:        o.log,
		OnSweep:       m.onSweep,
		OnSwept:       m.onSwept,
		PingDB:        store.Ping,
		Listener: expiry.ListenerConfig{
			Scheduler:    sched,
			Notify:       notify,
			Sentinel:     o.redis.sentinel,
			Workers:      o.Workers,
			ReapInterval: reap,
		},
	}, nil)
	m.watchListener(l.Listener)
	m.timers(timerNames(timers)...)
	wait := func() {}
	if o.MetricsAddr != "" {
		health := func(ctx context.Context) httpapi.Problems {
			p := d.health(ctx)
			h := l.Health()
			if h.Notify != nil {
				p["notify"] = h.Notify.Error()
			}
			if !h.Subscribed {
				p["subscription"] = "not subscribed to expired-key events (yet): expirations are not heard"
			}
			return p
		}
		if wait, err = serveOps(ctx, o.MetricsAddr, m.reg, health, o.log); err != nil {
			return usageErrorf("--metrics-addr %q: %v", o.MetricsAddr, err)
		}
	}
	o.log.Info("orderd listen starting on your own tables", zap.String("config", cf.path), zap.Strings("timers", timerNames(timers)),
		zap.Stringer("redis", o.redis), zap.Int("redis_db", o.redis.db()), zap.String("key_prefix", o.KeyPrefix),
		zap.Duration("sweep_interval", o.SweepInterval))
	err = l.Run(ctx)
	wait()
	if err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	s := l.Stats()
	o.log.Info("orderd listen stopped", zap.Uint64("received", s.Received), zap.Uint64("handled", s.Handled),
		zap.Uint64("failed", s.Failed), zap.Uint64("dropped", s.Dropped))
	return nil
}

// orDefault returns a when it is set (positive), else b.
func orDefault(a, b int) int {
	if a > 0 {
		return a
	}
	return b
}

func timerNames(timers []daemon.Timer) []string {
	names := make([]string, len(timers))
	for i, t := range timers {
		names[i] = t.Name()
	}
	return names
}
