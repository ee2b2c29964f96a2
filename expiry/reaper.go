package expiry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The reaper of a shard sleeps until just before the shard's earliest
// deadline (reapLead), reads what is due, removes and hands it over at the
// deadline, and sleeps again. A Scheduler that sets a timer due sooner
// than the reaper would look (within wakeHorizon) says so on the channel
// "<Index>:wake", and the reaper's plan moves earlier; without a wake it
// looks at least every ReapInterval (a wake lost with a broken subscription
// costs that much lateness at most, and every resubscription wakes every
// reaper). An idle shard costs Redis one command per ReapInterval.

// wakeHorizon is how far ahead a Scheduler announces its timers' deadlines:
// a reaper looks at its shard at least this often (ReapInterval is at most
// wakeHorizon), so a later deadline is found by looking.
const wakeHorizon = time.Minute

func wakeChannel(index string) string { return index + ":wake" }

// wakePlan is when the reaper of a shard looks next.
type wakePlan struct {
	every time.Duration // the longest pause (ReapInterval)
	kick  chan struct{}

	mu       sync.Mutex
	at       time.Time // zero: at once
	fallback bool      // at is the longest pause, not a deadline or a wake
}

// wake moves the next look to t, if that is earlier.
func (p *wakePlan) wake(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t.Before(p.at) {
		p.at, p.fallback = t, false
		trigger(p.kick)
	}
}

// next returns when to look next, and whether that is only the longest
// pause (no deadline is known to be due then).
func (p *wakePlan) next() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.at, p.fallback
}

// begin starts a round: until it ends (plan), wakes count from the longest
// pause.
func (p *wakePlan) begin(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.at, p.fallback = now.Add(p.every), true
}

// plan sets the next look to t, unless a wake during the round asked for
// earlier.
func (p *wakePlan) plan(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t.Before(p.at) {
		p.at, p.fallback = t, false
	}
}

// onWake reads a wake message ("<shard>:<Unix ms>,...") and moves the plans
// of the shards it names.
func (l *Listener) onWake(payload string) {
	for part := range strings.SplitSeq(payload, ",") {
		a, b, ok := strings.Cut(part, ":")
		i, err1 := strconv.Atoi(a)
		ms, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || i < 0 || i >= len(l.shards) {
			continue
		}
		l.shards[i].plan.wake(time.UnixMilli(ms))
	}
}

// wakeAll makes every reaper look at once (after a resubscription: wakes
// may have been missed).
func (l *Listener) wakeAll() {
	for _, sh := range l.shards {
		sh.plan.wake(time.Time{}.Add(1))
	}
}

// reap runs the reaper of shard i of s's due index until ctx ends, while
// this listener holds the shard's lease. Each shard has a loop of its own, so
// a shard whose node fails or fails over (on Cluster the shards live on
// different masters) stalls no other.
func (l *Listener) reap(ctx context.Context, s *Scheduler, k *leaseKeeper, i int, queue chan<- Event) {
	sh := l.shards[i]
	var guess []string // the entries the last round found due next
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if !k.holds(i) {
			select { // until what this listener holds changes
			case <-ctx.Done():
				return
			case <-k.changes():
				sh.plan.wake(time.Time{}.Add(1)) // taken: look at once
				continue
			}
		}
		at, fallback := sh.plan.next()
		wakeAt := at
		if !fallback { // a deadline: read ahead of it (see reapLead)
			wakeAt = at.Add(-reapLead)
		}
		if d := time.Until(wakeAt); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			case <-sh.plan.kick:
			case <-k.changes():
			}
			continue
		}
		start := time.Now()
		sh.plan.begin(start)
		if fallback { // no deadline known: one look at the earliest entry first
			head, err := s.head(ctx, s.shards[i])
			if err == nil && (head.IsZero() || head.After(start)) {
				if !head.IsZero() {
					sh.plan.plan(head)
				}
				continue
			}
		}
		res, fired, next, err := s.reapShard(ctx, s.shards[i], reapSlack, at, guess)
		guess = next.keys
		l.reaped.Add(uint64(res.Gone))
		// Noted and queued under the shard's lock, so that a release of the
		// shard names them in its handover record, or comes first: then they
		// go back to the index, for the next holder.
		sh.mu.Lock()
		if k.holds(i) {
			l.handOver(ctx, s, sh, fired, queue)
		} else if len(fired) > 0 {
			l.putBackFired(ctx, s, fired)
		}
		sh.mu.Unlock()
		switch {
		case err != nil && ctx.Err() == nil:
			l.log.Warn("reaper round failed", "shard", s.shards[i], "error", err)
			sh.plan.plan(time.Now().Add(time.Second))
		case res.More:
			sh.plan.plan(start)
		case !next.at.IsZero():
			sh.plan.plan(next.at)
		}
	}
}

// handOver queues the timers a reaper round removed from the index, those
// whose event was not handled first, as their events would be: when the
// queue stays full they are dropped and OnDrop is triggered (a burst bigger
// than the queue is the catch-up sweep's). When ctx ends first, the rest go
// back to the index for whichever listener reaps the shard next. Timers
// that failed before (retries) are handled whatever the notes say.
func (l *Listener) handOver(ctx context.Context, s *Scheduler, sh *shardState, fired []firedTimer, queue chan<- Event) {
	for j, t := range fired {
		if ctx.Err() != nil {
			l.putBackFired(ctx, s, fired[j:])
			return
		}
		if !t.retry && !sh.notes.first(t.key) {
			continue // its event came first
		}
		key, ok := strings.CutPrefix(t.key, l.cfg.KeyPrefix)
		if !ok {
			l.ignored.Add(1)
			continue
		}
		ev := Event{Key: key, RawKey: t.key, DB: l.db, Received: time.Now(), Deadline: t.deadline, Attempt: t.attempts, retry: t.retry}
		if !l.offer(ctx, queue, ev) && t.retry {
			bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = s.putBack(bctx, []string{t.key}) // a retry is not the sweep's: keep it
			cancel()
		}
	}
}

// head returns the earliest deadline of shard (zero when it is empty).
func (s *Scheduler) head(ctx context.Context, shard string) (time.Time, error) {
	zs, err := s.client.ZRangeWithScores(ctx, shard, 0, 0).Result()
	if err != nil || len(zs) == 0 {
		return time.Time{}, err
	}
	return time.UnixMilli(int64(zs[0].Score)), nil
}

// putBackFired returns timers a reaper round removed but did not hand over
// (the listener stopped, or released the shard meanwhile) to the index, due
// now, for whichever listener reaps the shard next.
func (l *Listener) putBackFired(ctx context.Context, s *Scheduler, fired []firedTimer) {
	keys := make([]string, len(fired))
	for j, f := range fired {
		keys[j] = f.key
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := s.putBack(bctx, keys); err != nil {
		l.log.Warn("reaped timers not put back in the due index: the catch-up sweep of the next start takes them",
			"timers", len(keys), "error", err)
	}
}

// firedTimer is a timer a reaper round removed from the index because its
// key expired.
type firedTimer struct {
	key      string
	deadline time.Time
	attempts int  // failed attempts so far
	retry    bool // it failed before, or was re-armed: handle it whatever the notes say
}

// zremDue removes members whose score is still at or before ARGV[1], so an
// entry written again for a later deadline in the meantime survives, and
// returns those it removed, each with its failed attempts from the hash
// KEYS[2] (false when it never failed): of two reapers racing over a shard,
// one gets each entry.
var zremDue = redis.NewScript(`
local out = {}
local failing = redis.call('EXISTS', KEYS[2]) == 1
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    out[#out + 1] = ARGV[i]
    out[#out + 1] = failing and redis.call('HGET', KEYS[2], ARGV[i])
  end
end
return out`)

// reapSlack is how long after its deadline in the index a key may still
// live and count as expired to a Listener's reaper. A TTL is relative (see
// ScheduleMany), so a key's expiry lands after the deadline it was computed
// for by the time its command took to reach Redis: milliseconds, and tens of
// them at the end of a pipeline of thousands. The reaper hands such a timer
// to its handler at the deadline rather than a round after the key's own
// expiry; the key's event that follows is a repeat, and skipped.
const reapSlack = 100 * time.Millisecond

// reapLead is how long before a deadline it knows of a reaper starts its
// round: it reads the entries due by then and their keys' TTLs ahead of time,
// and at the deadline only removes them (one round trip, which also checks
// that none was moved meanwhile) and hands them over. A round reads, touches
// and removes (three round trips), and the reaper's own wake-up can be late
// on a busy host: measured, both cost milliseconds at the tail
// (BENCHMARKS.md, round 4), which the lead takes off a timer's lateness.
const reapLead = 5 * time.Millisecond

// aheadRead is how many entries after the round's moment a round reads: the
// earliest gives the next deadline, and those sharing it are the next
// round's guess, whose keys' TTLs it reads with the entries (one round trip
// fewer in a steady stream of timers).
const aheadRead = 4

// upcoming is a shard's next deadline after a round, and the entries due
// then as far as the round read them.
type upcoming struct {
	at   time.Time
	keys []string
}

// testHookReadAhead, when set by a test, runs in a round ahead of its
// deadline once the entries are read, before they are removed.
var testHookReadAhead func()

// reapShard runs a reaper round over one shard, and returns besides the keys
// that expired (not those left without a TTL) whose entries this round
// removed, and the earliest deadline still ahead (zero when none) with the
// entries due then. A key whose TTL ends within slack of now counts as
// expired. The TTLs of guess (the entries the round before found due next)
// are read with the entries, those of any other entry due afterwards.
//
// With at in the future (a reaper ahead of a deadline, by up to reapLead), the
// round reads the entries due by at and their keys' TTLs now, waits until
// at, and only then removes them: a key whose TTL ends within slack of at
// counts as expired at at. An entry moved later meanwhile (Schedule again)
// is not removed, nor handed over: the removal checks its deadline.
func (s *Scheduler) reapShard(ctx context.Context, shard string, slack time.Duration, at time.Time, guess []string) (ReapResult, []firedTimer, upcoming, error) {
	now := time.Now().UnixMilli()
	var lead int64 // ms until at: the round's moment is now+lead
	if !at.IsZero() {
		lead = max(at.UnixMilli()-now, 0)
	}
	upTo := now + lead
	upToS := strconv.FormatInt(upTo, 10)
	var due, ahead *redis.ZSliceCmd
	ttlOf := make(map[string]*redis.DurationCmd, len(guess))
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		due = p.ZRangeByScoreWithScores(ctx, shard, &redis.ZRangeBy{Min: "-inf", Max: upToS, Count: int64(s.batch)})
		ahead = p.ZRangeByScoreWithScores(ctx, shard, &redis.ZRangeBy{Min: "(" + upToS, Max: "+inf", Count: aheadRead})
		for _, k := range guess {
			ttlOf[k] = p.PTTL(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return ReapResult{}, nil, upcoming{}, fmt.Errorf("expiry: reap %s: %w", shard, err)
	}
	var next upcoming
	for _, a := range ahead.Val() {
		if next.at.IsZero() {
			next.at = time.UnixMilli(int64(a.Score))
		}
		if int64(a.Score) == next.at.UnixMilli() {
			k, _ := a.Member.(string)
			next.keys = append(next.keys, k)
		}
	}
	zs := due.Val()
	if len(zs) == 0 {
		return ReapResult{}, nil, next, nil
	}
	res := ReapResult{Due: len(zs), More: len(zs) == s.batch}
	ttls := make([]*redis.DurationCmd, len(zs))
	var unknown []int // of zs, those whose TTL the first read did not guess
	for i, z := range zs {
		k, _ := z.Member.(string)
		if ttls[i] = ttlOf[k]; ttls[i] == nil {
			unknown = append(unknown, i)
		}
	}
	if len(unknown) > 0 {
		if _, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range unknown {
				k, _ := zs[i].Member.(string)
				ttls[i] = p.PTTL(ctx, k)
			}
			return nil
		}); err != nil && !errors.Is(err, redis.Nil) {
			return res, nil, next, fmt.Errorf("expiry: reap %s: %w", shard, err)
		}
	}

	gone := make([]any, 1, len(zs)+1)
	gone[0] = upTo
	expired := make(map[string]float64, len(zs)) // key → its deadline (index score)
	var rescore []redis.Z
	for i, c := range ttls {
		k, _ := zs[i].Member.(string)
		switch d := c.Val(); {
		case d == -2: // gone: expired (by this touch or before)
			gone = append(gone, k)
			expired[k] = zs[i].Score
		case d == -1: // no TTL any more: no timer
			gone = append(gone, k)
		case d >= 0 && slack > 0 && d.Milliseconds() <= lead+slack.Milliseconds(): // due by the index; its TTL ends a moment later
			gone = append(gone, k)
			expired[k] = zs[i].Score
		case d >= 0:
			at := now + max(d.Milliseconds(), 1)
			rescore = append(rescore, redis.Z{Score: float64(at), Member: k})
			if t := time.UnixMilli(at); next.at.IsZero() || t.Before(next.at) {
				next = upcoming{at: t} // its key's TTL: not worth guessing
			}
		}
	}
	if lead > 0 && len(gone) > 1 { // the entries are read: remove them at at, not before
		if testHookReadAhead != nil {
			testHookReadAhead()
		}
		t := time.NewTimer(time.Until(time.UnixMilli(upTo)))
		select {
		case <-ctx.Done():
			t.Stop()
			return res, nil, next, ctx.Err()
		case <-t.C:
		}
	}
	var removed *redis.Cmd
	_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		if len(gone) > 1 {
			removed = zremDue.Eval(ctx, p, []string{shard, attemptsKey(shard)}, gone...) // EVAL: a pipeline cannot fall back from EVALSHA
		}
		if len(rescore) > 0 {
			p.ZAddXX(ctx, shard, rescore...)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return res, nil, next, fmt.Errorf("expiry: reap %s: %w", shard, err)
	}
	var fired []firedTimer
	if removed != nil {
		out, _ := removed.Slice()
		for j := 0; j+1 < len(out); j += 2 {
			k, _ := out[j].(string)
			res.Gone++
			score, ok := expired[k]
			if !ok {
				continue
			}
			t := firedTimer{key: k, deadline: time.UnixMilli(int64(score))}
			if a, ok := out[j+1].(string); ok {
				t.retry = true
				t.attempts, _ = strconv.Atoi(a)
			}
			fired = append(fired, t)
		}
	}
	return res, fired, next, nil
}

// putBack returns entries a reaper removed but could not hand over (the
// listener stopped) to the index, due now, for the next reaper.
func (s *Scheduler) putBack(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	now := time.Now().UnixMilli()
	var wakes []shardWake
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			i := s.shardOf(k)
			p.ZAdd(ctx, s.shards[i], redis.Z{Score: float64(now), Member: k})
			wakes = append(wakes, shardWake{i, now})
		}
		return nil
	})
	if err == nil {
		s.publishWakes(ctx, wakes)
	}
	return err
}

// publishWakes tells the reapers of the shards named that a timer is due
// there at the time given, when that is within wakeHorizon.
func (s *Scheduler) publishWakes(ctx context.Context, ws []shardWake) {
	if msg := wakeMessage(ws); msg != "" {
		s.client.Publish(ctx, wakeChannel(s.index), msg)
	}
}

// wakeMessage is the wake message for ws: each shard's earliest time, of
// those within wakeHorizon; "" when none is.
func wakeMessage(ws []shardWake) string {
	limit := time.Now().Add(wakeHorizon).UnixMilli()
	earliest := map[int]int64{}
	for _, w := range ws {
		if w.at > limit {
			continue
		}
		if at, ok := earliest[w.shard]; !ok || w.at < at {
			earliest[w.shard] = w.at
		}
	}
	if len(earliest) == 0 {
		return ""
	}
	out := make([]shardWake, 0, len(earliest))
	for i, at := range earliest {
		out = append(out, shardWake{i, at})
	}
	return formatWakes(out)
}
