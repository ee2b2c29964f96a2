package expiry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
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

	// Scheduler, when set, is reaped every ReapInterval, each shard of its due
	// index on its own: keys whose deadline has passed are touched so that
	// Redis expires them at once, however many other keys carry a TTL, and
	// each expired timer the reaper removes from the index is handed to the
	// handler directly (its event, which Redis broadcasts to every listener,
	// is then not handled again).
	//
	// Listeners given Schedulers of the same index share the work (see
	// "Several listeners" in the package documentation): each shard is
	// reaped by the one listener that holds its lease, an event is handled
	// by the listener holding its key's shard (by whoever hears it when
	// none does), and OnInterval runs on one listener at a time.
	Scheduler *Scheduler

	// ReapInterval is the pause between reaper rounds. If zero, 10 ms is
	// used; if negative, the listener does not reap (timers then fire when
	// Redis notices their keys expired), but still shares the work.
	ReapInterval time.Duration

	// LeaseTTL is how long a lease (on a shard of the due index, or on the
	// periodic sweep) and a listener's heartbeat last without renewal: when
	// a listener dies, the others take its shards within LeaseTTL plus
	// LeaseInterval. If zero, 5 s is used.
	LeaseTTL time.Duration

	// LeaseInterval is the pause between lease rounds, each renewing the
	// heartbeat and the leases held and taking free ones. A listener that
	// joins or leaves, or releases a lease, announces it, and the others
	// hold a round at once. If zero, a fifth of LeaseTTL is used.
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
	Logger *zap.Logger
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

// Health is what a Listener knows of its ability to hear expirations.
type Health struct {
	// Subscribed is true once Redis has confirmed the subscription, while
	// Run runs.
	Subscribed bool
	// Notify, when not nil, says that Redis does not publish expired-key
	// events (on which node) and what to set, as the last check found.
	Notify error
	// Eviction, when not nil, says that Redis may evict keys without a TTL
	// (the due index, the leases): maxmemory-policy is allkeys-*, as the
	// last check found (ErrEvictionUnsafe).
	Eviction error
}

// Stats are a Listener's counters since it was created.
type Stats struct {
	Received      uint64 // expired-key events read from Redis
	Handled       uint64 // handler calls that returned nil
	Failed        uint64 // handler calls that returned an error
	Ignored       uint64 // keys without the prefix or without a handler
	Malformed     uint64 // keys a handler could not parse (ErrMalformedKey)
	NoRecord      uint64 // keys whose record does not exist (ErrNoRecord)
	Dropped       uint64 // events and reaped timers dropped because the queue stayed full
	Subscriptions uint64 // (re)subscriptions confirmed by Redis
	Reaped        uint64 // due entries the reaper removed: keys expired (handed to the handler) or left without a TTL
	Skipped       uint64 // events for keys whose shard another listener holds
	Repeated      uint64 // events for timers the reaper had handed to the handler already
	Takeovers     uint64 // leases this listener took (at its start, on a rebalance, from a listener that left or died)
	QueueDepth    int    // events waiting for a worker now
	InFlight      int64  // handler calls running now
	Shards        int    // shards of the due index this listener holds now
	Sweeps        bool   // whether this listener holds the sweep lease now
	Listeners     int    // live listeners sharing the due index, as last seen
}

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
	log     *zap.Logger

	received, handled, failed, ignored, malformed, dropped, subs, reaped atomic.Uint64
	skipped, repeated, noRecord                                          atomic.Uint64
	inFlight                                                             atomic.Int64
	queue                                                                atomic.Pointer[chan Event]
	running, configWarned                                                atomic.Bool
	notifyErr, evictionErr                                               atomic.Pointer[error]
	dropKick                                                             chan struct{}
	dropLog, malformedLog, noRecordLog                                   sometimes
	sub                                                                  atomic.Pointer[subscriber]  // while Run runs
	leases                                                               atomic.Pointer[leaseKeeper] // while Run runs, with a Scheduler
	takeovers                                                            atomic.Uint64               // of past runs
	handedOver                                                           recent
	cfgErr                                                               error // from validate: Run returns it
}

// Defaults of ListenerConfig, used where a field is zero.
const (
	defaultWorkers          = 64
	defaultQueueSize        = 100000
	defaultReapInterval     = 10 * time.Millisecond
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
	c.LeaseInterval = cmp.Or(c.LeaseInterval, c.LeaseTTL/5)
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
		log = zap.NewNop()
	}
	l := &Listener{client: client, handler: h, cfg: cfg, log: log, cfgErr: err,
		dropLog: sometimes{period: time.Second}, malformedLog: sometimes{period: time.Second}, noRecordLog: sometimes{period: time.Second},
		handedOver: recent{period: 30 * time.Second}}
	if c, ok := client.(*redis.Client); ok {
		l.db = c.Options().DB
	}
	return l
}

// Channel returns the channel the listener subscribes to.
func (l *Listener) Channel() string { return ExpiredChannel(l.db) }

// ID returns the name of the listener among those sharing its Scheduler.
func (l *Listener) ID() string { return l.cfg.ID }

// Handles reports whether the listener handles the expiry of key (the full
// key, prefix included) now: it holds the key's shard, or as far as it knows
// no listener does, or it shares no Scheduler. A catch-up after events were
// lost (OnSubscribe, OnDrop) need take only such keys: the others' events
// were not lost.
func (l *Listener) Handles(key string) bool {
	s, k := l.cfg.Scheduler, l.leases.Load()
	return s == nil || k == nil || k.mine(s.shardOf(key))
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
	}
	trigger(k.kick)
}

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	s := Stats{
		Received:      l.received.Load(),
		Handled:       l.handled.Load(),
		Failed:        l.failed.Load(),
		Ignored:       l.ignored.Load(),
		Malformed:     l.malformed.Load(),
		NoRecord:      l.noRecord.Load(),
		Dropped:       l.dropped.Load(),
		Subscriptions: l.subs.Load(),
		Reaped:        l.reaped.Load(),
		Skipped:       l.skipped.Load(),
		Repeated:      l.repeated.Load(),
		Takeovers:     l.takeovers.Load(),
		InFlight:      l.inFlight.Load(),
	}
	if k := l.leases.Load(); k != nil {
		s.Takeovers += k.takeovers.Load()
		shards, sweeps := k.held()
		s.Shards, s.Sweeps, s.Listeners = len(shards), sweeps, k.liveListeners()
	}
	if q := l.queue.Load(); q != nil {
		s.QueueDepth = len(*q)
	}
	return s
}

// Health returns what the listener knows of its ability to hear expirations.
func (l *Listener) Health() Health {
	var h Health
	if sub := l.sub.Load(); sub != nil {
		h.Subscribed = sub.subscribed()
	}
	if p := l.notifyErr.Load(); p != nil {
		h.Notify = *p
	}
	if p := l.evictionErr.Load(); p != nil {
		h.Eviction = *p
	}
	return h
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
	// The reapers hand timers to the queue: they stop before it closes.
	var reapers sync.WaitGroup
	if s := l.cfg.Scheduler; s != nil && l.cfg.ReapInterval > 0 {
		for i := range s.shards {
			reapers.Go(func() { l.reap(ctx, s, keeper, i, w.queue) })
		}
	}

	var channels []string
	if keeper != nil {
		channels = append(channels, keeper.channel)
	}
	sub := &subscriber{topo: topo, channel: l.Channel(), also: channels, interval: l.cfg.TopologyInterval, log: l.log,
		subs: map[string]*nodeSub{}, errLog: sometimes{period: 10 * time.Second},
		onMessage: func(m *redis.Message) {
			if keeper != nil && m.Channel == keeper.channel {
				if m.Payload != keeper.id {
					trigger(keeper.kick) // another listener joined, left or handed over
				}
				return
			}
			l.enqueue(ctx, w.queue, m)
		},
		onSubscribed: func(node string) {
			n := l.subs.Add(1)
			l.log.Info("subscribed", zap.String("channel", l.Channel()), zap.String("node", node), zap.Uint64("subscriptions", n))
			trigger(notifyKick)
			trigger(subKick)
			if keeper != nil {
				keeper.joined()
			}
		},
	}
	l.sub.Store(sub)
	defer l.sub.Store(nil)
	l.log.Info("listening for expired keys", zap.String("channel", l.Channel()),
		zap.String("key_prefix", l.cfg.KeyPrefix), zap.Int("workers", l.cfg.Workers))
	sub.run(ctx) // until ctx ends; after it no message is delivered any more

	// Stop in reverse: no more events in; the queue drains; the hooks,
	// whose context has ended, finish the step in hand (the lease keeper
	// releases the leases at once, so the others take over while the
	// queue drains).
	reapers.Wait()
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
	k := newLeaseKeeper(l.client, s, l.cfg.ID, l.cfg.LeaseTTL, l.cfg.LeaseInterval, l.log)
	sweeping := false
	k.onChange = func(held []string, sweeps bool) {
		l.log.Info("shards held", zap.String("listener", l.cfg.ID), zap.Strings("shards", held),
			zap.Bool("sweep", sweeps), zap.Int("listeners", k.liveListeners()))
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
		l.leases.Store(nil)
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
		l.log.Info("listener stopped", zap.Uint64("handled", l.handled.Load()))
		return nil
	case <-timer.C:
		l.log.Warn("listener stopped before its handlers finished: they were cancelled",
			zap.Duration("shutdown_timeout", l.cfg.ShutdownTimeout), zap.Int64("in_flight", l.inFlight.Load()))
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
		l.log.Error("Redis does not publish expired-key events: orders wait for the sweep", zap.Error(err))
		l.notifyErr.Store(&err)
	case errors.Is(err, ErrConfigUnavailable):
		if ctx.Err() == nil && l.configWarned.CompareAndSwap(false, true) { // once: it will not change
			l.log.Warn("cannot check that Redis publishes expired-key events", zap.Error(err))
		}
	default: // Redis does not answer: the subscription and the health check say so
		l.log.Debug("notify-keyspace-events not read", zap.Error(err))
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
			l.log.Error("Redis may evict keys without a TTL: timers, leases and other state can vanish silently", zap.Error(err))
		}
		l.evictionErr.Store(&err)
	default: // CONFIG refused (said once by the notify check) or Redis does not answer
		l.log.Debug("maxmemory-policy not read", zap.Error(err))
	}
}

func (l *Listener) enqueue(ctx context.Context, queue chan Event, m *redis.Message) {
	l.received.Add(1)
	ev, err := NewEvent(m.Channel, m.Payload, l.cfg.KeyPrefix, time.Now())
	if err != nil {
		l.ignored.Add(1)
		l.log.Debug("expired key ignored: not ours", KeyField(m.Payload))
		return
	}
	if l.cfg.Scheduler != nil {
		if l.cfg.Scheduler.owns(ev.RawKey) {
			return // a lease of a listener that died: the library's own, never a handler's
		}
		if !l.Handles(ev.RawKey) {
			l.skipped.Add(1) // another listener holds its shard
			return
		}
		if !l.handedOver.first(ev.RawKey) {
			l.repeated.Add(1) // the reaper handed it over already
			return
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
	if l.cfg.Scheduler != nil {
		l.handedOver.forget(ev.RawKey)
	}
	trigger(l.dropKick)
	if ok, _ := l.dropLog.allow(time.Now()); ok { // one line a second, not one per event
		l.log.Warn("queue full: dropping expired timers; a catch-up sweep handles them",
			zap.Uint64("dropped", n), zap.Int("queue_size", cap(queue)))
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
	case errors.Is(err, ErrHandlerNotFound):
		l.ignored.Add(1)
		l.log.Debug("expired key ignored: no handler", KeyField(ev.RawKey))
	case errors.Is(err, ErrMalformedKey):
		l.malformed.Add(1)
		if ok, suppressed := l.malformedLog.allow(time.Now()); ok {
			l.log.Warn("expired key ignored: malformed", KeyField(ev.RawKey), zap.Uint64("suppressed", suppressed))
		}
	case errors.Is(err, ErrNoRecord):
		l.noRecord.Add(1)
		if ok, suppressed := l.noRecordLog.allow(time.Now()); ok {
			l.log.Warn("expired key ignored: no such record", KeyField(ev.RawKey), zap.Uint64("suppressed", suppressed))
		}
	default:
		l.failed.Add(1)
		l.log.Error("expired key not handled", KeyField(ev.RawKey), zap.Error(err))
	}
}

// reap runs the reaper of shard i of s's due index until ctx ends, while
// this listener holds the shard's lease. Each shard has a loop of its own, so
// a shard whose node fails or fails over (on Cluster the shards live on
// different masters) stalls no other.
func (l *Listener) reap(ctx context.Context, s *Scheduler, k *leaseKeeper, i int, queue chan<- Event) {
	shard := s.shards[i]
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if !k.holds(i) {
			select { // until what this listener holds changes
			case <-ctx.Done():
				return
			case <-k.changes():
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		res, fired, err := s.reapShard(ctx, shard, reapSlack)
		l.reaped.Add(uint64(res.Gone))
		l.handOver(ctx, s, fired, queue)
		wait := l.cfg.ReapInterval
		switch {
		case err != nil && ctx.Err() == nil:
			l.log.Warn("reaper round failed", zap.String("shard", shard), zap.Error(err))
			wait = time.Second
		case res.More:
			wait = 0
		}
		timer.Reset(wait)
	}
}

// handOver queues the timers a reaper round removed from the index, those
// whose event was not handled first, as their events would be: when the
// queue stays full they are dropped and OnDrop is triggered (a burst bigger
// than the queue is the catch-up sweep's). When ctx ends first, the rest go
// back to the index for whichever listener reaps the shard next.
func (l *Listener) handOver(ctx context.Context, s *Scheduler, fired []string, queue chan<- Event) {
	for j, raw := range fired {
		if ctx.Err() != nil {
			bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			if err := s.putBack(bctx, fired[j:]); err != nil {
				l.log.Warn("reaped timers not put back in the due index: the catch-up sweep of the next start takes them",
					zap.Int("timers", len(fired)-j), zap.Error(err))
			}
			cancel()
			return
		}
		if !l.handedOver.first(raw) {
			continue // its event came first
		}
		key, ok := strings.CutPrefix(raw, l.cfg.KeyPrefix)
		if !ok {
			l.ignored.Add(1)
			continue
		}
		l.offer(ctx, queue, Event{Key: key, RawKey: raw, DB: l.db, Received: time.Now()})
	}
}
