package expiry

import "sync/atomic"

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
	Skipped       uint64 // events for keys whose shard another live listener holds
	Parked        uint64 // events put in the due index for the next holder of their shard (nobody held it, or its holder died)
	Repeated      uint64 // events for timers handled already (by this listener, or by the shard's last holder)
	Retried       uint64 // failed timers set due again in the index, after RetryDelay
	Dead          uint64 // failed timers moved to the dead set after MaxAttempts
	Takeovers     uint64 // leases this listener took (at its start, on a rebalance, from a listener that left or died)
	QueueDepth    int    // events waiting for a worker now
	InFlight      int64  // handler calls running now
	Shards        int    // shards of the due index this listener holds now
	Sweeps        bool   // whether this listener holds the sweep lease now
	Listeners     int    // live listeners sharing the due index, as last seen
}

// counters are the Listener's atomic counters behind Stats.
type counters struct {
	received, handled, failed, ignored, malformed, dropped, subs, reaped atomic.Uint64
	skipped, parked, repeated, retried, dead, noRecord                   atomic.Uint64
	takeovers                                                            atomic.Uint64 // of past runs
	inFlight                                                             atomic.Int64
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
		Parked:        l.parked.Load(),
		Repeated:      l.repeated.Load(),
		Retried:       l.retried.Load(),
		Dead:          l.dead.Load(),
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
