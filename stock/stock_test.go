package stock_test

import (
	"context"
	"testing"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/stock"
)

const redisDB = 6 // this package's Redis database

func TestCounter(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	ctx := context.Background()
	c := stock.NewCounter(rdb, "shop:")
	reserve := func(sku, user, qty int64, want stock.Result) {
		t.Helper()
		got, err := c.Reserve(ctx, sku, user, qty)
		if err != nil || got != want {
			t.Fatalf("Reserve(sku %d, user %d, qty %d) = %v, %v; want %v", sku, user, qty, got, err, want)
		}
	}
	available := func(sku, want int64) {
		t.Helper()
		n, ok, err := c.Available(ctx, sku)
		if err != nil || !ok || n != want {
			t.Fatalf("Available(%d) = %d, %v, %v; want %d", sku, n, ok, err, want)
		}
	}

	reserve(1, 7, 1, stock.Unknown) // no counter yet
	if err := c.Set(ctx, 1, 3, 2, map[int64]int64{9: 2}); err != nil {
		t.Fatal(err)
	}
	if got := rdb.Exists(ctx, "shop:stock:{1}").Val(); got != 1 {
		t.Fatal("counter not under the key prefix")
	}
	reserve(1, 9, 1, stock.LimitExceeded) // user 9 already holds 2
	reserve(1, 7, 2, stock.Reserved)
	reserve(1, 7, 1, stock.LimitExceeded)
	reserve(1, 8, 2, stock.SoldOut) // 1 left
	reserve(1, 8, 1, stock.Reserved)
	available(1, 0)
	reserve(1, 6, 1, stock.SoldOut)

	if err := c.Release(ctx, stock.Hold{SKU: 1, User: 7, Qty: 2}, stock.Hold{SKU: 1, User: 8, Qty: 1}, stock.Hold{SKU: 2, User: 8, Qty: 5}); err != nil {
		t.Fatal(err)
	}
	available(1, 3)
	if n, ok, _ := c.Available(ctx, 2); ok {
		t.Fatalf("release created a counter for sku 2: %d", n)
	}
	if got := rdb.HGetAll(ctx, "shop:stock:{1}:buyers").Val(); len(got) != 1 || got["9"] != "2" {
		t.Fatalf("buyers after release: %v, want only user 9", got)
	}
	reserve(1, 7, 2, stock.Reserved) // user 7 may buy again after giving back
}

// seq moves with every change and only with a change, and SetIf replaces a
// counter only when nothing changed it since its seq was read.
func TestCounterSeqAndSetIf(t *testing.T) {
	rdb := testkit.Redis(t, redisDB)
	ctx := context.Background()
	c := stock.NewCounter(rdb, "seq:")
	state := func(sku int64) stock.State {
		t.Helper()
		s, err := c.States(ctx, sku)
		if err != nil {
			t.Fatal(err)
		}
		return s[0]
	}
	if s := state(1); s.OK {
		t.Fatalf("state of a counter never set: %+v", s)
	}
	if err := c.Set(ctx, 1, 2, 3, nil); err != nil {
		t.Fatal(err)
	}
	s0 := state(1)
	if !s0.OK || s0.Available != 2 {
		t.Fatalf("after Set: %+v", s0)
	}
	if r, _ := c.Reserve(ctx, 1, 7, 1); r != stock.Reserved {
		t.Fatalf("reserve: %v", r)
	}
	s1 := state(1)
	if s1.Seq == s0.Seq || s1.Available != 1 {
		t.Fatalf("a reservation did not move seq: %+v then %+v", s0, s1)
	}
	// Refusals change nothing.
	if got, _ := c.Reserve(ctx, 1, 7, 3); got != stock.LimitExceeded {
		t.Fatalf("reserve: %v, want limit exceeded", got)
	}
	if got, _ := c.Reserve(ctx, 1, 8, 2); got != stock.SoldOut {
		t.Fatalf("reserve: %v, want sold out", got)
	}
	if s := state(1); s.Seq != s1.Seq {
		t.Fatalf("refusals moved seq: %+v then %+v", s1, s)
	}
	if ok, err := c.SetIf(ctx, 1, s0.Seq, 9, 1, nil); err != nil || ok {
		t.Fatalf("SetIf with a stale seq replaced the counter (%v, %v)", ok, err)
	}
	if ok, err := c.SetIf(ctx, 1, s1.Seq, 2, 1, map[int64]int64{7: 0, 9: 1}); err != nil || !ok {
		t.Fatalf("SetIf with the current seq: %v, %v", ok, err)
	}
	if s := state(1); s.Available != 2 || s.Seq == s1.Seq {
		t.Fatalf("after SetIf: %+v", s)
	}
	if got := rdb.HGetAll(ctx, "seq:stock:{1}:buyers").Val(); len(got) != 1 || got["9"] != "1" {
		t.Fatalf("buyers after SetIf: %v, want only user 9", got)
	}
	if err := c.Release(ctx, stock.Hold{SKU: 1, User: 9, Qty: 1}); err != nil {
		t.Fatal(err)
	}
	if s := state(1); s.Available != 3 {
		t.Fatalf("after release: %+v", s)
	}
}
