package expiry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ListenerConfig configures a Listener. The zero value is usable.
type ListenerConfig struct {
	// KeyPrefix is stripped from every expired key before it is handled. Keys
	// without it belong to other programs and are ignored. If empty, the
	// Scheduler's KeyPrefix is used; when both are set they must be equal.
	KeyPrefix string

	// ID names this listener among those sharing the Scheduler's work: it is
	// what its leases hold and what its heartbeat announces, so it must be
	// unique among them. If empty, "<hostname>:<pid>:<random>" is used.
	ID string

	// Workers is the number of goroutines running the handler.
	// If zero, 64 are used.
	Workers int

	// QueueSize bounds the events read from Redis but not yet handled.
	// If zero, 100,000 is used.
	QueueSize int

	// QueueWait is how long the reader waits for room in a full queue before
	// it drops the event (counted in Stats.Dropped, and OnDrop is called). If
	// zero, it does not wait. Keep it short: while the reader waits, Redis
	// buffers the events for this subscriber and disconnects it once the
	// buffer passes client-output-buffer-limit pubsub (32 MB by default),
	// losing everything in flight.
	QueueWait time.Duration

	// The hooks below (OnDrop, OnSubscribe, OnInterval) are called with a
	// context that ends when the listener begins to stop: a hook should then
	// finish the step in hand (one transaction, say), take no new work and
	// return. Run waits for it until ShutdownTimeout passes.

	// OnDrop is called after events were dropped because the queue was full:
	// the moment for a catch-up sweep, which handles in bulk what the events
	// stood for. Calls run on a goroutine of their own, one at a time, and
	// triggers that arrive meanwhile are coalesced into one more call.
	OnDrop func(ctx context.Context)

	// OnSubscribe is called after every subscription, the first one and each
	// one go-redis makes after a lost connection: events published in between
	// are gone, so this is the moment for a catch-up sweep. Calls run on a
	// goroutine of their own, one at a time; triggers that arrive while a call
	// runs are coalesced into one more call.
	OnSubscribe func(ctx context.Context)

	// Interval and OnInterval, when both are set, call OnInterval every
	// Interval (a periodic sweep). Calls run one at a time. With a
	// Scheduler, only the listener holding the sweep lease calls it, and it
	// calls it at once when it takes the lease (its former holder may have
	// died before its turn).
	Interval   time.Duration
	OnInterval func(ctx context.Context)

	// Notify says what the listener does about Redis's notify-keyspace-events
	// setting after every subscription (a restarted Redis may have lost a
	// setting made at run time) and every NotifyInterval. The zero value,
	// NotifyCheck, reports expired-key events that are off.
	Notify NotifyPolicy

	// NotifyInterval is the pause between checks of notify-keyspace-events
	// besides the one after every subscription. If zero, 10 s is used.
	NotifyInterval time.Duration

	// Scheduler, when set, makes the listener reap its due index: a reaper
	// per shard sleeps until the shard's earliest deadline, touches the keys
	// due so that Redis expires them at once, however many other keys carry
	// a TTL, and hands each expired timer to the handler directly (its
	// event, which Redis broadcasts to every listener, is then not handled
	// again). A Scheduler that sets an earlier timer wakes it.
	//
	// Listeners given Schedulers of the same index share the work (see
	// "Several listeners" in the package documentation): each shard is
	// reaped by the one listener that holds its lease, an event is handled
	// by the listener holding its key's shard (parked in the index for the
	// next holder when none does), and OnInterval runs on one listener at a
	// time. With a Scheduler, a handler's failures are retried durably (see
	// MaxAttempts).
	Scheduler *Scheduler

	// ReapInterval is the longest a reaper sleeps when nothing wakes it: a
	// fallback for a wake lost with a broken subscription. If zero, 10 s is
	// used; it may be at most 1 minute. If negative, the listener does not
	// reap (timers then fire when Redis notices their keys expired), but
	// still shares the work.
	ReapInterval time.Duration

	// MaxAttempts bounds the attempts at a timer whose handler fails (with a
	// Scheduler): after each failure the timer is set due again in the index
	// after RetryDelay, and after MaxAttempts failures it is moved to the
	// dead set (Scheduler.Dead, Scheduler.Rearm). If zero, 10 is used.
	MaxAttempts int

	// RetryDelay returns how long after its n-th failure (n ≥ 1) a timer is
	// due again. If nil, 1 s doubled after each failure, up to 10 minutes.
	RetryDelay func(n int) time.Duration

	// LeaseTTL is how long a listener's heartbeat, and with it every lease
	// it holds (on a shard of the due index, or on the periodic sweep),
	// lasts without renewal: when a listener dies, the others take its
	// shards within LeaseTTL plus LeaseInterval. If zero, 5 s is used.
	LeaseTTL time.Duration

	// LeaseInterval is the pause between heartbeats. A listener that joins
	// or leaves, or releases a lease, announces it, and the others read the
	// leases at once. If zero, a third of LeaseTTL is used.
	LeaseInterval time.Duration

	// OnShards, if set, is called whenever what this listener holds changes,
	// and once with nothing when it stops: held names the shards of the due
	// index it reaps, and sweeps whether it runs OnInterval.
	OnShards func(held []string, sweeps bool)

	// Sentinel, when the client is a failover client (redis.NewFailoverClient),
	// is the options it was made with: the listener then subscribes on the
	// master the sentinels name, asks them again every TopologyInterval, and
	// moves its subscription when they name another (go-redis's own
	// subscription would stay on the old master until Sentinel disconnects it,
	// missing the events in between). Leave it nil otherwise.
	Sentinel *redis.FailoverOptions

	// TopologyInterval is how often, on Redis Cluster and behind Sentinel, the
	// listener reads which nodes are masters, to subscribe on each (Redis
	// publishes an expiry only on the node that owns the key) and to follow
	// failovers and resharding. If zero, 1 s is used.
	TopologyInterval time.Duration

	// ShutdownTimeout bounds how long Run waits, once its context ends, for
	// queued and in-flight handlers and a running hook. When it passes,
	// handler contexts are cancelled and Run returns at once, leaving behind
	// any handler that ignores its context. If zero, 10 s is used.
	ShutdownTimeout time.Duration

	// Logger receives the listener's own log lines. If nil, nothing is logged.
	Logger *slog.Logger
}

// NotifyPolicy says what a Listener does about notify-keyspace-events.
type NotifyPolicy int

const (
	// NotifyCheck reads the setting and, when expired-key events are off,
	// logs an error saying what to set and reports it in Health.
	NotifyCheck NotifyPolicy = iota
	// NotifyEnable does what NotifyCheck does, and turns the events on
	// (adding "Ex" to the flags) when they are off.
	NotifyEnable
	// NotifyIgnore never reads the setting: for Redis services that refuse
	// CONFIG, once the events are known to be on.
	NotifyIgnore
)

// A Listener subscribes to Redis's expired-key events of one database (on
// every master of a Cluster, on the current master behind Sentinel) and hands
// each event to a Handler on a pool of workers.
//
// A goroutine per subscription reads events into a bounded queue and never
// waits on a handler, so a slow handler does not make go-redis or Redis drop
// events.
type Listener struct {
	client  redis.UniversalClient
	handler Handler
	cfg     ListenerConfig
	db      int
	log     *slog.Logger
	cfgErr  error // from validate: Run returns it

	counters
	queue                              atomic.Pointer[chan Event]
	running, configWarned              atomic.Bool
	notifyErr, evictionErr             atomic.Pointer[error]
	dropKick                           chan struct{}
	dropLog, malformedLog, noRecordLog sometimes
	sub                                atomic.Pointer[subscriber]  // while Run runs
	leases                             atomic.Pointer[leaseKeeper] // while Run runs, with a Scheduler
	shards                             []*shardState               // with a Scheduler: one per shard of its index
	parker                             *parker                     // with a Scheduler
}

// Defaults of ListenerConfig, used where a field is zero.
const (
	defaultWorkers          = 64
	defaultQueueSize        = 100000
	defaultReapInterval     = 10 * time.Second
	defaultShutdownTimeout  = 10 * time.Second
	defaultNotifyInterval   = 10 * time.Second
	defaultTopologyInterval = time.Second
	defaultLeaseTTL         = 5 * time.Second
)

// ErrInvalidConfig is wrapped by the error Run returns for a Listener whose
// configuration cannot work (a nil handler, a negative size or interval, a
// KeyPrefix that differs from its Scheduler's, leases renewed less often
// than they lapse). It is returned at once; nothing was started.
var ErrInvalidConfig = errors.New("expiry: invalid listener configuration")

// validate fills in the defaults of the zero fields and reports what cannot
// work, wrapping ErrInvalidConfig.
func (c *ListenerConfig) validate() error {
	for _, f := range []struct {
		name string
		bad  bool
	}{
		{"Workers", c.Workers < 0}, {"QueueSize", c.QueueSize < 0}, {"QueueWait", c.QueueWait < 0},
		{"ShutdownTimeout", c.ShutdownTimeout < 0}, {"NotifyInterval", c.NotifyInterval < 0},
		{"TopologyInterval", c.TopologyInterval < 0}, {"LeaseTTL", c.LeaseTTL < 0},
		{"LeaseInterval", c.LeaseInterval < 0}, {"Interval", c.Interval < 0},
	} {
		if f.bad {
			return fmt.Errorf("%w: %s is negative", ErrInvalidConfig, f.name)
		}
	}
	c.Workers = cmp.Or(c.Workers, defaultWorkers)
	c.QueueSize = cmp.Or(c.QueueSize, defaultQueueSize)
	if c.ReapInterval == 0 { // negative: no reaping
		c.ReapInterval = defaultReapInterval
	}
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, defaultShutdownTimeout)
	c.NotifyInterval = cmp.Or(c.NotifyInterval, defaultNotifyInterval)
	c.TopologyInterval = cmp.Or(c.TopologyInterval, defaultTopologyInterval)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, defaultLeaseTTL)
	c.LeaseInterval = cmp.Or(c.LeaseInterval, c.LeaseTTL/3)
	if c.ReapInterval > wakeHorizon {
		return fmt.Errorf("%w: ReapInterval %v is longer than %v", ErrInvalidConfig, c.ReapInterval, wakeHorizon)
	}
	if c.MaxAttempts < 0 {
		return fmt.Errorf("%w: MaxAttempts is negative", ErrInvalidConfig)
	}
	c.MaxAttempts = cmp.Or(c.MaxAttempts, defaultMaxAttempts)
	if c.RetryDelay == nil {
		c.RetryDelay = defaultRetryDelay
	}
	if c.LeaseInterval >= c.LeaseTTL {
		return fmt.Errorf("%w: LeaseInterval %v is not shorter than LeaseTTL %v: leases would lapse between renewals",
			ErrInvalidConfig, c.LeaseInterval, c.LeaseTTL)
	}
	if c.ID == "" {
		c.ID = defaultID()
	}
	if s := c.Scheduler; s != nil {
		switch {
		case c.KeyPrefix == "":
			c.KeyPrefix = s.prefix
		case s.prefix != "" && s.prefix != c.KeyPrefix:
			return fmt.Errorf("%w: the listener's KeyPrefix %q differs from its Scheduler's %q", ErrInvalidConfig, c.KeyPrefix, s.prefix)
		}
	}
	return nil
}

// NewListener returns a Listener for the client's database (taken from the
// options of a *redis.Client; 0 on Redis Cluster). The client may be a
// single server's, a failover client's (set ListenerConfig.Sentinel) or a
// *redis.ClusterClient: the listener subscribes on every master. A
// configuration that cannot work is not a panic: Run returns it, wrapping
// ErrInvalidConfig.
func NewListener(client redis.UniversalClient, h Handler, cfg ListenerConfig) *Listener {
	err := cfg.validate()
	if err == nil && h == nil {
		err = fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Listener{client: client, handler: h, cfg: cfg, log: log, cfgErr: err,
		dropLog: sometimes{period: time.Second}, malformedLog: sometimes{period: time.Second}, noRecordLog: sometimes{period: time.Second}}
	if c, ok := client.(*redis.Client); ok {
		l.db = c.Options().DB
	}
	if s := cfg.Scheduler; s != nil && err == nil {
		l.shards = newShardStates(len(s.shards), cfg.ReapInterval)
		l.parker = &parker{l: l, s: s, reqs: make(chan parkReq, 100000)}
	}
	return l
}

// Channel returns the channel the listener subscribes to.
func (l *Listener) Channel() string { return ExpiredChannel(l.db) }

// ID returns the name of the listener among those sharing its Scheduler.
func (l *Listener) ID() string { return l.cfg.ID }

// Forget tells the listener that the timers of keys (full keys, prefix
// included) were set again after it handled them, as a handler does that
// finds its record not due yet and schedules its key for the time left:
// their next expiry is a new timer, handled when it comes. Without it the
// listener, which notes what it handled so that a timer both reaped and
// announced by its key's event is handled once, could take the new timer
// for a repeat of the old and skip it.
func (l *Listener) Forget(keys ...string) {
	s := l.cfg.Scheduler
	if s == nil {
		return
	}
	for _, k := range keys {
		l.shards[s.shardOf(k)].notes.forget(k)
	}
}

// Handles reports whether the listener handles the expiry of key (the full
// key, prefix included) now: it holds the key's shard, or as far as it knows
// no live listener does (it parks the event for the next holder then), or
// it shares no Scheduler. A catch-up after events were lost (OnSubscribe,
// OnDrop) need take only such keys: the others' events were not lost.
func (l *Listener) Handles(key string) bool {
	s, k := l.cfg.Scheduler, l.leases.Load()
	return s == nil || k == nil || k.route(s.shardOf(key)) != routeTheirs
}

// Surely reports whether the listener may act on key's timer now without
// stepping on another listener: it holds the key's shard by its own clock,
// or its view of the leases, read moments ago, says nobody holds it; or it
// shares no Scheduler. It is stricter than Handles: a listener whose view is
// stale (it was frozen, or cut off from Redis, past its leases' end) says
// no until it has read the leases again. A handler checks it just before
// it commits work that only the shard's holder should do (a fence).
func (l *Listener) Surely(key string) bool {
	s, k := l.cfg.Scheduler, l.leases.Load()
	if s == nil {
		return true
	}
	return k != nil && k.surely(s.shardOf(key))
}

// SetStandby, with true, makes the listener give up every lease it holds
// and leave the listeners sharing the Scheduler, so that the others take
// its share at once, and hold nothing until SetStandby(false): for a
// listener that cannot do its share's work for now (its database does not
// answer, say). It still hears events; those of shards that others hold are
// theirs. Without a Scheduler it does nothing.
func (l *Listener) SetStandby(on bool) {
	k := l.leases.Load()
	if k == nil || k.standby.Swap(on) == on {
		return
	}
	if on {
		l.log.Warn("standing by: giving up every shard to the other listeners")
	} else {
		l.log.Info("back from standby: taking a share of the shards again")
		k.announce.Store(true)
		k.reread.Store(true)
	}
	trigger(k.kick)
}

// ErrListenerRunning is returned by Run when the Listener is already running.
var ErrListenerRunning = errors.New("expiry: listener already running")

// ErrShutdownTimeout is wrapped by the error Run returns when ShutdownTimeout
// passed before its handlers and hooks finished.
var ErrShutdownTimeout = errors.New("expiry: shutdown timeout passed before handlers finished")

// Run subscribes and handles events until ctx ends. Then it stops reading,
// tells the hooks to stop (their context ends), and waits for the workers to
// finish the queued and in-flight events and for a running hook to return,
// for at most ShutdownTimeout. It returns nil when everything finished, or an
// error wrapping ErrShutdownTimeout and ctx's error when the timeout passed:
// then handler contexts are cancelled and Run returns without waiting more.
// go-redis reconnects by itself after a lost connection; each resubscription
// calls OnSubscribe and checks notify-keyspace-events again.
func (l *Listener) Run(ctx context.Context) error {
	if l.cfgErr != nil {
		return l.cfgErr
	}
	if !l.running.CompareAndSwap(false, true) {
		return ErrListenerRunning
	}
	defer l.running.Store(false)
	topo, err := newTopology(l.client, l.cfg.Sentinel)
	if err != nil {
		return err
	}
	defer topo.close()

	w := startWorkers(ctx, l.cfg.Workers, l.cfg.QueueSize, l.handle)
	l.queue.Store(&w.queue)

	var hooks hookRunner
	subKick, notifyKick, sweepKick := make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)
	l.dropKick = make(chan struct{}, 1)
	if f := l.cfg.OnSubscribe; f != nil {
		hooks.onTrigger(ctx, subKick, f)
	}
	if f := l.cfg.OnDrop; f != nil {
		hooks.onTrigger(ctx, l.dropKick, f)
	}
	keeper := l.startLeases(ctx, &hooks, sweepKick)
	if keeper != nil {
		// Subscribe once the leases were read: until then this listener
		// could not tell which events are its own.
		select {
		case <-keeper.ready:
		case <-ctx.Done():
		}
	}
	if l.cfg.Interval > 0 && l.cfg.OnInterval != nil {
		hooks.every(ctx, l.cfg.Interval, sweepKick, func(ctx context.Context) {
			if keeper == nil || keeper.holds(keeper.sweepItem()) {
				l.cfg.OnInterval(ctx)
			}
		})
	}
	hooks.every(ctx, l.cfg.NotifyInterval, notifyKick, func(ctx context.Context) {
		if l.cfg.Notify != NotifyIgnore {
			l.checkNotify(ctx, topo)
		}
		l.checkEviction(ctx, topo)
	})
	// On a stop the subscription outlives the leases: until the shards this
	// listener released have been taken, it still hears their events (and
	// parks them for their next holder); the others skip them meanwhile.
	subCtx, cancelSub := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSub()
	go func() {
		select {
		case <-ctx.Done():
		case <-subCtx.Done():
			return
		}
		if keeper != nil {
			<-keeper.handedOff
		}
		cancelSub()
	}()
	// The reapers and the parker hand timers to the queue: they stop before
	// it closes.
	var feeders sync.WaitGroup
	var channels []string
	wake := ""
	if s := l.cfg.Scheduler; s != nil {
		feeders.Go(func() { l.parker.run(subCtx, w.queue) })
		channels = append(channels, keeper.channel)
		if l.cfg.ReapInterval > 0 {
			wake = wakeChannel(s.index)
			channels = append(channels, wake)
			for i := range s.shards {
				feeders.Go(func() { l.reap(ctx, s, keeper, i, w.queue) })
			}
		}
	}

	sub := &subscriber{topo: topo, channel: l.Channel(), also: channels, interval: l.cfg.TopologyInterval, log: l.log,
		subs: map[string]*nodeSub{}, errLog: sometimes{period: 10 * time.Second},
		onMessage: func(m *redis.Message) {
			switch {
			case keeper != nil && m.Channel == keeper.channel:
				if m.Payload != keeper.id {
					keeper.heard() // another listener joined, left or handed over
				}
			case wake != "" && m.Channel == wake:
				l.onWake(m.Payload)
			default:
				l.enqueue(ctx, w.queue, m)
			}
		},
		onSubscribed: func(node string) {
			n := l.subs.Add(1)
			l.log.Info("subscribed", "channel", l.Channel(), "node", node, "subscriptions", n)
			trigger(notifyKick)
			trigger(subKick)
			if keeper != nil {
				keeper.joined()
				l.wakeAll() // wakes sent meanwhile were missed
			}
		},
	}
	l.sub.Store(sub)
	defer l.sub.Store(nil)
	l.log.Info("listening for expired keys", "channel", l.Channel(), "key_prefix", l.cfg.KeyPrefix, "workers", l.cfg.Workers)
	sub.run(subCtx) // until the leases are handed off; after it no message is delivered any more

	// Stop in reverse: no more events in; the queue drains; the hooks,
	// whose context has ended, finish the step in hand (the lease keeper
	// releases the leases at once, so the others take over while the
	// queue drains).
	feeders.Wait()
	l.leases.Store(nil)
	w.shutdown()
	return l.drain(ctx, w, &hooks)
}

// startLeases starts the lease keeper when the listener has a Scheduler, and
// returns it (nil without one).
func (l *Listener) startLeases(ctx context.Context, hooks *hookRunner, sweepKick chan struct{}) *leaseKeeper {
	s := l.cfg.Scheduler
	if s == nil {
		return nil
	}
	k := newLeaseKeeper(l.client, s, l.cfg.ID, l.cfg.LeaseTTL, l.cfg.LeaseInterval, l.log, l.shards)
	k.onDead = l.parkSkipped
	k.canJoin = func() bool { sub := l.sub.Load(); return sub != nil && sub.subscribed() }
	sweeping := false
	k.onChange = func(held []string, sweeps bool) {
		l.log.Info("shards held", "listener", l.cfg.ID, "shards", held, "sweep", sweeps, "listeners", k.liveListeners())
		if sweeps && !sweeping {
			trigger(sweepKick) // its former holder may have died before its turn
		}
		sweeping = sweeps
		if f := l.cfg.OnShards; f != nil {
			f(held, sweeps)
		}
	}
	l.leases.Store(k)
	hooks.run(ctx, func(ctx context.Context) {
		k.run(ctx)
		l.takeovers.Add(k.takeovers.Load())
	})
	return k
}

// drain waits for the workers and the hooks, for at most ShutdownTimeout.
func (l *Listener) drain(ctx context.Context, w *workers, hooks *hookRunner) error {
	defer w.abandon()
	done := make(chan struct{})
	go func() { w.wait(); hooks.wait(); close(done) }() // a running hook counts as in flight
	timer := time.NewTimer(l.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
		l.log.Info("listener stopped", "handled", l.handled.Load())
		return nil
	case <-timer.C:
		l.log.Warn("listener stopped before its handlers finished: they were cancelled",
			"shutdown_timeout", l.cfg.ShutdownTimeout, "in_flight", l.inFlight.Load())
		return errors.Join(ErrShutdownTimeout, ctx.Err())
	}
}

// checkNotify reads notify-keyspace-events on every node of the topology
// and records (and logs) whether expired-key events are off; with
// NotifyEnable it turns them on again.
func (l *Listener) checkNotify(ctx context.Context, topo topology) {
	nodes, err := topo.nodes(ctx)
	if err == nil {
		err = checkNotify(ctx, nodes)
	}
	if errors.Is(err, ErrNotifyDisabled) && l.cfg.Notify == NotifyEnable {
		if eerr := enableNotify(ctx, nodes); eerr != nil {
			err = fmt.Errorf("%w; turning them on failed: %v", err, eerr)
		} else {
			l.log.Warn("expired-key events were off: turned them on again (notify-keyspace-events); persist it in the Redis configuration")
			err = nil
		}
	}
	prev := l.notifyErr.Load()
	switch {
	case err == nil:
		if prev != nil {
			l.log.Info("Redis publishes expired-key events again")
		}
		l.notifyErr.Store(nil)
	case errors.Is(err, ErrNotifyDisabled):
		l.log.Error("Redis does not publish expired-key events: timers wait until Redis notices their keys, or a sweep", "error", err)
		l.notifyErr.Store(&err)
	case errors.Is(err, ErrConfigUnavailable):
		if ctx.Err() == nil && l.configWarned.CompareAndSwap(false, true) { // once: it will not change
			l.log.Warn("cannot check that Redis publishes expired-key events", "error", err)
		}
	default: // Redis does not answer: the subscription and the health check say so
		l.log.Debug("notify-keyspace-events not read", "error", err)
	}
}

// checkEviction reads maxmemory-policy on every node of the topology and
// records (and logs, when it changes) whether Redis may evict keys without
// a TTL.
func (l *Listener) checkEviction(ctx context.Context, topo topology) {
	nodes, err := topo.nodes(ctx)
	if err == nil {
		err = checkEviction(ctx, nodes)
	}
	prev := l.evictionErr.Load()
	switch {
	case err == nil:
		if prev != nil {
			l.log.Info("Redis keeps keys without a TTL again (maxmemory-policy)")
		}
		l.evictionErr.Store(nil)
	case errors.Is(err, ErrEvictionUnsafe):
		if prev == nil || (*prev).Error() != err.Error() {
			l.log.Error("Redis may evict keys without a TTL: timers, leases and other state can vanish silently", "error", err)
		}
		l.evictionErr.Store(&err)
	default: // CONFIG refused (said once by the notify check) or Redis does not answer
		l.log.Debug("maxmemory-policy not read", "error", err)
	}
}

func (l *Listener) enqueue(ctx context.Context, queue chan Event, m *redis.Message) {
	l.received.Add(1)
	ev, err := NewEvent(m.Channel, m.Payload, l.cfg.KeyPrefix, time.Now())
	if err != nil {
		l.ignored.Add(1)
		l.log.Debug("expired key ignored: not ours", KeyAttr(m.Payload))
		return
	}
	if s := l.cfg.Scheduler; s != nil {
		if s.owns(ev.RawKey) {
			return // the library's own keys, never a handler's
		}
		if k := l.leases.Load(); k != nil {
			i := s.shardOf(ev.RawKey)
			sh := l.shards[i]
			sh.mu.Lock()
			switch k.route(i) {
			case routeTheirs: // its holder hears it too; kept in case that holder died with it
				sh.skipped.add(ev.RawKey, ev.Received)
				sh.mu.Unlock()
				l.skipped.Add(1)
				return
			case routePark: // nobody holds the shard now: its next holder reaps it
				seen := sh.notes.has(ev.RawKey)
				sh.mu.Unlock()
				if seen {
					l.repeated.Add(1) // handled here before the shard was handed over
				} else {
					l.parker.park(ctx, queue, i, ev)
				}
				return
			}
			first := sh.notes.first(ev.RawKey)
			sh.mu.Unlock()
			if !first {
				l.repeated.Add(1) // the reaper handed it over already
				return
			}
		}
	}
	l.offer(ctx, queue, ev)
}

// offer queues ev for the workers, waiting up to QueueWait for room, and
// reports whether it did. When the queue stays full it drops ev, counts it
// and triggers OnDrop: a catch-up sweep handles in bulk what a burst too big
// for the queue stood for, faster than the events would.
func (l *Listener) offer(ctx context.Context, queue chan<- Event, ev Event) bool {
	select {
	case queue <- ev:
		return true
	default:
	}
	if l.cfg.QueueWait > 0 {
		timer := time.NewTimer(l.cfg.QueueWait)
		defer timer.Stop()
		select {
		case queue <- ev:
			return true
		case <-timer.C:
		case <-ctx.Done():
		}
	}
	n := l.dropped.Add(1)
	if s := l.cfg.Scheduler; s != nil {
		l.shards[s.shardOf(ev.RawKey)].notes.forget(ev.RawKey)
	}
	trigger(l.dropKick)
	if ok, _ := l.dropLog.allow(time.Now()); ok { // one line a second, not one per event
		l.log.Warn("queue full: dropping expired timers; a catch-up sweep handles them",
			"dropped", n, "queue_size", cap(queue))
	}
	return false
}

// trigger asks a hook goroutine for one more call, without waiting.
func trigger(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (l *Listener) handle(ctx context.Context, ev Event) {
	l.inFlight.Add(1)
	defer l.inFlight.Add(-1)
	err := l.handler.HandleExpired(ctx, ev)
	switch {
	case err == nil:
		l.handled.Add(1)
		if ev.retry {
			l.forgetFailures(ctx, ev)
		}
	case errors.Is(err, ErrHandlerNotFound):
		l.ignored.Add(1)
		l.log.Debug("expired key ignored: no handler", KeyAttr(ev.RawKey))
	case errors.Is(err, ErrMalformedKey):
		l.malformed.Add(1)
		if ok, suppressed := l.malformedLog.allow(time.Now()); ok {
			l.log.Warn("expired key ignored: malformed", KeyAttr(ev.RawKey), "suppressed", suppressed)
		}
	case errors.Is(err, ErrNoRecord):
		l.noRecord.Add(1)
		if ok, suppressed := l.noRecordLog.allow(time.Now()); ok {
			l.log.Warn("expired key ignored: no such record", KeyAttr(ev.RawKey), "suppressed", suppressed)
		}
		if ev.retry {
			l.forgetFailures(ctx, ev)
		}
	default:
		l.failed.Add(1)
		l.retryLater(ctx, ev, err)
	}
}

// retryLater sets a failed timer due again after RetryDelay, or moves it to
// the dead set after MaxAttempts (with a Scheduler; without one the failure
// is only logged).
func (l *Listener) retryLater(ctx context.Context, ev Event, cause error) {
	s := l.cfg.Scheduler
	if s == nil {
		l.log.Error("expired key not handled", KeyAttr(ev.RawKey), "error", cause)
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	limit := l.cfg.MaxAttempts
	if errors.Is(cause, ErrGiveUp) {
		limit = min(limit, ev.Attempt+1) // the handler's own bound
	}
	n, dead, err := s.retryLater(rctx, ev, cause, l.cfg.RetryDelay(ev.Attempt+1), limit)
	switch {
	case err != nil:
		l.log.Error("expired key not handled, and not set due again: Redis did not answer", KeyAttr(ev.RawKey),
			"error", cause, "retry_error", err)
	case dead:
		l.dead.Add(1)
		l.log.Error("expired key not handled: moved to the dead set after the last attempt", KeyAttr(ev.RawKey),
			"attempts", n, "error", cause)
	default:
		l.retried.Add(1)
		l.log.Warn("expired key not handled: set due again", KeyAttr(ev.RawKey), "attempts", n,
			"retry_in", l.cfg.RetryDelay(ev.Attempt+1), "error", cause)
	}
}

// forgetFailures clears the failed attempts of a timer handled at last.
func (l *Listener) forgetFailures(ctx context.Context, ev Event) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := l.cfg.Scheduler.succeeded(rctx, ev.RawKey); err != nil {
		l.log.Warn("failed attempts of a handled timer not cleared", KeyAttr(ev.RawKey), "error", err)
	}
}
