package expiry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// IndexState is a due index and the listeners sharing it, as one look at
// Redis found them (Scheduler.Inspect).
type IndexState struct {
	Shards    []ShardState
	Listeners []ListenerState // live ones, by ID
	Sweeper   string          // the listener holding the sweep lease; "" when none
}

// ShardState is one shard of a due index.
type ShardState struct {
	Name    string // its sorted set
	Timers  int64  // entries
	Overdue int64  // entries whose deadline has passed: a reaper will take them
	Holder  string // the listener holding its lease; "" when none
	Retries int64  // timers whose handler failed, waiting for another attempt
	Dead    int64  // timers whose handler failed MaxAttempts times (Scheduler.Dead)
}

// ListenerState is a live listener: its heartbeat has not lapsed.
type ListenerState struct {
	ID     string
	Shards []string  // the shards whose lease it holds
	Sweeps bool      // whether it holds the sweep lease
	Until  time.Time // when its heartbeat lapses unless renewed
}

// Timers returns the entries of every shard, and of those the overdue ones.
func (st IndexState) Timers() (timers, overdue int64) {
	for _, sh := range st.Shards {
		timers, overdue = timers+sh.Timers, overdue+sh.Overdue
	}
	return timers, overdue
}

// Dead returns the dead timers of every shard.
func (st IndexState) Dead() (dead int64) {
	for _, sh := range st.Shards {
		dead += sh.Dead
	}
	return dead
}

// Inspect reads the due index: each shard's timers and overdue timers and
// the holder of its lease, and the live listeners sharing it. It writes
// nothing.
func (s *Scheduler) Inspect(ctx context.Context) (IndexState, error) {
	now := time.Now()
	nowMS := strconv.FormatInt(now.UnixMilli(), 10)
	n := len(s.shards)
	cards, overdue, holders := make([]*redis.IntCmd, n), make([]*redis.IntCmd, n), make([]*redis.StringCmd, n)
	failing, dead := make([]*redis.IntCmd, n), make([]*redis.IntCmd, n)
	var sweeper *redis.StringCmd
	var members *redis.ZSliceCmd
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sh := range s.shards {
			cards[i] = p.ZCard(ctx, sh)
			overdue[i] = p.ZCount(ctx, sh, "-inf", nowMS)
			holders[i] = p.Get(ctx, leaseKey(sh))
			failing[i] = p.HLen(ctx, attemptsKey(sh))
			dead[i] = p.ZCard(ctx, deadKey(sh))
		}
		sweeper = p.Get(ctx, sweepLeaseKey(s.index))
		members = p.ZRangeByScoreWithScores(ctx, membersKey(s.index), &redis.ZRangeBy{Min: nowMS, Max: "+inf"})
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return IndexState{}, fmt.Errorf("expiry: inspect %s: %w", s.index, err)
	}
	st := IndexState{Sweeper: sweeper.Val()}
	byID := map[string]*ListenerState{}
	for _, z := range members.Val() {
		id, _ := z.Member.(string)
		st.Listeners = append(st.Listeners, ListenerState{ID: id, Until: time.UnixMilli(int64(z.Score)), Sweeps: id == st.Sweeper})
	}
	slices.SortFunc(st.Listeners, func(a, b ListenerState) int { return strings.Compare(a.ID, b.ID) })
	for i := range st.Listeners {
		byID[st.Listeners[i].ID] = &st.Listeners[i]
	}
	for i, sh := range s.shards {
		h := holders[i].Val()
		st.Shards = append(st.Shards, ShardState{Name: sh, Timers: cards[i].Val(), Overdue: overdue[i].Val(), Holder: h,
			Retries: failing[i].Val() - dead[i].Val(), Dead: dead[i].Val()})
		if l := byID[h]; l != nil {
			l.Shards = append(l.Shards, sh)
		}
	}
	return st, nil
}
