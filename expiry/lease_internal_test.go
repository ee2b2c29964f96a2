package expiry

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/internal/testkit"
)

func testItems(shards int) []leaseItem {
	var items []leaseItem
	for i := range shards {
		items = append(items, leaseItem{name: fmt.Sprintf("app:due:{%d}", i)})
	}
	return append(items, leaseItem{name: "sweep"})
}

// The assignment spreads the shards evenly, is the same whatever order the
// live listeners are listed in, and moves few shards when one joins.
func TestAssignBalancedAndStable(t *testing.T) {
	items := testItems(16)
	for n := 1; n <= 8; n++ {
		var live []string
		for i := range n {
			live = append(live, fmt.Sprintf("host%d:%d", i, 1000+i))
		}
		want := assign(live, items)
		rev := slices.Clone(live)
		slices.Reverse(rev)
		if got := assign(rev, items); !slices.Equal(got, want) {
			t.Fatalf("%d listeners: the assignment depends on their order: %v vs %v", n, got, want)
		}
		load := map[string]int{}
		for _, m := range want[:16] {
			load[m]++
		}
		share := (16 + n - 1) / n
		for _, m := range live {
			if load[m] > share || load[m] < 16/n {
				t.Fatalf("%d listeners: %s holds %d shards, want about %d: %v", n, m, load[m], 16/n, load)
			}
		}
		if !slices.Contains(live, want[16]) {
			t.Fatalf("sweep assigned to %q, not a live listener", want[16])
		}
	}
	// A third listener joining takes shards from the other two; it does not
	// reshuffle the rest.
	two, three := assign([]string{"a", "b"}, items), assign([]string{"a", "b", "c"}, items)
	moved := 0
	for i := range 16 {
		if two[i] != three[i] && three[i] != "c" {
			moved++
		}
	}
	if moved > 4 {
		t.Fatalf("%d shards moved between the two old listeners when a third joined", moved)
	}
	if got := assign(nil, items); got[0] != "" {
		t.Fatalf("no live listener, yet shard 0 assigned to %q", got[0])
	}
}

func TestRecentHandsOverOnce(t *testing.T) {
	r := recent{period: 30e9}
	if !r.first("k") || r.first("k") {
		t.Fatal("a key seen twice must be first once")
	}
	if !r.first("k") {
		t.Fatal("after both sightings the key is forgotten")
	}
	r.forget("k")
	if !r.first("k") {
		t.Fatal("a forgotten key is first again")
	}
}

// A release that the listener's stop cuts into (its context ends mid-round)
// is carried through: the lease is freed and the handover record names what
// the listener handled. Cut off, the lease stayed in Redis while the
// listener counted it no longer its own, its stop left it alone, and the
// next holder took it without the record and handled those timers again.
func TestReleaseCarriedThroughWhenStopped(t *testing.T) {
	rdb := testkit.Redis(t, 1)
	s := NewScheduler(rdb, SchedulerConfig{KeyPrefix: "rel:"})
	k := newLeaseKeeper(rdb, s, "a", 5*time.Second, time.Second, slog.New(slog.DiscardHandler), newShardStates(len(s.shards), time.Second))
	if _, err := k.round(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !k.holds(0) {
		t.Fatal("the only listener does not hold shard 0")
	}
	k.shards[0].notes.first("rel:handled")

	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	released, err := k.release(stopped, []int{0})
	if err != nil || !released {
		t.Fatalf("release with the stop's context ended: %v, %v; want released", released, err)
	}
	ctx := context.Background()
	if h, err := rdb.Get(ctx, k.items[0].lease.Key).Result(); err != redis.Nil {
		t.Fatalf("shard 0's lease still held by %q (%v)", h, err)
	}
	if _, err := rdb.ZScore(ctx, k.items[0].record, "rel:handled").Result(); err != nil {
		t.Fatalf("the handover record does not name the timer handled: %v", err)
	}
}
