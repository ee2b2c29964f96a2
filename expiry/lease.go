package expiry

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Listeners that share a Scheduler share its work. Each announces itself in
// a heartbeat sorted set, "<Index>:listeners" (score: when its heartbeat
// lapses, Unix ms). From the live listeners every one computes the same
// assignment of the index's shards, spread evenly (rendezvous hashing with a
// bound on the load), and of the periodic sweep. A listener holds what it is
// assigned by leases in Redis: "<Index>:{n}:lease" beside shard n (the same
// hash tag, so the same Cluster node) and "<Index>:sweep", each holding the
// listener's ID with a TTL. It takes a lease when it is free, renews it
// every LeaseInterval, releases what is assigned to another (which takes it
// at once: a release is announced on the channel "<Index>:leases"), and
// releases everything on a clean stop. A dead listener's leases lapse after
// LeaseTTL, and its heartbeat with them, so the others take its share.

// Names of the keys and the channel of a due index's leases.
func leaseKey(shard string) string      { return shard + ":lease" }
func membersKey(index string) string    { return index + ":listeners" }
func sweepLeaseKey(index string) string { return index + ":sweep" }
func leaseChannel(index string) string  { return index + ":leases" }

// claimLease renews the lease KEYS[1] when ARGV[1] holds it, or takes it
// when it is free, for ARGV[2] ms. It returns 1 when renewed, 2 when taken
// and 0 when another holds it.
var claimLease = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0`)

// releaseLease deletes the lease KEYS[1] if ARGV[1] holds it.
var releaseLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// defaultID names a listener by its host and process, and a random part
// for two listeners in one process.
func defaultID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), rand.Text()[:6])
}

// leaseItem is one thing held by a lease: a shard of the due index (reaped,
// and owner of its keys' events) or the periodic sweep.
type leaseItem struct {
	name string // the shard's sorted set, or "sweep"
	key  string // the lease's key
}

// leaseKeeper is the part of a Listener that holds its share of the leases.
type leaseKeeper struct {
	client   redis.UniversalClient
	id       string
	members  string
	channel  string
	items    []leaseItem // the shards in index order, then the sweep
	ttl      time.Duration
	interval time.Duration
	log      *zap.Logger
	onChange func(held []string, sweeps bool)

	kick      chan struct{}
	announce  atomic.Bool // tell the others after the next round
	standby   atomic.Bool // hold nothing and stay out of the assignment (SetStandby)
	takeovers atomic.Uint64

	mu        sync.Mutex
	holders   []string    // per item, as last seen; "" when free
	heldUntil []time.Time // per item: until when our lease surely holds
	released  []bool      // per item: we gave our lease up (not lost it) in the last round, or at stop
	seen      time.Time   // when holders was read
	live      int
	changed   chan struct{} // closed when what we hold changes
	lastHeld  []string
	lastSweep bool
}

func newLeaseKeeper(client redis.UniversalClient, s *Scheduler, id string, ttl, interval time.Duration, log *zap.Logger) *leaseKeeper {
	k := &leaseKeeper{client: client, id: id, members: membersKey(s.index), channel: leaseChannel(s.index),
		ttl: ttl, interval: interval, log: log, kick: make(chan struct{}, 1), changed: make(chan struct{})}
	for _, sh := range s.shards {
		k.items = append(k.items, leaseItem{name: sh, key: leaseKey(sh)})
	}
	k.items = append(k.items, leaseItem{name: "sweep", key: sweepLeaseKey(s.index)})
	k.holders = make([]string, len(k.items))
	k.heldUntil = make([]time.Time, len(k.items))
	k.released = make([]bool, len(k.items))
	return k
}

func (k *leaseKeeper) sweepItem() int { return len(k.items) - 1 }

// holds reports whether this listener holds item i now.
func (k *leaseKeeper) holds(i int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return time.Now().Before(k.heldUntil[i])
}

// mine reports whether this listener should handle an event for a key of
// shard i: it holds the shard, or as far as it knows nobody does (a view
// older than the TTL knows nothing).
func (k *leaseKeeper) mine(i int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if now.Before(k.heldUntil[i]) {
		return true
	}
	h := k.holders[i]
	return h == "" || h == k.id || now.Sub(k.seen) > k.ttl
}

// surely reports whether this listener may finish work on shard i now
// without stepping on another: it holds the lease by its own clock, or it
// handed the lease over itself (a clean stop, a rebalance: what it had
// taken on while holding it, it finishes), or its view is fresh (read
// within the lease interval, twice over) and says nobody holds it. Unlike
// mine, a lease that lapsed unrenewed (a listener that was frozen, or cut
// off from Redis) and a stale view say no.
func (k *leaseKeeper) surely(i int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
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
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.live
}

// held returns the shards this listener holds and whether it holds the sweep.
func (k *leaseKeeper) held() (shards []string, sweeps bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
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
		var moved bool
		var err error
		if k.standby.Load() {
			moved, err = k.stepDown(ctx)
		} else {
			moved, err = k.round(ctx)
		}
		if err != nil && ctx.Err() == nil {
			if ok, suppressed := errLog.allow(time.Now()); ok {
				k.log.Warn("cannot renew the shard leases; they lapse after the lease TTL",
					zap.Error(err), zap.Duration("lease_ttl", k.ttl), zap.Uint64("suppressed", suppressed))
			}
		}
		if err == nil && (k.announce.Swap(false) || moved) {
			k.client.Publish(ctx, k.channel, k.id)
		}
		k.report()
		t.Reset(k.interval)
	}
}

// round beats the heartbeat, reads the live listeners and the leases, and
// takes, renews and releases leases to match the assignment. It reports
// whether it took or released any: the others should then read the leases
// again, so that none goes on handling the events of a shard it no longer
// holds, or thinks free.
func (k *leaseKeeper) round(ctx context.Context) (moved bool, err error) {
	start := time.Now()
	now := strconv.FormatInt(start.UnixMilli(), 10)
	var members *redis.StringSliceCmd
	gets := make([]*redis.StringCmd, len(k.items))
	_, err = k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, k.members, redis.Z{Score: float64(start.Add(k.ttl).UnixMilli()), Member: k.id})
		p.ZRemRangeByScore(ctx, k.members, "-inf", "("+now)
		members = p.ZRange(ctx, k.members, 0, -1)
		for i, it := range k.items {
			gets[i] = p.Get(ctx, it.key)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("expiry: read leases: %w", err)
	}
	live := members.Val()
	want := assign(live, k.items)

	ttl := strconv.FormatInt(k.ttl.Milliseconds(), 10)
	cmds := make([]*redis.Cmd, len(k.items))
	rel := make([]bool, len(k.items))
	_, err = k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, it := range k.items {
			switch h := gets[i].Val(); {
			case want[i] == k.id && (h == k.id || h == ""):
				cmds[i] = claimLease.Eval(ctx, p, []string{it.key}, k.id, ttl)
			case want[i] != k.id && h == k.id:
				cmds[i], rel[i] = releaseLease.Eval(ctx, p, []string{it.key}, k.id), true
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("expiry: claim leases: %w", err)
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen, k.live = start, len(live)
	for i, it := range k.items {
		k.holders[i] = gets[i].Val()
		c := cmds[i]
		if c == nil {
			if k.holders[i] != k.id {
				k.heldUntil[i] = time.Time{}
			}
			// A lease handed over a round ago: what was queued then is done
			// or dropped by now (the new holder sweeps what it took over).
			k.released[i] = false
			continue
		}
		n, _ := c.Int()
		switch {
		case rel[i]:
			k.holders[i], k.heldUntil[i] = "", time.Time{}
			k.released[i] = n == 1
			moved = true
		case n == 1 || n == 2:
			k.holders[i], k.heldUntil[i], k.released[i] = k.id, start.Add(k.ttl), false
			if n == 2 {
				k.takeovers.Add(1)
				moved = true
			}
		default: // another took it first
			k.heldUntil[i] = time.Time{}
			if k.holders[i] == k.id {
				k.log.Warn("shard lease lost to another listener", zap.String("lease", it.key))
				k.holders[i] = "?"
			}
		}
	}
	return moved, nil
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

// stepDown releases every lease held and leaves the live listeners, so
// that the others take this listener's share at once, and reports whether
// it released anything. A listener in standby runs it every round.
func (k *leaseKeeper) stepDown(ctx context.Context) (bool, error) {
	k.mu.Lock()
	held := false
	for i := range k.items {
		held = held || k.holders[i] == k.id || !k.heldUntil[i].IsZero()
		k.heldUntil[i] = time.Time{}
	}
	k.mu.Unlock()
	start := time.Now()
	gets := make([]*redis.StringCmd, len(k.items))
	_, err := k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, it := range k.items {
			releaseLease.Eval(ctx, p, []string{it.key}, k.id)
		}
		p.ZRem(ctx, k.members, k.id)
		for i, it := range k.items {
			gets[i] = p.Get(ctx, it.key)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return held, fmt.Errorf("expiry: release leases: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen = start // so that events of the shards the others hold are theirs
	for i := range k.items {
		k.holders[i] = gets[i].Val()
	}
	return held, nil
}

// stop releases every lease held and the heartbeat, and tells the others.
func (k *leaseKeeper) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, it := range k.items {
			releaseLease.Eval(ctx, p, []string{it.key}, k.id)
		}
		p.ZRem(ctx, k.members, k.id)
		return nil
	})
	if err == nil {
		k.client.Publish(ctx, k.channel, k.id)
	} else {
		k.log.Warn("shard leases not released: they lapse after the lease TTL", zap.Error(err), zap.Duration("lease_ttl", k.ttl))
	}
	k.mu.Lock()
	for i := range k.items {
		if err == nil && time.Now().Before(k.heldUntil[i]) {
			k.released[i] = true // what the queue still holds of it, this listener finishes
		}
		k.heldUntil[i] = time.Time{}
		if k.holders[i] == k.id {
			k.holders[i] = ""
		}
	}
	k.mu.Unlock()
	k.report()
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

// recent remembers which timers this listener handed to its handler, so that
// a timer both reaped and announced is handled once: whichever comes first
// is handled and noted; the second forgets the note. Notes older than two
// periods are forgotten (the two arrive milliseconds apart).
type recent struct {
	period time.Duration

	mu       sync.Mutex
	cur, old map[string]struct{}
	rotated  time.Time
}

// first reports whether key is seen for the first time, noting it; a
// second sighting forgets it.
func (r *recent) first(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.cur == nil || now.Sub(r.rotated) > r.period {
		r.old, r.cur, r.rotated = r.cur, make(map[string]struct{}), now
	}
	if _, ok := r.cur[key]; ok {
		delete(r.cur, key)
		return false
	}
	if _, ok := r.old[key]; ok {
		delete(r.old, key)
		return false
	}
	r.cur[key] = struct{}{}
	return true
}

// forget removes the note of a key that was not handled after all.
func (r *recent) forget(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cur, key)
	delete(r.old, key)
}
