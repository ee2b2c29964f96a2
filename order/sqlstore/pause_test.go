package sqlstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/ordertest"
	"github.com/orderd/orderd/order/sqlstore"
)

// A batch frozen inside its transaction (its process stopped, as SIGSTOP, a
// GC pause or a VM freeze leaves it, after its statements and before its
// commit) holds its row locks only until the server ends it: a batch
// meanwhile skips those orders (Busy) instead of waiting, and moves them once
// the server has rolled the frozen one back; the frozen one's commit fails.
func TestFrozenTransactionIsEndedAndSkipped(t *testing.T) {
	url := ordertest.MySQLURL(t)
	st := ordertest.Open(t, url)
	if !st.SkipsLocked() {
		t.Fatal("the test MariaDB should have SKIP LOCKED (10.6+)")
	}
	ctx := context.Background()
	for sku := range int64(2) {
		if _, err := st.PutSKU(ctx, order.SKU{SKU: sku + 1, Name: "Mug", Available: 10000}); err != nil {
			t.Fatal(err)
		}
	}
	ordertest.SeedPending(t, st, 1, 1000, time.Now().Add(time.Hour)) // a table of some size, as in life
	// The frozen batch's orders are of another SKU: a give-back locks its
	// SKU's row, which no batch can skip, and that wait is bounded by the
	// server's end of the frozen transaction alone.
	ids := append(ordertest.SeedPending(t, st, 2, 3, time.Now().Add(-time.Second)),
		ordertest.SeedPending(t, st, 1, 7, time.Now().Add(-time.Second))...)

	frozen, err := sqlstore.OpenWith(ctx, url, sqlstore.Options{TxIdleTimeout: time.Second, LockWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Close()
	inside, thaw := make(chan struct{}), make(chan struct{})
	type result struct {
		mv  order.Moves
		err error
	}
	frozenDone := make(chan result, 1)
	go func() {
		fctx := order.WithFence(ctx, func() error { close(inside); <-thaw; return nil }) // freezes before the commit
		mv, err := frozen.Expire(fctx, ids[:3], time.Now(), order.SourceEvent)
		frozenDone <- result{mv, err}
	}()
	<-inside
	start := time.Now()
	mv, err := st.Expire(ctx, ids, time.Now(), order.SourceEvent)
	if err != nil {
		t.Fatal(err)
	}
	if len(mv.Moved) != 7 || len(mv.Busy) != 3 {
		t.Fatalf("moved %d, busy %v; want 7 moved and the 3 frozen ids busy", len(mv.Moved), mv.Busy)
	}
	if waited := time.Since(start); waited > 500*time.Millisecond {
		t.Errorf("the batch took %v: it waited for the locks", waited)
	}
	testkit.WaitFor(t, 10*time.Second, "the server ending the frozen transaction, and its orders moved", func() bool {
		mv, err := st.Expire(ctx, ids[:3], time.Now(), order.SourceEvent)
		if err != nil {
			t.Fatal(err)
		}
		return len(mv.Moved) == 3
	})
	freed := time.Since(start)
	t.Logf("the frozen transaction's locks were freed %v after it went idle", freed.Round(10*time.Millisecond))
	if freed > 3*time.Second {
		t.Errorf("the locks were freed after %v, want about the idle timeout (1 s)", freed)
	}
	close(thaw)
	// Its commit finds the connection closed by the server; a batch runs
	// again then (it may: it moves only what is still due), and finds
	// nothing left to move.
	if r := <-frozenDone; r.err == nil && len(r.mv.Moved) > 0 {
		t.Fatalf("the frozen transaction moved %v after the server ended it", r.mv.Moved)
	}
	var expired int
	if err := st.DB().Get(&expired, `SELECT COUNT(*) FROM orders WHERE status = 'expired'`); err != nil || expired != 10 {
		t.Fatalf("%d orders expired (%v), want 10", expired, err)
	}
	ordertest.CheckStock(t, st, 1, 10000)
	ordertest.CheckStock(t, st, 2, 10000)
}

// The database lease goes to one claimant at a time, is renewed by its
// holder, given up on release, and taken by another once it lapses, by the
// database's clock.
func TestDatabaseLease(t *testing.T) {
	ordertest.EachStore(t, func(t *testing.T, st *sqlstore.Store) {
		ctx := context.Background()
		claim := func(holder string, ttl time.Duration) bool {
			t.Helper()
			ok, err := st.ClaimLease(ctx, "sweep", holder, ttl)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if !claim("a", time.Minute) || claim("b", time.Minute) {
			t.Fatal("a should hold the free lease, and b not take it")
		}
		if !claim("a", 300*time.Millisecond) {
			t.Fatal("a could not renew its lease")
		}
		testkit.WaitFor(t, 5*time.Second, "b taking the lapsed lease", func() bool { return claim("b", time.Minute) })
		if claim("a", time.Minute) {
			t.Fatal("a took the lease b holds")
		}
		if err := st.ReleaseLease(ctx, "sweep", "a"); err != nil {
			t.Fatal(err)
		}
		if claim("a", time.Minute) {
			t.Fatal("a's release freed b's lease")
		}
		if err := st.ReleaseLease(ctx, "sweep", "b"); err != nil {
			t.Fatal(err)
		}
		if !claim("a", time.Minute) {
			t.Fatal("a could not take the released lease")
		}
		if _, err := st.ClaimLease(ctx, "no such lease", "a", time.Minute); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	})
}
