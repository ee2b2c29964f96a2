package stock_test

import (
	"context"
	"testing"

	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/stock"
)

const redisDB = 6 // this package's Redis database

func TestCounter(t *testing.T) {
	rdb := ordertest.Redis(t, redisDB)
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
