package expiry

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/internal/testkit"
)

// A round ahead of a deadline reads the entries due by then, but removes
// and hands them over only at the deadline; an entry moved later meanwhile
// stays, with its new deadline.
func TestReapRoundAheadOfDeadline(t *testing.T) {
	rdb := testkit.Redis(t, 1)
	ctx := context.Background()
	s := NewScheduler(rdb, SchedulerConfig{KeyPrefix: "ra:"})
	t.Cleanup(func() { testHookReadAhead = nil })

	// Two keys of one shard.
	moved := ""
	for i := 2; moved == ""; i++ {
		if k := fmt.Sprintf("ra:%d", i); s.shardOf(k) == s.shardOf("ra:1") {
			moved = k
		}
	}
	shard := s.shards[s.shardOf("ra:1")]
	deadline := time.Now().Add(300 * time.Millisecond).Truncate(time.Millisecond) // ahead, however slow the machine
	if err := s.ScheduleMany(ctx, Timer{Key: "ra:1", Deadline: deadline}, Timer{Key: moved, Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	later := deadline.Add(time.Hour)
	testHookReadAhead = func() { // between the read and the removal, one moves
		if err := s.Schedule(ctx, moved, later); err != nil {
			t.Error(err)
		}
	}
	_, fired, _, err := s.reapShard(ctx, shard, reapSlack, deadline, nil)
	if err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); now.Before(deadline) {
		t.Fatalf("round returned %v before the deadline", deadline.Sub(now))
	}
	if len(fired) != 1 || fired[0].key != "ra:1" || !fired[0].deadline.Equal(deadline) {
		t.Fatalf("fired %+v, want ra:1 at %v only", fired, deadline)
	}
	score, err := rdb.ZScore(ctx, shard, moved).Result()
	if err != nil || int64(score) != later.UnixMilli() {
		t.Fatalf("%s in the index: %v (%v), want its new deadline %v", moved, score, err, later.UnixMilli())
	}
}

// pipelineCounter counts the pipelines a client sends (round trips of a
// reaper round).
type pipelineCounter struct{ n atomic.Int64 }

func (c *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (c *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (c *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// A round names the entries due at the shard's next deadline; given them
// (the guess) the next round reads their keys' TTLs with the entries, one
// round trip fewer, and hands over the same timers. A wrong guess costs
// nothing but its reads: the round reads the TTLs of what is due.
func TestReapRoundGuessesTheNextEntries(t *testing.T) {
	rdb := testkit.Redis(t, 1)
	var pipes pipelineCounter
	rdb.AddHook(&pipes)
	ctx := context.Background()
	s := NewScheduler(rdb, SchedulerConfig{KeyPrefix: "rg:"})
	shard := s.shards[s.shardOf("rg:1")]
	var same []string // keys of rg:1's shard
	for i := 1; len(same) < 3; i++ {
		if k := fmt.Sprintf("rg:%d", i); s.shards[s.shardOf(k)] == shard {
			same = append(same, k)
		}
	}
	first := time.Now().Add(time.Second).Truncate(time.Millisecond)
	second := first.Add(time.Second)
	if err := s.ScheduleMany(ctx, Timer{Key: same[0], Deadline: first}, Timer{Key: same[1], Deadline: second},
		Timer{Key: same[2], Deadline: second}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		at    time.Time
		guess []string
		want  []string
		pipes int64
		next  upcoming
	}{
		{"no guess", first, nil, same[:1], 3, upcoming{second, same[1:]}},
		{"guessed", second, same[1:], same[1:], 2, upcoming{}},
	} {
		if d := time.Until(tc.at.Add(-time.Millisecond)); d > 0 { // a round reads ahead by 1 ms here
			testkit.WaitFor(t, d+5*time.Second, "the round's moment", func() bool { return !time.Now().Before(tc.at.Add(-time.Millisecond)) })
		}
		before := pipes.n.Load()
		_, fired, next, err := s.reapShard(ctx, shard, reapSlack, tc.at, tc.guess)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range fired {
			got = append(got, f.key)
		}
		slices.Sort(got)
		slices.Sort(next.keys)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: fired %v, want %v", tc.name, got, tc.want)
		}
		if n := pipes.n.Load() - before; n != tc.pipes {
			t.Errorf("%s: %d round trips, want %d", tc.name, n, tc.pipes)
		}
		if !next.at.Equal(tc.next.at) || !slices.Equal(next.keys, tc.next.keys) {
			t.Errorf("%s: next %v %v, want %v %v", tc.name, next.at, next.keys, tc.next.at, tc.next.keys)
		}
	}

	// A wrong guess: the round reads the TTL of what is due besides.
	third := time.Now().Add(200 * time.Millisecond).Truncate(time.Millisecond)
	if err := s.Schedule(ctx, same[0], third); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the third deadline", func() bool { return !time.Now().Before(third) })
	before := pipes.n.Load()
	_, fired, _, err := s.reapShard(ctx, shard, reapSlack, third, []string{same[1]})
	if err != nil {
		t.Fatal(err)
	}
	if len(fired) != 1 || fired[0].key != same[0] {
		t.Errorf("wrong guess: fired %+v, want %s", fired, same[0])
	}
	if n := pipes.n.Load() - before; n != 3 {
		t.Errorf("wrong guess: %d round trips, want 3", n)
	}
}
