package expiry

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// ListenerConfig configures a Listener. The zero value is usable.
type ListenerConfig struct {
	// KeyPrefix is stripped from every expired key before it is handled. Keys
	// without it belong to other programs and are ignored.
	KeyPrefix string

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
	// Interval (a periodic sweep). Calls run one at a time.
	Interval   time.Duration
	OnInterval func(ctx context.Context)

	// Scheduler, when set, is reaped every ReapInterval: keys in its due index
	// whose deadline has passed are touched so that Redis expires and
	// announces them at once, however many other keys carry a TTL.
	Scheduler *Scheduler

	// ReapInterval is the pause between reaper rounds.
	// If zero, 10 ms is used.
	ReapInterval time.Duration

	// ShutdownTimeout bounds how long Run waits, once its context ends, for
	// queued and in-flight handlers. When it passes, handler contexts are
	// cancelled. If zero, 10 s is used.
	ShutdownTimeout time.Duration

	// Logger receives the listener's own log lines. If nil, nothing is logged.
	Logger *zap.Logger
}

// Stats are a Listener's counters since it was created.
type Stats struct {
	Received      uint64 // expired-key events read from Redis
	Handled       uint64 // handler calls that returned nil
	Failed        uint64 // handler calls that returned an error
	Ignored       uint64 // keys without the prefix or without a handler
	Dropped       uint64 // events dropped because the queue stayed full
	Subscriptions uint64 // (re)subscriptions confirmed by Redis
	Reaped        uint64 // due keys the reaper found gone (expired by its touch or before)
	QueueDepth    int    // events waiting for a worker now
	InFlight      int64  // handler calls running now
}

// A Listener subscribes to Redis's expired-key events of one database and
// hands each event to a Handler on a pool of workers.
//
// One goroutine reads events into a bounded queue and never waits on a
// handler, so a slow handler does not make go-redis or Redis drop events.
type Listener struct {
	client  redis.UniversalClient
	handler Handler
	cfg     ListenerConfig
	db      int
	log     *zap.Logger

	received, handled, failed, ignored, dropped, subs, reaped atomic.Uint64
	inFlight                                                  atomic.Int64
	queue                                                     atomic.Pointer[chan Event]
	running                                                   atomic.Bool
	dropKick                                                  chan struct{}
	lastDropLog                                               time.Time // reader goroutine only
}

// NewListener returns a Listener for the client's database (taken from the
// options of a *redis.Client; 0 for other clients, as on Redis Cluster).
func NewListener(client redis.UniversalClient, h Handler, cfg ListenerConfig) *Listener {
	if h == nil {
		panic("expiry: nil handler")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 64
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 100000
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = 10 * time.Millisecond
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	l := &Listener{client: client, handler: h, cfg: cfg, log: log}
	if c, ok := client.(*redis.Client); ok {
		l.db = c.Options().DB
	}
	return l
}

// Channel returns the channel the listener subscribes to.
func (l *Listener) Channel() string { return ExpiredChannel(l.db) }

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	s := Stats{
		Received:      l.received.Load(),
		Handled:       l.handled.Load(),
		Failed:        l.failed.Load(),
		Ignored:       l.ignored.Load(),
		Dropped:       l.dropped.Load(),
		Subscriptions: l.subs.Load(),
		Reaped:        l.reaped.Load(),
		InFlight:      l.inFlight.Load(),
	}
	if q := l.queue.Load(); q != nil {
		s.QueueDepth = len(*q)
	}
	return s
}

// ErrListenerRunning is returned by Run when the Listener is already running.
var ErrListenerRunning = errors.New("expiry: listener already running")

// Run subscribes and handles events until ctx ends. Then it stops reading,
// lets the workers finish the queued and in-flight events and a hook that is
// running finish its call (for at most ShutdownTimeout) and returns nil, or ctx's error wrapped if handlers had to
// be cancelled. go-redis reconnects by itself after a lost connection; each
// resubscription calls OnSubscribe.
func (l *Listener) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return ErrListenerRunning
	}
	defer l.running.Store(false)

	// Handlers and hooks outlive ctx until the drain is over.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()

	queue := make(chan Event, l.cfg.QueueSize)
	l.queue.Store(&queue)

	var workers sync.WaitGroup
	for range l.cfg.Workers {
		workers.Go(func() {
			for ev := range queue {
				l.handle(hctx, ev)
			}
		})
	}

	var bg sync.WaitGroup
	kick := make(chan struct{}, 1)
	l.dropKick = make(chan struct{}, 1)
	for _, h := range []struct {
		trigger chan struct{}
		f       func(context.Context)
	}{{kick, l.cfg.OnSubscribe}, {l.dropKick, l.cfg.OnDrop}} {
		if h.f == nil {
			continue
		}
		bg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-h.trigger:
					h.f(hctx)
				}
			}
		})
	}
	if l.cfg.Interval > 0 && l.cfg.OnInterval != nil {
		bg.Go(func() { every(ctx, l.cfg.Interval, func() { l.cfg.OnInterval(hctx) }) })
	}
	if s := l.cfg.Scheduler; s != nil {
		bg.Go(func() { l.reap(ctx, s) })
	}

	ps := l.client.Subscribe(ctx, l.Channel())
	msgs := ps.ChannelWithSubscriptions(redis.WithChannelSize(1000))
	l.log.Info("listening for expired keys", zap.String("channel", l.Channel()),
		zap.String("key_prefix", l.cfg.KeyPrefix), zap.Int("workers", l.cfg.Workers))

read:
	for {
		select {
		case <-ctx.Done():
			break read
		case m, ok := <-msgs:
			if !ok {
				break read
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					n := l.subs.Add(1)
					l.log.Info("subscribed", zap.String("channel", m.Channel), zap.Uint64("subscriptions", n))
					trigger(kick)
				}
			case *redis.Message:
				l.enqueue(ctx, queue, m)
			}
		}
	}

	_ = ps.Close()
	close(queue)
	done := make(chan struct{})
	go func() { workers.Wait(); bg.Wait(); close(done) }() // a running sweep counts as in flight
	timer := time.NewTimer(l.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
		l.log.Info("listener stopped", zap.Uint64("handled", l.handled.Load()))
		return nil
	case <-timer.C:
		hcancel()
		<-done
		l.log.Warn("listener stopped before its handlers finished", zap.Duration("shutdown_timeout", l.cfg.ShutdownTimeout))
		return errors.Join(errors.New("expiry: shutdown timeout passed before handlers finished"), ctx.Err())
	}
}

func (l *Listener) enqueue(ctx context.Context, queue chan Event, m *redis.Message) {
	l.received.Add(1)
	ev, err := NewEvent(m.Channel, m.Payload, l.cfg.KeyPrefix, time.Now())
	if err != nil {
		l.ignored.Add(1)
		l.log.Debug("expired key ignored", zap.String("key", m.Payload), zap.Error(err))
		return
	}
	select {
	case queue <- ev:
		return
	default:
	}
	if l.cfg.QueueWait > 0 {
		timer := time.NewTimer(l.cfg.QueueWait)
		defer timer.Stop()
		select {
		case queue <- ev:
			return
		case <-timer.C:
		case <-ctx.Done():
		}
	}
	n := l.dropped.Add(1)
	trigger(l.dropKick)
	if now := time.Now(); now.Sub(l.lastDropLog) > time.Second { // one line a second, not one per event
		l.lastDropLog = now
		l.log.Warn("queue full: dropping expired-key events; a catch-up sweep handles them",
			zap.Uint64("dropped", n), zap.Int("queue_size", cap(queue)))
	}
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
		l.log.Debug("expired key ignored: no handler", zap.String("key", ev.Key))
	default:
		l.failed.Add(1)
		l.log.Error("expired key not handled", zap.String("key", ev.Key), zap.Error(err))
	}
}

func (l *Listener) reap(ctx context.Context, s *Scheduler) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		res, err := s.Reap(ctx)
		l.reaped.Add(uint64(res.Gone))
		wait := l.cfg.ReapInterval
		switch {
		case err != nil && ctx.Err() == nil:
			l.log.Warn("reaper round failed", zap.Error(err))
			wait = time.Second
		case res.More:
			wait = 0
		}
		timer.Reset(wait)
	}
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
