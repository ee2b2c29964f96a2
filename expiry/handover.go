package expiry

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// A timer reaches a listener twice: the reaper hands it to the handler at
// its deadline, and Redis announces its key's expiry a moment later (to
// every listener). The holder of the timer's shard notes what it handled
// (shardState.notes) and skips the second sighting. When the shard changes
// hands cleanly (a stop, a rebalance) the notes go with it: the release
// writes them beside the shard (its handover record) and the next holder
// reads them when it takes the shard. The listener that released a shard
// keeps hearing its events until another has taken it, and parks them in
// the shard's due index, due now, unless the handover record names them:
// whoever takes the shard reaps them. Events of a shard whose holder's
// heartbeat lapsed are parked by whoever hears them. And every listener keeps the events it skipped because a live
// listener held their shard for a while: when that holder's heartbeat lapses
// (it died, or froze), they are parked too, so that an event heard by some
// live listener is handled even when its holder died with it in hand.

// shardState is a listener's state of one shard of the due index.
type shardState struct {
	// mu is held while an event of the shard is routed and noted, during a
	// reaper round, and while the shard's lease is released: the handover
	// record then names everything this listener took on.
	mu      sync.Mutex
	notes   recent
	skipped skippedLog // guarded by mu
	plan    wakePlan
}

func newShardStates(n int, reapEvery time.Duration) []*shardState {
	out := make([]*shardState, n)
	for i := range out {
		out[i] = &shardState{notes: recent{period: recordKept}, plan: wakePlan{kick: make(chan struct{}, 1), every: reapEvery}}
	}
	return out
}

// recent remembers which timers a listener handed to its handler, so that a
// timer both reaped and announced is handled once: whichever comes first is
// handled and noted; the second forgets the note (a key set again later is a
// new timer). While its shard settles after changing hands, a note is kept
// through any number of sightings: a timer may then also come back parked by
// the listener that released the shard. Notes older than two periods are
// forgotten.
type recent struct {
	period time.Duration

	mu          sync.Mutex
	cur, old    map[string]int64 // key → when noted (Unix ms)
	rotated     time.Time
	settleUntil time.Time
	// gone are the notes forgotten lately (seen twice), for goneKept: the
	// handover record names them too, since another listener may read the
	// same event later than this one did (its subscription lags), after it
	// took the shard.
	gone []goneNote
}

type goneNote struct {
	key string
	at  time.Time
}

// Bounds of the forgotten notes a handover record names.
const (
	goneKept = 5 * time.Second
	goneMax  = 200000
)

// forgetSeen forgets the note of key, seen twice, keeping it for the
// handover record a while.
func (r *recent) forgetSeen(m map[string]int64, key string, now time.Time) {
	delete(m, key)
	drop := 0
	for drop < len(r.gone) && (now.Sub(r.gone[drop].at) > goneKept || len(r.gone)-drop >= goneMax) {
		drop++
	}
	r.gone = append(r.gone[drop:], goneNote{key, now})
}

// settleFor is how long a shard settles after changing hands.
const settleFor = 10 * time.Second

// settle keeps notes through repeated sightings for settleFor.
func (r *recent) settle() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.settleUntil = time.Now().Add(settleFor)
}

func (r *recent) rotate(now time.Time) {
	if r.cur == nil || now.Sub(r.rotated) > r.period {
		r.old, r.cur, r.rotated = r.cur, make(map[string]int64), now
	}
}

// first reports whether key is seen for the first time, noting it; a
// second sighting forgets it.
func (r *recent) first(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.rotate(now)
	keep := now.Before(r.settleUntil)
	if _, ok := r.cur[key]; ok {
		if !keep {
			r.forgetSeen(r.cur, key, now)
		}
		return false
	}
	if _, ok := r.old[key]; ok {
		if !keep {
			r.forgetSeen(r.old, key, now)
		}
		return false
	}
	r.cur[key] = now.UnixMilli()
	return true
}

// has reports whether key is noted, without changing anything.
func (r *recent) has(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, a := r.cur[key]
	_, b := r.old[key]
	return a || b
}

// forget removes the note of a key that was not handled after all.
func (r *recent) forget(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cur, key)
	delete(r.old, key)
}

// load notes keys handled by the shard's last holder.
func (r *recent) load(keys []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.rotate(now)
	for _, k := range keys {
		r.cur[k] = now.UnixMilli()
	}
}

// recent returns the keys noted within recordKept, for a handover record.
func (r *recent) recent() []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	since := now.Add(-recordKept).UnixMilli()
	var out []any
	for _, m := range []map[string]int64{r.cur, r.old} {
		for k, at := range m {
			if at >= since {
				out = append(out, k)
			}
		}
	}
	for _, g := range r.gone {
		if now.Sub(g.at) <= goneKept {
			out = append(out, g.key)
		}
	}
	return out
}

// skippedLog keeps the events of a shard that a listener skipped because
// another held the shard, for skippedKept, and at most skippedMax of them.
type skippedLog struct {
	keys []string
	at   []time.Time
}

// Bounds of the skipped events a listener keeps, per shard.
const (
	skippedKept = 20 * time.Second
	skippedMax  = 20000
)

func (s *skippedLog) add(key string, now time.Time) {
	drop := 0
	for drop < len(s.at) && (now.Sub(s.at[drop]) > skippedKept || len(s.at)-drop >= skippedMax) {
		drop++
	}
	s.keys, s.at = append(s.keys[drop:], key), append(s.at[drop:], now)
}

// take returns the skipped keys heard since t and forgets them all.
func (s *skippedLog) take(since time.Time) []string {
	var out []string
	for j, at := range s.at {
		if !at.Before(since) {
			out = append(out, s.keys[j])
		}
	}
	s.keys, s.at = nil, nil
	return out
}

// parkTimers adds ARGV[2..] to the shard KEYS[1], due at ARGV[1] (Unix ms),
// unless they are there already or the shard's handover record KEYS[2] names
// them (its last holder handled them). It returns how many it added.
var parkTimers = redis.NewScript(`
local n = 0
for i = 2, #ARGV do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    n = n + redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[i])
  end
end
return n`)

// parkReq is an event to park in shard's index.
type parkReq struct {
	shard int
	key   string
}

// parker parks events in the due index on a goroutine of its own, so that
// the subscriber's reader never waits on Redis.
type parker struct {
	l    *Listener
	s    *Scheduler
	reqs chan parkReq
}

// park asks for key to be parked in shard's index; when the parker is full
// the listener handles the event itself (rather than lose it).
func (p *parker) park(ctx context.Context, queue chan<- Event, shard int, ev Event) {
	select {
	case p.reqs <- parkReq{shard, ev.RawKey}:
	default:
		p.l.offer(ctx, queue, ev)
	}
}

// run parks what is asked until ctx ends, in batches, and then what was
// asked before.
func (p *parker) run(ctx context.Context, queue chan<- Event) {
	for {
		var batch []parkReq
		select {
		case <-ctx.Done():
			p.drain(ctx, queue)
			return
		case r := <-p.reqs:
			batch = append(batch, r)
		}
	more:
		for len(batch) < 1000 {
			select {
			case r := <-p.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		p.parkBatch(ctx, queue, batch)
	}
}

// drain parks what is left once nothing asks any more.
func (p *parker) drain(ctx context.Context, queue chan<- Event) {
	var batch []parkReq
	for {
		select {
		case r := <-p.reqs:
			batch = append(batch, r)
			continue
		default:
		}
		break
	}
	if len(batch) > 0 {
		p.parkBatch(ctx, queue, batch)
	}
}

func (p *parker) parkBatch(ctx context.Context, queue chan<- Event, batch []parkReq) {
	// What was asked is parked even when the listener stops meanwhile.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	byShard := map[int][]any{}
	for _, r := range batch {
		byShard[r.shard] = append(byShard[r.shard], r.key)
	}
	now := time.Now().UnixMilli()
	cmds := map[int]*redis.Cmd{}
	_, err := p.s.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, keys := range byShard {
			sh := p.s.shards[i]
			cmds[i] = parkTimers.Eval(ctx, pl, []string{sh, recordKey(sh)}, append([]any{now}, keys...)...)
		}
		return nil
	})
	if err != nil {
		// Not parked: handle them here rather than lose them (at least once).
		p.l.log.Warn("cannot park expired timers in the due index: handling them here", "timers", len(batch), "error", err)
		for _, r := range batch {
			p.l.offer(ctx, queue, Event{Key: r.key[len(p.l.cfg.KeyPrefix):], RawKey: r.key, DB: p.l.db, Received: time.Now()})
		}
		return
	}
	var n int64
	var wakes []shardWake
	for i, c := range cmds {
		added, _ := c.Int64()
		n += added
		wakes = append(wakes, shardWake{i, now})
	}
	p.l.parked.Add(uint64(n))
	p.s.publishWakes(ctx, wakes)
}

// parkSkipped parks the events skipped for the shards a listener held when
// its heartbeat lapsed: it may have died with them in hand.
func (l *Listener) parkSkipped(holder string, shards []int) {
	since := time.Now().Add(-skippedKept)
	n := 0
	for _, i := range shards {
		sh := l.shards[i]
		sh.mu.Lock()
		keys := sh.skipped.take(since)
		sh.mu.Unlock()
		for _, k := range keys {
			select {
			case l.parker.reqs <- parkReq{i, k}:
				n++
			default:
			}
		}
	}
	if n > 0 {
		l.log.Info("parked the events skipped for a listener whose heartbeat lapsed", "listener", holder, "timers", n)
	}
}

// shardWake says that shard has a timer due at (Unix ms).
type shardWake struct {
	shard int
	at    int64
}

func formatWakes(ws []shardWake) string {
	var b []byte
	for j, w := range ws {
		if j > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(w.shard), 10)
		b = append(b, ':')
		b = strconv.AppendInt(b, w.at, 10)
	}
	return string(b)
}
