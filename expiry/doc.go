// Package expiry reacts to Redis keys that expire.
//
// Redis announces an expired key on the channel __keyevent@<db>__:expired
// when notify-keyspace-events includes "Ex". A Listener subscribes to that
// channel, strips its KeyPrefix from each key and hands the Event to a
// Handler — usually a ServeMux, which routes by the longest matching key
// prefix:
//
//	mux := expiry.NewServeMux()
//	mux.Use(expiry.Recover(logger), expiry.Retry(expiry.RetryPolicy{}))
//	mux.HandleFunc("order_pay:", func(ctx context.Context, ev expiry.Event) error {
//		id := strings.TrimPrefix(ev.Key, "order_pay:")
//		return closeUnpaid(ctx, id) // must be idempotent
//	})
//	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{
//		OnSubscribe: func(ctx context.Context) { sweep(ctx) }, // events in a gap are lost
//	})
//	err := l.Run(ctx) // until ctx ends; then drains
//
// Events are a fast path, not a ledger: they are fire-and-forget, lost while
// no subscriber is connected, and Redis publishes them only when it deletes
// the key, which can be minutes late when many keys carry a TTL. Keep the
// truth (a deadline) in your database, make handlers idempotent, and sweep for
// overdue work at start-up, on every resubscription (OnSubscribe), when a
// burst overflowed the queue (OnDrop) and on a timer (Interval, OnInterval).
// The reader never waits on a handler for long: a subscriber that stops
// reading is disconnected by Redis, losing everything in flight.
//
// The hooks get a context that ends when the listener begins to stop: a long
// sweep should then finish the transaction in hand and return. Run waits for
// handlers and hooks at most ShutdownTimeout, then cancels the handlers'
// contexts and returns, as http.Server.Shutdown does.
//
// After every subscription (a restarted Redis may have lost a setting made at
// run time) and every NotifyInterval, the listener checks that Redis still
// publishes expired-key events; Health reports it, and with NotifyEnable it
// turns them on again. A handler returns an error wrapping ErrMalformedKey for
// a key it cannot parse: the listener counts it (Stats.Malformed) and logs at
// most one such key a second, cut to 128 bytes (KeyAttr). The library logs
// through log/slog (ListenerConfig.Logger), and only what it knows: keys,
// shards, listeners.
//
// # The Scheduler: on time, and retried from Redis
//
// A Scheduler fixes the lateness: it writes the TTL key together with an entry
// in a due index (sharded sorted sets), and a Listener given the Scheduler
// reaps the index: a reaper per shard sleeps until just before the shard's
// earliest deadline, touches the keys due so that Redis expires and announces
// them at once, and at the deadline hands each to the handler itself
// (Event.Deadline says when it was due). Scheduling a timer sooner than a reaper would look wakes it (a message
// on "<Index>:wake"); without one it looks every ReapInterval (10 s), so an
// idle listener costs Redis a few commands a second in all.
//
// Schedule again to move a timer, earlier or later: the key's TTL and its
// entry are both replaced. Cancel removes both. A key outside the Scheduler's
// KeyPrefix is refused (ErrOutsidePrefix): its listener would never fire it.
// A handler that sets its own key again (its record is not due yet) calls
// Listener.Forget with the key: the listener notes what it handled, to skip
// the repeat of a timer both reaped and announced, and would otherwise take
// the new timer for such a repeat.
// Keys written by other programs with a plain SET … EX under the prefix are
// timers too: their events are handled, they are just not reaped early.
//
// With a Scheduler, a handler that fails (any error but ErrHandlerNotFound,
// ErrMalformedKey and ErrNoRecord) does not lose its timer: the listener sets
// it due again after RetryDelay (1 s, doubling, up to 10 minutes), counting the
// attempts beside its shard in Redis, so a retry survives a restart of every
// listener and moves with its shard; Event.Attempt counts the failures before.
// After MaxAttempts (10) it is moved to a dead set: Scheduler.Dead lists the
// dead timers with their last error, Inspect counts them (and the retrying
// ones), and Scheduler.Rearm sets one due again. Scheduler.Timers lists a
// shard's timers by deadline. Retry, the middleware, retries in memory first,
// for failures that pass in milliseconds.
//
// CheckNotify tells whether Redis publishes expired events, and what to set if
// it does not; EnableNotify sets it when the operator asks for it.
//
// # Redis Cluster and Sentinel
//
// Give the Listener the client you have. On Redis Cluster, Redis publishes a
// key's expiry only on the master that owns it, so the Listener subscribes on
// every master, reads the masters again every TopologyInterval, and moves its
// subscriptions after a failover or resharding (each new subscription calls
// OnSubscribe: events may have been missed). The Scheduler's shards carry hash
// tags, so they spread over the masters, and each is reaped on its own.
//
//	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"}})
//	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{OnSubscribe: sweep})
//
// Behind Sentinel, pass the failover options too: the Listener asks the
// sentinels where the master is every TopologyInterval and moves its
// subscription when it changes (go-redis's own would stay on the old master
// until Sentinel disconnects it, seconds later).
//
//	fo := &redis.FailoverOptions{MasterName: "shop", SentinelAddrs: []string{"10.0.0.1:26379", "10.0.0.2:26379"}}
//	l := expiry.NewListener(redis.NewFailoverClient(fo), mux, expiry.ListenerConfig{Sentinel: fo, OnSubscribe: sweep})
//
// notify-keyspace-events is per node and not replicated: the Listener checks
// it on every node, replicas included, and reports one that lacks it.
//
// # Several listeners
//
// Run as many Listeners as you like (processes, hosts) on one Redis, each
// given a Scheduler of the same due index: they share the work instead of
// repeating it. Redis broadcasts every expired-key event to all of them, so
// each shard of the index has one holder at a time, by a lease in Redis on
// the shard's own hash tag ("<Index>:{n}:lease", the same Cluster node as the
// shard). The holder reaps the shard and hands each expired timer to its
// handler itself; an event is handled by the listener that holds its key's
// shard (keys written by other programs have a shard too: a hash of the key);
// the others count it in Stats.Skipped. OnInterval (the periodic sweep) runs
// on the one listener that holds the sweep lease ("<Index>:sweep");
// OnSubscribe and OnDrop stay with the listener that may have missed events.
//
// Each listener beats a heartbeat in "<Index>:listeners" every LeaseInterval
// (a third of LeaseTTL, 5 s), and its leases hold as long as its heartbeat
// does. From the live listeners each computes the same even assignment
// (rendezvous hashing with a bound on the load). A listener that joins or
// stops cleanly says so on the channel "<Index>:leases", and the shards move
// within milliseconds; one that dies keeps its shards until its heartbeat
// lapses (LeaseTTL). OnShards tells a listener what it holds whenever that
// changes; Stats has Shards, Sweeps, Listeners and Takeovers; Inspect shows
// every shard's holder.
//
// What is once and what is at least once:
//
//   - Once: a timer is handled once while listeners stop cleanly (SIGTERM,
//     a rolling restart) and while shards move because a listener joined or
//     left. The reaper hands a timer over at its deadline and the key's own
//     event follows; the holder notes what it handled, and a listener that
//     releases a shard writes its notes beside it ("<Index>:{n}:handed") for
//     the next holder. A stopping listener keeps hearing until its shards
//     are taken, and parks the events it hears meanwhile in the index for
//     their next holder; it finishes what it had queued (ShutdownTimeout).
//     A release the stop cuts into is carried through, so the record always
//     reaches the next holder.
//   - At least once, never zero, after a listener dies (kill -9, a lost
//     host): what it had in hand may be handled again by the next holder.
//     Every listener keeps, for 20 s, the events it skipped because another
//     held their shard; when that holder's heartbeat lapses they are parked
//     in its shards' index, so an expiry heard by any live listener is
//     handled, keys written without the Scheduler included.
//   - A timer whose handler fails is retried from Redis, then dead (above).
//   - Nothing is heard while no listener is subscribed (all stopped, or Redis
//     unreachable): timers in the index are reaped when one comes back, but
//     events of plain keys are gone. That is what a sweep of your database is
//     for.
//
// So a handler must still be idempotent (a conditional update: "close the
// order if it is still unpaid"), and an app that cannot lose a timer keeps
// its deadline in its database and sweeps for it (OnSubscribe, OnInterval).
// A key that expires again within 10 s of its previous expiry, while its
// shard is changing hands, may be taken for a repeat.
//
// A listener that was frozen (a GC pause, a VM freeze, SIGSTOP) or cut off
// from Redis past its heartbeat's end believes, when it resumes, what it
// believed before. A handler that must not commit work for a shard the
// listener no longer holds checks Listener.Surely(key) just before it
// commits (a fence): it says yes while the lease holds by the listener's own
// clock, or was handed over cleanly (a stop, a rebalance: what was queued
// then is finished), or a view of the leases read moments ago says nobody
// holds it; a lease whose heartbeat lapsed says no until the listener has
// read the leases again. A listener that cannot do its share's work for a
// while (its database does not answer) calls SetStandby(true): it gives every
// lease up and leaves the live listeners, so that the others take its share
// at once, until SetStandby(false).
//
// Lease is the same primitive for an app's own one-at-a-time work.
//
// The index, its leases and the key prefix are one namespace per
// application: give the Scheduler a KeyPrefix (its index is then named
// "<KeyPrefix>expiry:due" unless you name it) and the Listener takes the same
// prefix from it. Two applications on one Redis must not share an index, or
// one's reaper would hand the other's timers to its handler.
package expiry
