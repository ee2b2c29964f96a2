package expiry

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// SchedulerConfig configures a Scheduler. The zero value is usable.
type SchedulerConfig struct {
	// KeyPrefix is the application's namespace on a Redis it may share with
	// others: the index's default name starts with it, and a Listener given
	// this Scheduler strips it from expired keys (ListenerConfig.KeyPrefix
	// must then be empty or the same). Keys given to Schedule and Cancel are
	// full key names, prefix included.
	KeyPrefix string

	// Index names the due index: sorted sets "<Index>:{<n>}" (n from 0 to
	// Shards-1), scored by deadline in Unix milliseconds. The hash tags put
	// each shard in a slot of its own on Redis Cluster.
	// Listeners given this Scheduler share the work through keys beside
	// the index ("<Index>:listeners", "<Index>:{<n>}:lease",
	// "<Index>:sweep"); two applications on one Redis need two indexes.
	// If empty, KeyPrefix + "expiry:due" is used.
	Index string

	// Shards is the number of sorted sets the index is split into. On Redis
	// Cluster each lands in its own hash slot, so that the reaping spreads
	// over the masters: 16 spread over 3 masters of a default cluster as 6,
	// 6 and 4. If zero, 16 is used.
	Shards int

	// ReapBatch bounds the keys one reaper round looks at per shard.
	// If zero, 1,000 is used.
	ReapBatch int
}

// A Scheduler sets timers as Redis keys with a TTL and keeps a due index
// beside them, so that a Listener's reaper can make Redis expire (and
// announce) each key as soon as its deadline passes. Without the index Redis
// notices an expired key only when its background cycle happens to sample it,
// which can take minutes when many keys carry a TTL.
type Scheduler struct {
	client redis.UniversalClient
	prefix string
	index  string
	shards []string
	batch  int
}

// NewScheduler returns a Scheduler writing to client.
func NewScheduler(client redis.UniversalClient, cfg SchedulerConfig) *Scheduler {
	if cfg.Index == "" {
		cfg.Index = cfg.KeyPrefix + "expiry:due"
	}
	if cfg.Shards <= 0 {
		cfg.Shards = 16
	}
	if cfg.ReapBatch <= 0 {
		cfg.ReapBatch = 1000
	}
	s := &Scheduler{client: client, prefix: cfg.KeyPrefix, index: cfg.Index, batch: cfg.ReapBatch}
	for i := range cfg.Shards {
		s.shards = append(s.shards, cfg.Index+":{"+strconv.Itoa(i)+"}")
	}
	return s
}

// Shards returns the names of the index's sorted sets.
func (s *Scheduler) Shards() []string { return append([]string(nil), s.shards...) }

// KeyPrefix returns the key prefix the Scheduler was configured with.
func (s *Scheduler) KeyPrefix() string { return s.prefix }

// Index returns the name of the due index.
func (s *Scheduler) Index() string { return s.index }

// owns reports whether key is one of the due index's own (a shard, a lease,
// the heartbeat set): the library's bookkeeping, never a timer.
func (s *Scheduler) owns(key string) bool {
	rest, ok := strings.CutPrefix(key, s.index)
	return ok && (rest == "" || strings.HasPrefix(rest, ":"))
}

// ShardOf returns the number of the shard (0 to Shards-1) that indexes key,
// as Timers takes it.
func (s *Scheduler) ShardOf(key string) int { return s.shardOf(key) }

// shardOf returns the number of the shard that indexes key. Keys written by
// other programs, never indexed, have a shard all the same: the listener that
// holds it handles their events.
func (s *Scheduler) shardOf(key string) int {
	return int(crc32.ChecksumIEEE([]byte(key)) % uint32(len(s.shards)))
}

// ErrOutsidePrefix is wrapped by the error Schedule and ScheduleMany return
// for a key that does not start with the Scheduler's KeyPrefix (or is one of
// the due index's own keys): its Listener would ignore its expiry, so it would
// never fire.
var ErrOutsidePrefix = errors.New("expiry: key outside the scheduler's KeyPrefix")

// Schedule sets key (value "1") to expire at deadline and records it in the
// due index, in one round trip. The TTL is rounded up to the next millisecond,
// so the key never expires before deadline by our clock. A deadline already
// past fires at once: the key gets a TTL of 1 ms, so Redis still announces it
// as expired. Scheduling a key again moves its timer, earlier or later. A
// key outside KeyPrefix is refused (ErrOutsidePrefix), and nothing is set.
func (s *Scheduler) Schedule(ctx context.Context, key string, deadline time.Time) error {
	return s.ScheduleMany(ctx, Timer{Key: key, Deadline: deadline})
}

// Timer is one key to expire at Deadline.
type Timer struct {
	Key      string
	Deadline time.Time
}

// ScheduleMany sets many timers, as Schedule does, in one round trip. When
// any key is outside KeyPrefix, none is set.
func (s *Scheduler) ScheduleMany(ctx context.Context, timers ...Timer) error {
	for _, t := range timers {
		if !strings.HasPrefix(t.Key, s.prefix) || s.owns(t.Key) {
			return fmt.Errorf("%w: %q (KeyPrefix %q)", ErrOutsidePrefix, t.Key, s.prefix)
		}
	}
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		wakes := make([]shardWake, 0, len(timers))
		for _, t := range timers {
			// A relative TTL, not PXAT: Redis's clock may differ from ours,
			// and a PXAT that Redis deems past deletes the key without an event.
			ttl := max(time.Until(t.Deadline).Truncate(time.Millisecond)+time.Millisecond, time.Millisecond)
			i := s.shardOf(t.Key)
			p.Set(ctx, t.Key, "1", ttl)
			p.ZAdd(ctx, s.shards[i], redis.Z{Score: float64(t.Deadline.UnixMilli()), Member: t.Key})
			wakes = append(wakes, shardWake{i, t.Deadline.UnixMilli()})
		}
		if m := wakeMessage(wakes); m != "" { // the reapers sleep until their next deadline
			p.Publish(ctx, wakeChannel(s.index), m)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("expiry: schedule %d timers: %w", len(timers), err)
	}
	return nil
}

// Cancel deletes key and its index entry, and its failed attempts or its
// place in the dead set if it has them. Cancelling a timer that does not
// exist is not an error.
func (s *Scheduler) Cancel(ctx context.Context, key string) error {
	_, keys := s.failureKeys(key)
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		p.ZRem(ctx, keys[0], key)
		p.HDel(ctx, keys[1], key)
		p.HDel(ctx, keys[2], key)
		p.ZRem(ctx, keys[3], key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("expiry: cancel %q: %w", key, err)
	}
	return nil
}

// ReapResult tells what one reaper round did.
type ReapResult struct {
	Due  int  // index entries whose deadline had passed
	Gone int  // of those, keys found gone and removed from the index
	More bool // a shard had more due entries than one round looks at
}

// Reap runs one reaper round: for every shard it reads up to ReapBatch due
// entries and touches their keys (PTTL), which makes Redis expire a key whose
// time has come and publish its event. An entry is removed only when its key
// is really gone; a key Redis still holds (its clock may lag ours by a
// millisecond, or the key was set again) is re-scored by its remaining TTL, and
// a key left without a TTL is no timer any more and leaves the index.
//
// A Listener given the Scheduler reaps by itself, and hands each expired
// timer it removes to its handler at once; a timer whose key's TTL ends
// within 100 ms after its deadline in the index (a relative TTL ends late by
// the time its command took to reach Redis) it hands over at the deadline,
// and skips the key's own expiry that follows. Reap is for programs that
// reap without a Listener.
func (s *Scheduler) Reap(ctx context.Context) (ReapResult, error) {
	var res ReapResult
	var errs []error
	for _, shard := range s.shards {
		r, _, _, err := s.reapShard(ctx, shard, 0, time.Time{}, nil) // the keys must expire: rescore the late ones
		res.Due += r.Due
		res.Gone += r.Gone
		res.More = res.More || r.More
		if err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}
