package expiry

import (
	"fmt"
	"slices"
	"testing"
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
