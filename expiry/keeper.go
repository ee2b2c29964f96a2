package expiry

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Listeners that share a Scheduler share its work. Each beats a heartbeat in
// a sorted set, "<Index>:listeners" (score: when it lapses, by Redis's
// clock). From the live listeners every one computes the same assignment of
// the index's shards, spread evenly (rendezvous hashing with a bound on the
// load), and of the periodic sweep. A listener holds what it is assigned by
// leases: "<Index>:{n}:lease" beside shard n (the same hash tag, so the same
// Cluster node) and "<Index>:sweep", each holding the listener's ID. A lease
// holds as long as its holder's heartbeat does: renewing the heartbeat renews
// every lease at once, so an idle listener costs Redis a few commands a
// second, not one per lease. Another listener takes a lease only when it is
// free or its holder's heartbeat has lapsed. A listener releases what is
// assigned to another (which takes it at once: a release is announced on the
// channel "<Index>:leases"), writing beside the shard what it handled lately
// (its handover record, "<Index>:{n}:handed"), so that the next holder does
// not handle those timers again; it releases everything on a clean stop.

// Names of the keys and channels of a due index's leases.
func leaseKey(shard string) string      { return shard + ":lease" }
func recordKey(shard string) string     { return shard + ":handed" }
func membersKey(index string) string    { return index + ":listeners" }
func sweepLeaseKey(index string) string { return index + ":sweep" }
func leaseChannel(index string) string  { return index + ":leases" }

// heartbeat renews ARGV[1]'s heartbeat in KEYS[1] for ARGV[2] ms by Redis's
// clock ("0": leaves instead), drops heartbeats lapsed more than ARGV[3] ms
// ago, and returns Redis's time (Unix ms) and the heartbeats as they were
// before (member, score, ...).
var heartbeat = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
if m[2] and tonumber(m[2]) < now - tonumber(ARGV[3]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
end
return {now, m}`)

// Tunables of the lease keeper.
const (
	// deadKept is how long a lapsed heartbeat stays in the set: long enough
	// for every listener to see that its owner died.
	deadKept = time.Minute
	// recordKept is how long a handover record lasts, and how far back a
	// listener's notes of what it handled go.
	recordKept = 30 * time.Second
	// rereadEvery is the pause between reads of every lease when nothing
	// changed: a safety net, since every move is announced.
	rereadEvery = 30 * time.Second
)

// leaseItem is one thing held by a lease: a shard of the due index (reaped,
// and owner of its keys' events) or the periodic sweep.
type leaseItem struct {
	name   string // the shard's sorted set, or "sweep"
	lease  Lease
	record string // the shard's handover record; "" for the sweep
}

// route says what a listener does with the event of a key of some shard.
type route int

const (
	routeMine   route = iota // it holds the shard (or cannot tell: its view is stale)
	routeTheirs              // a live listener holds it and hears the event too
	routePark                // nobody does, or its holder is gone: park it in the index
)

// leaseKeeper is the part of a Listener that holds its share of the leases.
type leaseKeeper struct {
	client   redis.UniversalClient
	id       string
	members  string
	channel  string
	items    []leaseItem // the shards in index order, then the sweep
	ttl      time.Duration
	interval time.Duration
	log      *slog.Logger
	onChange func(held []string, sweeps bool)
	// shards are the listener's per-shard state: a release happens under the
	// shard's lock, with its notes as the handover record, and a take loads
	// the record into them.
	shards []*shardState
	// onDead is told the shards a listener held when its heartbeat lapsed.
	onDead func(holder string, shards []int)
	// canJoin says whether this listener hears every node: until then it
	// reads the leases (to route the events it hears) but takes no share,
	// so that no shard is handed to a listener that cannot hear its events.
	canJoin func() bool

	kick      chan struct{}
	handedOff chan struct{} // closed when, stopped, it released its leases and others took them
	ready     chan struct{} // closed after the first round that read the leases
	readyOnce sync.Once
	announce  atomic.Bool // tell the others after the next round
	reread    atomic.Bool // read every lease in the next round (an announcement was heard)
	standby   atomic.Bool // hold nothing and stay out of the assignment (SetStandby)
	takeovers atomic.Uint64

	mu        sync.RWMutex // read by every event's routing and every fence check
	holders   []string     // per item, as last read; "" when free
	heldUntil []time.Time  // per item: until when our lease surely holds
	released  []bool       // per item: we gave our lease up (not lost it) lately, or at stop
	parkUntil []time.Time  // per item: released by us and seen taken; we still park its events until then (handoverOverlap)
	seen      time.Time    // when the last round succeeded
	read      time.Time    // when the leases were last read
	live      []string     // live listeners, sorted, as last seen
	liveSet   map[string]bool
	dead      map[string]bool // lapsed heartbeats seen, so that each is told once
	changed   chan struct{}   // closed when what we hold changes
	lastHeld  []string
	lastSweep bool
}

func newLeaseKeeper(client redis.UniversalClient, s *Scheduler, id string, ttl, interval time.Duration, log *slog.Logger, shards []*shardState) *leaseKeeper {
	k := &leaseKeeper{client: client, id: id, members: membersKey(s.index), channel: leaseChannel(s.index),
		ttl: ttl, interval: interval, log: log, shards: shards, kick: make(chan struct{}, 1), changed: make(chan struct{}),
		handedOff: make(chan struct{}), ready: make(chan struct{}),
		dead: map[string]bool{}, liveSet: map[string]bool{}}
	for _, sh := range s.shards {
		k.items = append(k.items, leaseItem{name: sh, lease: Lease{Key: leaseKey(sh)}, record: recordKey(sh)})
	}
	k.items = append(k.items, leaseItem{name: "sweep", lease: Lease{Key: sweepLeaseKey(s.index)}})
	k.holders = make([]string, len(k.items))
	k.heldUntil = make([]time.Time, len(k.items))
	k.released = make([]bool, len(k.items))
	k.parkUntil = make([]time.Time, len(k.items))
	return k
}

// handoverOverlap is how long a listener that released a shard goes on
// parking its events after it saw another take it. The taker routes the
// shard's events to itself only once its own take has returned, and the
// releaser may read the lease a moment before that: without the overlap an
// event heard in between is skipped by both. A parked event the taker
// handled too is noted there, and its reaper skips it.
const handoverOverlap = 100 * time.Millisecond

func (k *leaseKeeper) sweepItem() int { return len(k.items) - 1 }

// holds reports whether this listener holds item i now.
func (k *leaseKeeper) holds(i int) bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return time.Now().Before(k.heldUntil[i])
}

// route says what to do with the event of a key of shard i.
func (k *leaseKeeper) route(i int) route {
	k.mu.RLock()
	defer k.mu.RUnlock()
	now := time.Now()
	switch h := k.holders[i]; {
	case now.Before(k.heldUntil[i]), now.Sub(k.seen) > k.ttl: // ours, or no view to go by: handle rather than lose
		return routeMine
	case h == "" && k.released[i]: // we released it and it is not taken yet: we still hear for it
		return routePark
	case h == k.id, k.dead[h]: // its holder's heartbeat lapsed (ours too: being read again)
		return routePark
	case now.Before(k.parkUntil[i]): // we released it and it was just taken: its taker may not route it to itself yet
		return routePark
	default: // a live holder hears it; a shard released by another is that one's to park
		return routeTheirs
	}
}

// surely reports whether this listener may finish work on shard i now
// without stepping on another: it holds the lease by its own clock, or it
// handed the lease over itself (a clean stop, a rebalance: what it had
// taken on while holding it, it finishes), or its view is fresh (within the
// lease interval, twice over) and says nobody holds it. A lease whose
// heartbeat lapsed (a listener that was frozen, or cut off from Redis) and a
// stale view say no.
func (k *leaseKeeper) surely(i int) bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	now := time.Now()
	if now.Before(k.heldUntil[i]) || k.released[i] {
		return true
	}
	return k.holders[i] == "" && now.Sub(k.seen) <= 2*k.interval
}

// changes returns a channel closed when what this listener holds changes.
func (k *leaseKeeper) changes() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.changed
}

// liveListeners returns how many live listeners the last round saw.
func (k *leaseKeeper) liveListeners() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.live)
}

// held returns the shards this listener holds and whether it holds the sweep.
func (k *leaseKeeper) held() (shards []string, sweeps bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	now := time.Now()
	for i, it := range k.items[:k.sweepItem()] {
		if now.Before(k.heldUntil[i]) {
			shards = append(shards, it.name)
		}
	}
	return shards, now.Before(k.heldUntil[k.sweepItem()])
}

// joined is called when this listener hears the lease channel (again): it
// holds a round at once and tells the others, which then hand over what is
// now assigned to it. (Told before it hears, it might miss their hand-over.)
func (k *leaseKeeper) joined() {
	k.announce.Store(true)
	k.reread.Store(true)
	trigger(k.kick)
}

// heard is called when another listener announced a move.
func (k *leaseKeeper) heard() {
	k.reread.Store(true)
	trigger(k.kick)
}

// run keeps the leases until ctx ends, then releases them.
func (k *leaseKeeper) run(ctx context.Context) {
	errLog := sometimes{period: 10 * time.Second}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			k.stop()
			return
		case <-t.C:
		case <-k.kick:
		}
		moved, err := k.round(ctx)
		if err != nil && ctx.Err() == nil {
			if ok, suppressed := errLog.allow(time.Now()); ok {
				k.log.Warn("cannot renew the heartbeat and leases; they lapse after the lease TTL",
					"error", err, "lease_ttl", k.ttl, "suppressed", suppressed)
			}
		}
		if err == nil && (k.announce.Swap(false) || moved) {
			k.client.Publish(ctx, k.channel, k.id)
		}
		if err == nil {
			k.readyOnce.Do(func() { close(k.ready) })
		}
		k.report()
		t.Reset(k.interval)
	}
}

// round beats the heartbeat and reads the live listeners; when they changed,
// a move was announced, this listener's heartbeat had lapsed, or a while
// passed, it reads the leases and takes and releases leases to match the
// assignment. It reports whether it took or released any: the others should
// then read the leases again.
func (k *leaseKeeper) round(ctx context.Context) (moved bool, err error) {
	start := time.Now()
	standby := k.standby.Load() || (k.canJoin != nil && !k.canJoin())
	reread := k.reread.Swap(false)
	ttl := strconv.FormatInt(k.ttl.Milliseconds(), 10)
	if standby {
		ttl = "0"
	}
	v, err := heartbeat.Run(ctx, k.client, []string{k.members}, k.id, ttl, strconv.FormatInt(deadKept.Milliseconds(), 10)).Slice()
	if err != nil {
		k.reread.Store(k.reread.Load() || reread)
		return false, fmt.Errorf("expiry: heartbeat: %w", err)
	}
	now, beats := parseHeartbeat(v)
	var live, dead []string
	mine := int64(-1)
	for id, until := range beats {
		switch {
		case id == k.id:
			mine = until
		case until >= now:
			live = append(live, id)
		default:
			dead = append(dead, id)
		}
	}
	if !standby {
		live = append(live, k.id)
	}
	slices.Sort(live)
	// Our heartbeat had lapsed (or we were not a member): another may have
	// taken our leases, so we hold nothing until we have read them.
	lapsed := !standby && mine < now

	k.mu.Lock()
	var gone []string
	for _, id := range dead {
		if !k.dead[id] {
			gone = append(gone, id)
		}
	}
	k.dead = make(map[string]bool, len(dead))
	for _, id := range dead {
		k.dead[id] = true
	}
	changed := !slices.Equal(live, k.live)
	k.live, k.liveSet = live, make(map[string]bool, len(live))
	for _, id := range live {
		k.liveSet[id] = true
	}
	k.seen = start
	for i := range k.items {
		if k.holders[i] == k.id && !lapsed && !standby {
			k.heldUntil[i] = start.Add(k.ttl)
		} else {
			k.heldUntil[i] = time.Time{}
		}
	}
	heldBy := slices.Clone(k.holders)
	need := reread || lapsed || changed || len(gone) > 0 || k.read.IsZero() || start.Sub(k.read) >= rereadEvery
	k.mu.Unlock()

	for _, id := range gone {
		var shards []int
		for i, h := range heldBy[:k.sweepItem()] {
			if h == id {
				shards = append(shards, i)
			}
		}
		k.log.Warn("a listener's heartbeat lapsed: its shards go to the others", "listener", id, "shards", len(shards))
		if k.onDead != nil && len(shards) > 0 {
			k.onDead(id, shards)
		}
	}
	if standby {
		return k.releaseAll(ctx)
	}
	if !need {
		return false, nil
	}
	return k.claim(ctx, start, live)
}

// parseHeartbeat reads heartbeat's reply: Redis's time and each member's
// heartbeat end (Unix ms).
func parseHeartbeat(v []any) (now int64, beats map[string]int64) {
	beats = map[string]int64{}
	if len(v) < 2 {
		return 0, beats
	}
	now, _ = v[0].(int64)
	m, _ := v[1].([]any)
	for j := 0; j+1 < len(m); j += 2 {
		id, _ := m[j].(string)
		s, _ := m[j+1].(string)
		f, _ := strconv.ParseFloat(s, 64)
		beats[id] = int64(f)
	}
	return now, beats
}

// claim reads every lease and takes and releases leases to match the
// assignment among live.
func (k *leaseKeeper) claim(ctx context.Context, start time.Time, live []string) (moved bool, err error) {
	gets := make([]*redis.StringCmd, len(k.items))
	_, err = k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, it := range k.items {
			gets[i] = p.Get(ctx, it.lease.Key)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("expiry: read leases: %w", err)
	}
	want := assign(live, k.items)
	isLive := make(map[string]bool, len(live))
	for _, id := range live {
		isLive[id] = true
	}

	var take, release []int
	k.mu.Lock()
	k.read = start
	for i := range k.items {
		h := gets[i].Val()
		k.holders[i] = h
		switch {
		case want[i] == k.id && h == k.id:
			k.heldUntil[i] = start.Add(k.ttl) // our heartbeat holds it
		case want[i] == k.id && (h == "" || !isLive[h]):
			take = append(take, i)
		case want[i] != k.id && h == k.id:
			release = append(release, i)
		default:
			k.heldUntil[i] = time.Time{}
		}
		if h != "" {
			if k.released[i] && h != k.id {
				k.parkUntil[i] = time.Now().Add(handoverOverlap)
			}
			k.released[i] = false // a lease handed over and taken: what was queued then is done or dropped by now
		}
	}
	k.mu.Unlock()

	if len(release) > 0 {
		if _, err := k.release(ctx, release); err != nil {
			return true, err
		}
		moved = true
	}
	if len(take) == 0 {
		return moved, nil
	}
	// Like a release, a take is carried through when ctx ends meanwhile: a
	// lease taken in Redis but not known here would be left to lapse.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	cmds := make([]*redis.Cmd, len(take))
	_, err = k.client.Pipelined(tctx, func(p redis.Pipeliner) error {
		for j, i := range take {
			it := k.items[i]
			keys := []string{it.lease.Key}
			if it.record != "" {
				keys = append(keys, it.record)
			}
			cmds[j] = takeLease.Eval(tctx, p, keys, k.id, gets[i].Val(), "0")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return moved, fmt.Errorf("expiry: take leases: %w", err)
	}
	for j, i := range take {
		v, _ := cmds[j].Slice()
		n, rec, _ := parseTake(v)
		if n != 2 {
			continue // another took it first
		}
		if i < k.sweepItem() {
			k.shards[i].notes.load(rec) // what its last holder handled: not again
			k.shards[i].notes.settle()
		}
		k.mu.Lock()
		k.holders[i], k.heldUntil[i], k.released[i] = k.id, start.Add(k.ttl), false
		k.mu.Unlock()
		k.takeovers.Add(1)
		moved = true
	}
	return moved, nil
}

// release gives up the leases of items, each under its shard's lock and
// with its notes as the handover record, and reports whether it released
// any. A release once begun is carried through even when ctx ends (a stop
// arriving mid-round): cut off, it would leave the lease held in Redis by a
// listener that no longer counts it as its own, and the next holder would
// take it without the handover record when the heartbeat goes. A lease whose
// release failed stays this listener's, to be released again.
func (k *leaseKeeper) release(ctx context.Context, items []int) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	kept := strconv.FormatInt(recordKept.Milliseconds(), 10)
	cmds := make([]*redis.Cmd, len(items))
	for _, i := range items {
		if i < k.sweepItem() {
			sh := k.shards[i]
			sh.mu.Lock() // no reaper round and no event of the shard in between
			defer sh.mu.Unlock()
		}
		k.mu.Lock()
		k.heldUntil[i], k.holders[i] = time.Time{}, ""
		k.mu.Unlock()
	}
	_, err := k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for j, i := range items {
			it := k.items[i]
			if it.record == "" {
				cmds[j] = releaseLease.Eval(ctx, p, []string{it.lease.Key}, k.id)
				continue
			}
			args := append([]any{k.id, now, kept}, k.shards[i].notes.recent()...)
			cmds[j] = releaseLease.Eval(ctx, p, []string{it.lease.Key, it.record}, args...)
		}
		return nil
	})
	if err != nil && errors.Is(err, redis.Nil) {
		err = nil
	}
	released := false
	k.mu.Lock()
	for j, i := range items {
		n, cerr := cmds[j].Int()
		if cerr != nil {
			// Not released (or not known to be): still ours in Redis, and
			// parked for meanwhile (route); a later round or the stop
			// releases it.
			k.holders[i] = k.id
			continue
		}
		k.released[i] = n == 1
		released = released || n == 1
		if i < k.sweepItem() {
			k.shards[i].notes.settle()
		}
	}
	k.mu.Unlock()
	if err != nil {
		return released, fmt.Errorf("expiry: release leases: %w", err)
	}
	return released, nil
}

// releaseTimeout bounds a release of leases.
const releaseTimeout = time.Second

// releaseAll releases every lease held (and, in standby, keeps out of the
// assignment: the heartbeat round left the live listeners already).
func (k *leaseKeeper) releaseAll(ctx context.Context) (bool, error) {
	k.mu.Lock()
	var items []int
	for i := range k.items {
		if k.holders[i] == k.id || !k.heldUntil[i].IsZero() {
			items = append(items, i)
		}
	}
	k.mu.Unlock()
	if len(items) == 0 {
		return false, nil
	}
	return k.release(ctx, items)
}

// report calls onChange and wakes the reapers when what we hold changed.
func (k *leaseKeeper) report() {
	shards, sweeps := k.held()
	k.mu.Lock()
	same := slices.Equal(shards, k.lastHeld) && sweeps == k.lastSweep
	if !same {
		k.lastHeld, k.lastSweep = shards, sweeps
		close(k.changed)
		k.changed = make(chan struct{})
	}
	k.mu.Unlock()
	if !same && k.onChange != nil {
		k.onChange(shards, sweeps)
	}
}

// stop releases every lease held and the heartbeat, tells the others, and
// waits (briefly) until they took what it released: until then this
// listener still hears the events of those shards and parks them.
func (k *leaseKeeper) stop() {
	defer close(k.handedOff)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	k.mu.Lock()
	var held []int
	for i := range k.items {
		if k.holders[i] == k.id || !k.heldUntil[i].IsZero() {
			held = append(held, i)
		}
	}
	others := len(k.live) > 1
	k.mu.Unlock()
	_, err := k.releaseAll(ctx)
	if err == nil {
		err = k.client.ZRem(ctx, k.members, k.id).Err()
	}
	if err == nil {
		k.client.Publish(ctx, k.channel, k.id)
		if others {
			k.waitTaken(held, k.ttl)
		}
	} else {
		k.log.Warn("leases not released: the others take them when the heartbeat lapses", "error", err, "lease_ttl", k.ttl)
	}
	k.mu.Lock()
	for i := range k.items {
		k.heldUntil[i] = time.Time{}
		if k.holders[i] == k.id {
			k.holders[i] = ""
		}
	}
	k.mu.Unlock()
	k.report()
}

// takenGrace is how long a stopping listener still hears once its shards
// were taken.
const takenGrace = 200 * time.Millisecond

// waitTaken polls the leases of items until each is held by another
// listener, for at most d.
func (k *leaseKeeper) waitTaken(items []int, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		gets := make([]*redis.StringCmd, len(items))
		_, err := k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, i := range items {
				gets[j] = p.Get(ctx, k.items[i].lease.Key)
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return
		}
		taken := true
		for _, g := range gets {
			taken = taken && g.Val() != "" && g.Val() != k.id
		}
		if taken {
			// A taker holds by Redis a moment before it knows it: hear for
			// that moment more. (What it handles meanwhile and this one
			// parks, its notes tell apart.)
			select {
			case <-ctx.Done():
			case <-time.After(takenGrace):
			}
			return
		}
		select {
		case <-ctx.Done():
			k.log.Warn("stopping before every shard released was taken by another listener", "waited", d)
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// assign returns the live listener that should hold each item: the shards
// are spread evenly (each takes its highest-ranked listener by rendezvous
// hashing that has room: every listener ends with the floor or the ceiling of
// the shards' mean), the sweep goes to its highest-ranked listener. Every
// listener that sees the same live set computes the same assignment.
func assign(live []string, items []leaseItem) []string {
	want := make([]string, len(items))
	if len(live) == 0 {
		return want
	}
	shards := len(items) - 1
	floor, extra := shards/len(live), shards%len(live) // extra listeners take floor+1
	load := make(map[string]int, len(live))
	full := 0 // listeners holding floor+1
	room := func(m string) bool { return load[m] < floor || (load[m] == floor && full < extra) }
	for i, it := range items {
		best, bestScore := "", uint64(0)
		for _, m := range live {
			if i < shards && !room(m) {
				continue
			}
			if s := rank(m, it.name); best == "" || s > bestScore || (s == bestScore && m < best) {
				best, bestScore = m, s
			}
		}
		want[i] = best
		if i < shards {
			if load[best] == floor {
				full++
			}
			load[best]++
		}
	}
	return want
}

// rank is the rendezvous score of listener m for item.
func rank(m, item string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(m))
	h.Write([]byte{0})
	h.Write([]byte(item))
	x := h.Sum64()
	// splitmix64's finaliser: fnv's low bits alone spread poorly.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}
