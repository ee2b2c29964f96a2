package expiry

import (
	"context"
	"fmt"
	"testing"
	"time"

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
	_, fired, _, err := s.reapShard(ctx, shard, reapSlack, deadline)
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
