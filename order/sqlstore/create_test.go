package sqlstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
)

// Buyers of one SKU at once, more than its stock, some past its per-user
// limit: orders created together in batches get what one by one would. No
// unit sold twice, no buyer past the limit, every order with its own id and
// its own outbox record, the stock at zero, and each refusal the right one.
func TestConcurrentCreatesOfOneSKU(t *testing.T) {
	st := ordertest.Open(t, ordertest.MySQLURL(t))
	st.SetOutbox(true)
	ctx := context.Background()
	if _, err := st.PutSKU(ctx, order.SKU{SKU: 9, Name: "Phone", PriceCents: 500, Available: 150, LimitPerUser: 2}); err != nil {
		t.Fatal(err)
	}
	const users, each = 100, 3
	var mu sync.Mutex
	created := map[int64]int{} // user → orders
	ids := map[int64]bool{}
	var soldOut, limited int
	var wg sync.WaitGroup
	for u := range int64(users) {
		for range each {
			wg.Go(func() {
				now := time.Now()
				o := &order.Order{UserID: u + 1, SKU: 9, Qty: 1, CreatedAt: now, PayDeadline: now.Add(time.Hour)}
				err := st.Create(ctx, o)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					if ids[o.ID] || o.ID == 0 || o.AmountCents != 500 || o.Status != order.Pending {
						t.Errorf("order %+v: a repeated or empty id, or a wrong amount or status", o)
					}
					ids[o.ID] = true
					created[u+1]++
				case errors.Is(err, order.ErrSoldOut):
					soldOut++
				case errors.Is(err, order.ErrLimitExceeded):
					limited++
				default:
					t.Errorf("create: %v", err)
				}
			})
		}
	}
	wg.Wait()
	if len(ids) != 150 || soldOut+limited != users*each-150 {
		t.Fatalf("%d created, %d sold out, %d past the limit; want 150 created of %d", len(ids), soldOut, limited, users*each)
	}
	for u, n := range created {
		if n > 2 {
			t.Fatalf("user %d got %d orders, past the limit of 2", u, n)
		}
	}
	ordertest.CheckStock(t, st, 9, 150)
	changes, err := st.PendingChanges(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[int64]bool{}
	for _, c := range changes {
		if c.To == order.Pending && c.Source == order.SourceRequest {
			recorded[c.OrderID] = true
		}
	}
	for id := range ids {
		if !recorded[id] {
			t.Fatalf("order %d has no created transition in the outbox (%d recorded)", id, len(recorded))
		}
	}
}
