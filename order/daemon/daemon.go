// Package daemon is the order expiry daemon (`orderd listen`) as a library:
// it wires an expiry.Listener to an order.Service, routing expired
// order_pay:<id> keys to ExpireOrders and order_confirm:<id> keys to
// CompleteOrders in batches, sweeping the database for what the events
// missed, and mending Redis stock counters that lost a give-back.
package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
)

// Config configures the daemon built by New. The key prefix stripped from
// expired keys is the service's (order.Keys).
type Config struct {
	// SweepInterval is the pause between periodic sweeps. If zero, 30 s is used.
	SweepInterval time.Duration
	// SweepGrace is how long past its deadline a periodic sweep leaves an
	// order to the event path, so that what the sweep moves (counted as
	// rescued) was really missed by the events. Catch-up sweeps (at start-up,
	// after a resubscription or dropped events) take every overdue order. If
	// zero, 1 s is used, or a quarter of SweepInterval when that is shorter.
	SweepGrace time.Duration
	// Workers is the number of concurrent handlers. A handler waits for its
	// batch's transaction, so Workers bounds the orders in flight: a few
	// times Batch.Max lets one batch fill while others commit.
	// If zero, 2,048 are used.
	Workers int
	// Batch groups events into transactions.
	Batch BatchConfig
	// Scheduler, when set, is reaped so that timers fire on time, and daemons
	// given Schedulers of the same due index share the work: each reaps its
	// share of the shards and handles their events, and one at a time runs
	// the periodic sweep (expiry.ListenerConfig.Scheduler).
	Scheduler *expiry.Scheduler
	// ReapInterval is passed to the listener: the pause between reaper
	// rounds. If zero, the listener's default (10 ms) is used; if negative,
	// timers are not reaped (they fire when Redis notices them expired).
	ReapInterval time.Duration
	// ID names this daemon among those sharing the due index. If empty, the
	// listener makes one of the host name and the process id.
	ID string
	// LeaseTTL is passed to the listener: how long the leases of a daemon
	// that died hold its shards and the sweep. If zero, 5 s is used.
	LeaseTTL time.Duration
	// OnShards, if set, is told what the daemon holds whenever it changes.
	OnShards func(held []string, sweeps bool)
	// Logger receives the daemon's log lines. If nil, nothing is logged.
	Logger *zap.Logger
	// OnSweep, if set, is told the outcome of every sweep.
	OnSweep func(moved int, err error)
	// OnStockRebuilt, if set, is told how many Redis stock counters each
	// stock check (after every periodic sweep) rebuilt from the database.
	OnStockRebuilt func(n int)
	// Sentinel is passed to the listener: the failover client's options, when
	// the client is one, so that the subscription follows the master.
	Sentinel *redis.FailoverOptions
	// ShutdownTimeout is passed to the listener: how long it waits, once
	// stopped, for in-flight work. If zero, the listener's default is used.
	ShutdownTimeout time.Duration
	// Notify is passed to the listener: what it does about Redis's
	// notify-keyspace-events after every subscription and periodically.
	Notify expiry.NotifyPolicy
	// QueueWait is passed to the listener: how long its reader may wait for
	// room in a full queue. If zero, it drops at once (and a sweep catches up).
	QueueWait time.Duration
}

// New returns the daemon: an expiry.Listener routing order_pay: and
// order_confirm: keys to the service in batches, sweeping the database at
// start-up, after every resubscription and every SweepInterval, and after
// every periodic sweep mending Redis stock counters that lost a give-back
// (ReconcileStock). Catch-up sweeps run on the daemon that may have missed
// events, over the orders whose events it handles (with a Scheduler shared
// by several daemons: those of the shards it holds); one daemon at a time
// runs the periodic sweep, over every overdue order, and the stock check.
func New(s *order.Service, client redis.UniversalClient, cfg Config) *expiry.Listener {
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 30 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2048
	}
	if cfg.SweepGrace <= 0 {
		cfg.SweepGrace = min(time.Second, cfg.SweepInterval/4)
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	mux := expiry.NewServeMux()
	mux.Use(expiry.Recover(log), expiry.Retry(expiry.RetryPolicy{}))
	Register(mux, s, cfg.Batch)
	if sc := cfg.Scheduler; sc != nil && sc.KeyPrefix() != "" && sc.KeyPrefix() != s.Keys().Prefix {
		panic("daemon: the Scheduler's KeyPrefix differs from the service's key prefix")
	}

	var l *expiry.Listener // set below; the sweeps run only once it runs
	keys := s.Keys()
	// A catch-up takes the orders whose events this daemon handles: those of
	// the shards it holds (and of free ones). The others' events were not lost.
	mine := func(st order.Status, id int64) bool {
		if st == order.Shipped {
			return l.Handles(keys.Confirm(id))
		}
		return l.Handles(keys.Pay(id))
	}
	var mu sync.Mutex // sweeps never overlap
	sweepOnce := func(ctx context.Context, reason string, olderThan time.Duration, keep func(order.Status, int64) bool) {
		mu.Lock()
		defer mu.Unlock()
		start := time.Now()
		n, err := s.SweepWhere(ctx, olderThan, keep)
		if cfg.OnSweep != nil {
			cfg.OnSweep(n, err)
		}
		switch {
		case err != nil && ctx.Err() != nil:
			log.Info("sweep stopped: shutting down (the next start takes the rest)", zap.String("reason", reason), zap.Int("moved", n))
		case err != nil:
			log.Error("sweep failed", zap.String("reason", reason), zap.Int("moved", n), zap.Error(err))
		case n > 0:
			log.Info("sweep moved overdue orders", zap.String("reason", reason), zap.Int("moved", n), zap.Duration("took", time.Since(start)))
		default:
			log.Debug("sweep found nothing overdue", zap.String("reason", reason))
		}
	}
	catchUp := func(reason string) func(context.Context) {
		return func(ctx context.Context) { sweepOnce(ctx, reason, 0, mine) }
	}
	periodic := func(ctx context.Context) {
		sweepOnce(ctx, "interval", cfg.SweepGrace, nil) // the safety net: every overdue order, whoever's
		if ctx.Err() != nil {
			return
		}
		fixed, err := s.ReconcileStock(ctx)
		if err != nil && ctx.Err() == nil {
			log.Error("stock check failed", zap.Error(err))
		}
		if cfg.OnStockRebuilt != nil {
			cfg.OnStockRebuilt(fixed)
		}
	}
	lc := expiry.ListenerConfig{
		KeyPrefix:       s.Keys().Prefix,
		Workers:         cfg.Workers,
		QueueWait:       cfg.QueueWait,
		OnSubscribe:     catchUp("subscribed"),
		OnDrop:          catchUp("events dropped"),
		Interval:        cfg.SweepInterval,
		OnInterval:      periodic,
		Scheduler:       cfg.Scheduler,
		ReapInterval:    cfg.ReapInterval,
		ID:              cfg.ID,
		LeaseTTL:        cfg.LeaseTTL,
		OnShards:        cfg.OnShards,
		Notify:          cfg.Notify,
		Sentinel:        cfg.Sentinel,
		ShutdownTimeout: cfg.ShutdownTimeout,
		Logger:          log,
	}
	l = expiry.NewListener(client, mux, lc)
	return l
}
