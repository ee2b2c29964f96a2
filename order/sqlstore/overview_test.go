package sqlstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
)

// Overview and Waiting count what the database holds, on both stores: the
// orders by status, the overdue ones and the oldest's deadline, the next
// deadlines soonest first.
func TestOverview(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		ctx := context.Background()
		now := time.Now().Truncate(time.Millisecond)
		if _, err := st.PutSKU(ctx, order.SKU{SKU: 1, Name: "x", Available: 100}); err != nil {
			t.Fatal(err)
		}
		late := ordertest.SeedPending(t, st, 1, 3, now.Add(-time.Hour))
		soon := ordertest.SeedPendingAt(t, st, 1, 4, func(i int) time.Time { return now.Add(time.Duration(4-i) * time.Minute) })
		if _, err := st.Pay(ctx, soon[0], now); err != nil { // paid: waits for nothing
			t.Fatal(err)
		}
		ov, err := st.Overview(ctx, now, 2)
		if err != nil {
			t.Fatal(err)
		}
		if ov.Counts[order.Pending] != 6 || ov.Counts[order.Paid] != 1 || ov.Overdue[order.Pending] != 3 || ov.Overdue[order.Shipped] != 0 {
			t.Fatalf("counts %v, overdue %v", ov.Counts, ov.Overdue)
		}
		if !ov.OldestOverdue[order.Pending].Equal(now.Add(-time.Hour)) {
			t.Fatalf("oldest overdue %v, want %v", ov.OldestOverdue[order.Pending], now.Add(-time.Hour))
		}
		if len(ov.Next) != 2 || ov.Next[0].ID != soon[3] || ov.Next[1].ID != soon[2] || !ov.Next[0].At.Equal(now.Add(time.Minute)) {
			t.Fatalf("next %+v, want orders %d and %d", ov.Next, soon[3], soon[2])
		}
		w, err := st.Waiting(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		if w[order.Pending].Count != 6 || w[order.Pending].Overdue != int64(len(late)) || w[order.Shipped].Count != 0 || !w[order.Shipped].Oldest.IsZero() {
			t.Fatalf("waiting %+v", w)
		}
	})
}
