package stock_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/stock"
)

// watch runs c.WatchRestocks until the test ends, and waits for its
// subscription.
func watch(t *testing.T, c *stock.Counter) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	subscribed := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	go func() { defer close(done); c.WatchRestocks(ctx, func() { once.Do(func() { close(subscribed) }) }) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-subscribed:
	case <-time.After(testkit.Scale(10 * time.Second)):
		t.Fatal("WatchRestocks never subscribed")
	}
}

func mustReserve(t *testing.T, c *stock.Counter, sku, user, qty int64, want stock.Result) {
	t.Helper()
	got, err := c.Reserve(context.Background(), sku, user, qty)
	if err != nil || got != want {
		t.Fatalf("Reserve(sku %d, user %d, qty %d) = %v, %v; want %v", sku, user, qty, got, err, want)
	}
}

// Two API processes cache a SKU as sold out; a give-back in a third (the
// daemon expiring an order) re-opens sales in both within milliseconds: the
// flags are long-lived here, so only the announcement can clear them.
func TestSoldOutFlagClearedByGiveBack(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	ctx := context.Background()
	daemon := stock.NewCounter(rdb, "shop:")
	a, b := stock.NewCounter(rdb, "shop:"), stock.NewCounter(rdb, "shop:")
	// The stock is set before the watchers subscribe: its announcement,
	// arriving after a flag was set, would clear it.
	if err := daemon.Set(ctx, 7, 1, 0, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*stock.Counter{a, b} {
		c.CacheSoldOut(time.Hour)
		watch(t, c)
	}
	mustReserve(t, a, 7, 1, 1, stock.Reserved)
	mustReserve(t, a, 7, 2, 1, stock.SoldOut)
	mustReserve(t, b, 7, 3, 1, stock.SoldOut)
	if !a.SoldOutCached(7) || !b.SoldOutCached(7) {
		t.Fatal("an empty SKU is not cached as sold out")
	}
	if err := rdb.Del(ctx, "shop:stock:{7}").Err(); err != nil { // from here, only the cache can answer sold_out
		t.Fatal(err)
	}
	mustReserve(t, b, 7, 3, 1, stock.SoldOut)
	if err := daemon.Set(ctx, 7, 0, 0, nil); err != nil {
		t.Fatal(err)
	}

	gave := time.Now()
	if err := daemon.Release(ctx, stock.Hold{SKU: 7, User: 1, Qty: 1}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the second process selling again", func() bool { return !b.SoldOutCached(7) })
	mustReserve(t, b, 7, 3, 1, stock.Reserved)
	t.Logf("give-back to the first order taken on the second process: %v", time.Since(gave).Round(time.Microsecond))
	testkit.WaitFor(t, 5*time.Second, "the first process's flag cleared too", func() bool { return !a.SoldOutCached(7) })
}

// A process that missed the announcement (not watching at all here) sells
// again once its flag lapses.
func TestSoldOutFlagHealsAfterMissedAnnouncement(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	ctx := context.Background()
	admin := stock.NewCounter(rdb, "shop:")
	deaf := stock.NewCounter(rdb, "shop:")
	deaf.CacheSoldOut(200 * time.Millisecond)
	if err := admin.Set(ctx, 8, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	mustReserve(t, deaf, 8, 1, 1, stock.SoldOut)
	if err := admin.Set(ctx, 8, 5, 0, nil); err != nil { // restocked; announced to no one listening
		t.Fatal(err)
	}
	mustReserve(t, deaf, 8, 1, 1, stock.SoldOut) // still the cached answer
	testkit.WaitFor(t, 5*time.Second, "the flag lapsing", func() bool { return !deaf.SoldOutCached(8) })
	mustReserve(t, deaf, 8, 1, 1, stock.Reserved)
}

// Only an empty counter is cached: a SKU with fewer units than one buyer
// asks for still sells to the next.
func TestSoldOutFlagOnlyWhenEmpty(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	c := stock.NewCounter(rdb, "shop:")
	c.CacheSoldOut(time.Hour)
	if err := c.Set(context.Background(), 9, 1, 0, nil); err != nil {
		t.Fatal(err)
	}
	mustReserve(t, c, 9, 1, 2, stock.SoldOut)
	if c.SoldOutCached(9) {
		t.Fatal("a SKU with a unit left is cached as sold out")
	}
	mustReserve(t, c, 9, 2, 1, stock.Reserved)
}

// BenchmarkReserveSoldOut is a buyer turned away from an empty SKU, with
// the flag (no Redis call) and without (a script call to Redis).
func BenchmarkReserveSoldOut(b *testing.B) {
	rdb := testkit.Redis(b, redisDB)
	for _, cached := range []bool{false, true} {
		name := map[bool]string{false: "redis", true: "cached"}[cached]
		b.Run(name, func(b *testing.B) {
			c := stock.NewCounter(rdb, "bench:")
			if cached {
				c.CacheSoldOut(time.Hour)
			}
			if err := c.Set(context.Background(), 1, 0, 0, nil); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if r, err := c.Reserve(context.Background(), 1, 1, 1); err != nil || r != stock.SoldOut {
						b.Fatal(r, err)
					}
				}
			})
		})
	}
}
