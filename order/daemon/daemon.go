// Package daemon is the order expiry daemon (`orderd listen`) as a library:
// it wires an expiry.Listener to an order.Service, routing expired
// order_pay:<id> keys to ExpireOrders and order_confirm:<id> keys to
// CompleteOrders in batches, sweeping the database for what the events
// missed, and mending Redis stock counters that lost a give-back.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

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
	// Batch groups events into transactions.
	Batch BatchConfig
	// Listener configures the expiry.Listener under the daemon: its
	// Scheduler (reaped so that timers fire on time; daemons given
	// Schedulers of the same due index share the work, each reaping its
	// share of the shards and handling their events, one at a time running
	// the periodic sweep), ID, Workers, QueueWait, ReapInterval, LeaseTTL,
	// Sentinel, Notify, ShutdownTimeout, MaxAttempts, RetryDelay and
	// OnShards (told what the daemon holds whenever it changes). The daemon
	// sets KeyPrefix (the service's), the hooks (its sweeps) and, when
	// Logger is nil, a bridge to its own logger. Workers, if zero, is 2,048
	// here: a handler waits for its batch's transaction, so Workers bounds
	// the orders in flight (a few times Batch.Max lets one batch fill while
	// others commit).
	Listener expiry.ListenerConfig
	// Logger receives the daemon's log lines. If nil, nothing is logged.
	Logger *zap.Logger
	// OnSweep, if set, is told the outcome of every sweep.
	OnSweep func(moved int, err error)
	// OnSwept, if set, is told how many of each timer's records every sweep
	// moved.
	OnSwept func(timer string, moved int)
	// OnStockRebuilt, if set, is told how many Redis stock counters each
	// stock check (after every periodic sweep) rebuilt from the database.
	OnStockRebuilt func(n int)
	// PingDB, if set, is how the daemon checks its database every
	// DBCheckInterval: when it has not answered for DBDownAfter, the daemon
	// gives its shards to the other daemons (expiry.Listener.SetStandby)
	// and takes a share again once it answers.
	PingDB func(ctx context.Context) error
	// DBCheckInterval is the pause between database checks. If zero, 1 s
	// is used.
	DBCheckInterval time.Duration
	// DBDownAfter is how long the database may fail to answer before the
	// daemon stands by. If zero, 3 s is used.
	DBDownAfter time.Duration
	// Leases, if set, are database leases (sqlstore.Store has them): while
	// Redis does not answer, and with it the sweep's lease in Redis, one
	// daemon at a time, holding the database lease "sweep", goes on
	// sweeping every quarter SweepInterval, so that orders are still closed
	// within SweepInterval of their deadlines.
	Leases Leases
}

// Leases are leases kept in the database: a conditional update on a row
// with an expiry decides the holder, with the database's clock.
type Leases interface {
	// ClaimLease takes the lease name for holder for ttl, or renews it when
	// holder has it, and reports whether holder has it now.
	ClaimLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	// ReleaseLease gives the lease up if holder has it.
	ReleaseLease(ctx context.Context, name, holder string) error
}

// Defaults of Config.
const (
	defaultSweepInterval   = 30 * time.Second
	defaultWorkers         = 2048
	defaultDBCheckInterval = time.Second
	defaultDBDownAfter     = 3 * time.Second
)

// Daemon is the order expiry daemon: an expiry.Listener (its methods are the
// daemon's) routing order timers to the service, and the parts around it
// that Run runs with it: the catch-up after shards are taken over, the
// database check, and the sweep that goes on under a database lease while
// Redis does not answer.
type Daemon struct {
	*expiry.Listener
	client    redis.UniversalClient
	keyPrefix string
	timers    []Timer
	cfg       Config
	log       *zap.Logger

	sweep     func(ctx context.Context, reason string, olderThan time.Duration, keep func(Timer, string) bool)
	mine      func(Timer, string) bool
	takenKick chan struct{}
}

// New returns the daemon: an expiry.Listener routing order_pay: and
// order_confirm: keys to the service in batches, sweeping the database at
// start-up, after every resubscription, after it takes shards over from
// another daemon and every SweepInterval, and after every periodic sweep
// mending Redis stock counters that lost a give-back (ReconcileStock).
// Catch-up sweeps run on the daemon that may have missed events, over the
// orders whose events it handles (with a Scheduler shared by several
// daemons: those of the shards it holds); one daemon at a time runs the
// periodic sweep, over every overdue order, and the stock check.
//
// A batch commits only while the daemon surely holds the shards of its
// timers (a fence checked just before the commit): a daemon that paused
// past its leases rolls back, and the shard's new holder, which sweeps
// what it took over, moves those orders instead.
//
// A configuration that cannot work (a Scheduler whose KeyPrefix differs from
// the service's keys) is returned by Run, wrapping expiry.ErrInvalidConfig.
func New(s *order.Service, client redis.UniversalClient, cfg Config) *Daemon {
	log := cfg.Logger
	return NewTimers(client, s.Keys().Prefix, BuiltIn(s), cfg, func(ctx context.Context) {
		fixed, err := s.ReconcileStock(ctx)
		if err != nil && ctx.Err() == nil && log != nil {
			log.Error("stock check failed", zap.Error(err))
		}
		if cfg.OnStockRebuilt != nil {
			cfg.OnStockRebuilt(fixed)
		}
	})
}

// NewTimers returns a daemon running timers, whose keys start with
// keyPrefix and then each timer's Prefix, as New does the built-in ones:
// batches, sweeps at start-up, after every resubscription, after shards
// are taken over and every SweepInterval, fences. afterSweep, if not nil,
// runs after every periodic sweep, on the daemon that ran it. Ids a batch
// finds not due yet (Applied.NotDue) get their timers set again, through
// the Scheduler when there is one.
func NewTimers(client redis.UniversalClient, keyPrefix string, timers []Timer, cfg Config, afterSweep func(context.Context)) *Daemon {
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = defaultSweepInterval
	}
	if cfg.Listener.Workers == 0 {
		cfg.Listener.Workers = defaultWorkers
	}
	if cfg.SweepGrace <= 0 {
		cfg.SweepGrace = min(time.Second, cfg.SweepInterval/4)
	}
	if cfg.DBCheckInterval <= 0 {
		cfg.DBCheckInterval = defaultDBCheckInterval
	}
	if cfg.DBDownAfter <= 0 {
		cfg.DBDownAfter = defaultDBDownAfter
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	d := &Daemon{client: client, keyPrefix: keyPrefix, timers: timers, cfg: cfg, log: log, takenKick: make(chan struct{}, 1)}

	// A catch-up takes the timers whose events this daemon handles: those of
	// the shards it holds (and of free ones). The others' events were not lost.
	d.mine = func(t Timer, id string) bool { return d.Handles(keyPrefix + t.Prefix() + id) }
	mux := expiry.NewServeMux()
	// A batch skips records another transaction holds (order.ErrBusy) and
	// asks again, for longer than the server takes to end a frozen
	// transaction (2 s).
	slogger := slog.New(zapslog.NewHandler(log.Core())) // the library logs through log/slog
	mux.Use(expiry.Recover(slogger), expiry.Retry(expiry.RetryPolicy{Attempts: 8, Max: time.Second}), d.leaveTheirs)
	register(mux, timers, cfg.Batch, d.fence, d.applied)

	var mu sync.Mutex // sweeps never overlap
	d.sweep = func(ctx context.Context, reason string, olderThan time.Duration, keep func(Timer, string) bool) {
		mu.Lock()
		defer mu.Unlock()
		start := time.Now()
		n := 0
		var err error
		for _, t := range timers {
			var k func(string) bool
			if keep != nil {
				k = func(id string) bool { return keep(t, id) }
			}
			var moved int
			moved, err = t.Sweep(ctx, olderThan, k)
			n += moved
			if cfg.OnSwept != nil && moved > 0 {
				cfg.OnSwept(t.Name(), moved)
			}
			if err != nil {
				err = fmt.Errorf("timer %s: %w", t.Name(), err)
				break
			}
		}
		if cfg.OnSweep != nil {
			cfg.OnSweep(n, err)
		}
		switch {
		case err != nil && ctx.Err() != nil:
			log.Info("sweep stopped: shutting down (the next start takes the rest)", zap.String("reason", reason), zap.Int("moved", n))
		case err != nil:
			log.Error("sweep failed", zap.String("reason", reason), zap.Int("moved", n), zap.Error(err))
		case n > 0:
			log.Info("sweep moved overdue timers", zap.String("reason", reason), zap.Int("moved", n), zap.Duration("took", time.Since(start)))
		default:
			log.Debug("sweep found nothing overdue", zap.String("reason", reason))
		}
	}
	catchUp := func(reason string) func(context.Context) {
		return func(ctx context.Context) { d.sweep(ctx, reason, 0, d.mine) }
	}
	periodic := func(ctx context.Context) {
		d.sweep(ctx, "interval", cfg.SweepGrace, nil) // the safety net: every overdue timer, whoever's
		if ctx.Err() == nil && afterSweep != nil {
			afterSweep(ctx)
		}
	}
	var held []string // called from one goroutine: the lease keeper's
	onShards := func(now []string, sweeps bool) {
		for _, sh := range now {
			if !slices.Contains(held, sh) {
				trigger(d.takenKick) // its former holder may have died or paused with timers in hand
				break
			}
		}
		held = now
		if f := cfg.Listener.OnShards; f != nil {
			f(now, sweeps)
		}
	}
	lc := cfg.Listener
	lc.KeyPrefix = keyPrefix
	lc.OnSubscribe, lc.OnDrop = catchUp("subscribed"), catchUp("events dropped")
	lc.Interval, lc.OnInterval = cfg.SweepInterval, periodic
	lc.OnShards = onShards
	if lc.Logger == nil {
		lc.Logger = slogger
	}
	d.Listener = expiry.NewListener(client, mux, lc)
	return d
}

// applied sets again the timers of t that a batch found not due yet, and
// tells the listener that those timers (and those the timer set again
// itself) are new ones: their next expiry is not a repeat of what it handled.
func (d *Daemon) applied(ctx context.Context, t Timer, a Applied) {
	if len(a.NotDue) > 0 {
		d.rearm(ctx, t, a.NotDue)
	}
	if len(a.Rearmed) > 0 {
		keys := make([]string, len(a.Rearmed))
		for i, id := range a.Rearmed {
			keys[i] = d.keyPrefix + t.Prefix() + id
		}
		d.Forget(keys...)
	}
}

// rearm sets again the timers of t that a batch found not due yet, for the
// time they have left.
func (d *Daemon) rearm(ctx context.Context, t Timer, left map[string]time.Duration) {
	now := time.Now()
	var err error
	if s := d.cfg.Listener.Scheduler; s != nil {
		timers := make([]expiry.Timer, 0, len(left))
		keys := make([]string, 0, len(left))
		for id, l := range left {
			keys = append(keys, d.keyPrefix+t.Prefix()+id)
			timers = append(timers, expiry.Timer{Key: keys[len(keys)-1], Deadline: now.Add(l)})
		}
		if err = s.ScheduleMany(ctx, timers...); err == nil {
			d.Forget(keys...) // the next expiry of these keys is a new timer
		}
	} else {
		_, err = d.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for id, l := range left {
				p.Set(ctx, d.keyPrefix+t.Prefix()+id, "1", max(l, time.Millisecond))
			}
			return nil
		})
	}
	if err != nil {
		d.log.Warn("timers not due yet not set again: the sweep takes them once due", zap.String("timer", t.Name()),
			zap.Int("timers", len(left)), zap.Error(err))
	}
}

// trigger asks for one more run of a part, without waiting.
func trigger(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// leaveTheirs drops an event whose key's shard another daemon has taken
// since it was queued (this one paused, or handed the shard over): the new
// holder sweeps the overdue orders of what it takes over.
func (d *Daemon) leaveTheirs(next expiry.Handler) expiry.Handler {
	return expiry.HandlerFunc(func(ctx context.Context, ev expiry.Event) error {
		if !d.Handles(ev.RawKey) {
			return nil
		}
		return next.HandleExpired(ctx, ev)
	})
}

// fence says whether this daemon may still commit a batch of the timers
// of t with ids: it must surely hold their shards (a daemon that paused
// past its leases must not).
func (d *Daemon) fence(t Timer, ids []string) error {
	sched := d.cfg.Listener.Scheduler
	if sched == nil {
		return nil
	}
	p := d.keyPrefix + t.Prefix()
	checked := map[int]bool{} // one look per shard, not per timer
	for _, id := range ids {
		key := p + id
		if n := sched.ShardOf(key); !checked[n] {
			if !d.Surely(key) {
				return fmt.Errorf("the shard of %s is no longer surely this daemon's", key)
			}
			checked[n] = true
		}
	}
	return nil
}

// Run runs the daemon until ctx ends: the listener, and beside it the
// catch-up after a take-over, the database check (with PingDB) and the
// sweep under a database lease (with Leases). It returns the listener's
// error.
func (d *Daemon) Run(ctx context.Context) error {
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { d.catchUpTaken(pctx) })
	if d.cfg.PingDB != nil {
		wg.Go(func() { d.watchDB(pctx) })
	}
	if d.cfg.Leases != nil {
		wg.Go(func() { d.sweepWithoutRedis(pctx) })
	}
	err := d.Listener.Run(ctx)
	cancel()
	wg.Wait()
	return err
}

// catchUpTaken sweeps the orders of the shards this daemon holds each time
// it takes shards over: their former holder may have died or paused with
// timers it had reaped, or events it had queued, not yet committed.
func (d *Daemon) catchUpTaken(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.takenKick:
		}
		d.sweep(ctx, "shards taken over", 0, d.mine)
	}
}

// watchDB checks the database every DBCheckInterval; once it has not
// answered for DBDownAfter, the daemon stands by (its shards go to the
// others) until it answers again.
func (d *Daemon) watchDB(ctx context.Context) {
	t := time.NewTicker(d.cfg.DBCheckInterval)
	defer t.Stop()
	var failingSince time.Time
	standby := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, d.cfg.DBCheckInterval)
		err := d.cfg.PingDB(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			failingSince = time.Time{}
			if standby {
				standby = false
				d.log.Info("the database answers again: taking a share of the shards")
				d.SetStandby(false)
			}
		case failingSince.IsZero():
			failingSince = time.Now()
		case !standby && time.Since(failingSince) >= d.cfg.DBDownAfter:
			standby = true
			d.log.Error("the database does not answer: handing this daemon's shards to the others until it does",
				zap.Duration("for", time.Since(failingSince).Round(time.Millisecond)), zap.Error(err))
			d.SetStandby(true)
		}
	}
}

// dbSweepLease is the database lease of the sweep that goes on while Redis
// does not answer.
const dbSweepLease = "sweep"

// sweepWithoutRedis checks Redis every quarter SweepInterval; while it does not
// answer, the daemon holding the database lease sweeps every overdue order
// (no event can come), so that none waits past SweepInterval. Once Redis
// answers, the lease is given up and the Redis-side sweep lease rules again.
func (d *Daemon) sweepWithoutRedis(ctx context.Context) {
	every := max(d.cfg.SweepInterval/4, 50*time.Millisecond)
	ttl := 2 * d.cfg.SweepInterval
	id := d.ID()
	t := time.NewTicker(every)
	defer t.Stop()
	held := false
	release := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if err := d.cfg.Leases.ReleaseLease(rctx, dbSweepLease, id); err != nil {
			d.log.Warn("database sweep lease not released: it lapses by itself", zap.Error(err))
		}
		held = false
	}
	defer func() {
		if held {
			release()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, min(every, 500*time.Millisecond))
		redisErr := d.client.Ping(pctx).Err()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if redisErr == nil {
			if held {
				d.log.Info("Redis answers again: the sweep goes back to its Redis lease")
				release()
			}
			continue
		}
		ok, err := d.cfg.Leases.ClaimLease(ctx, dbSweepLease, id, ttl)
		if err != nil {
			d.log.Debug("database sweep lease not claimed", zap.Error(err))
			continue
		}
		if ok && !held {
			d.log.Warn("Redis does not answer: sweeping the database under a database lease meanwhile", zap.Error(redisErr))
		}
		held = ok
		if held {
			d.sweep(ctx, "redis unreachable", 0, nil)
		}
	}
}
