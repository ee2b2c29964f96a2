package sqlstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/orderd/orderd/order"
)

// Overview is what the database holds, for an operator (`orderd status`).
type Overview struct {
	// Counts is the number of orders in each status.
	Counts map[order.Status]int64
	// Overdue is, for the statuses that wait for a deadline (pending,
	// shipped), the orders whose deadline has passed, and OldestOverdue the
	// earliest such deadline.
	Overdue       map[order.Status]int64
	OldestOverdue map[order.Status]time.Time
	// Next are the next deadlines still to come, soonest first.
	Next []Deadline
}

// Deadline is an order waiting for a deadline.
type Deadline struct {
	ID     int64
	Status order.Status // pending (pay deadline) or shipped (confirm deadline)
	At     time.Time
}

// Overview counts the orders by status (a scan of the table), the overdue
// ones with their oldest deadline, and reads the next n deadlines (both from
// the index orders_due).
func (s *Store) Overview(ctx context.Context, now time.Time, n int) (Overview, error) {
	ov := Overview{Counts: map[order.Status]int64{}, Overdue: map[order.Status]int64{}, OldestOverdue: map[order.Status]time.Time{}}
	var counts []struct {
		Status string `db:"status"`
		N      int64  `db:"n"`
	}
	if err := s.db.SelectContext(ctx, &counts, `SELECT status, COUNT(*) AS n FROM orders GROUP BY status`); err != nil {
		return ov, fmt.Errorf("sqlstore: count orders: %w", err)
	}
	for _, c := range counts {
		ov.Counts[order.Status(c.Status)] = c.N
	}
	w, err := s.Waiting(ctx, now)
	if err != nil {
		return ov, err
	}
	for _, st := range []order.Status{order.Pending, order.Shipped} {
		ov.Overdue[st] = w[st].Overdue
		if !w[st].Oldest.IsZero() {
			ov.OldestOverdue[st] = w[st].Oldest
		}
		var next []struct {
			ID    int64 `db:"id"`
			DueAt int64 `db:"due_at"`
		}
		if err := s.db.SelectContext(ctx, &next, `SELECT id, due_at FROM orders
			WHERE status = ? AND due_at > ? ORDER BY due_at, id LIMIT ?`, st, ms(now), n); err != nil {
			return ov, fmt.Errorf("sqlstore: next %s deadlines: %w", st, err)
		}
		for _, r := range next {
			ov.Next = append(ov.Next, Deadline{ID: r.ID, Status: st, At: fromMS(r.DueAt)})
		}
	}
	slices.SortFunc(ov.Next, func(a, b Deadline) int { return cmp.Or(a.At.Compare(b.At), cmp.Compare(a.ID, b.ID)) })
	ov.Next = ov.Next[:min(n, len(ov.Next))]
	return ov, nil
}

// Waiting is how many orders wait in a status for its deadline, and of
// those how many are overdue and the oldest overdue deadline (zero when none).
type Waiting struct {
	Count, Overdue int64
	Oldest         time.Time
}

// Waiting counts the orders waiting for a deadline (pending, shipped) and
// the overdue ones, from the index orders_due: cheap enough for metrics.
func (s *Store) Waiting(ctx context.Context, now time.Time) (map[order.Status]Waiting, error) {
	out := map[order.Status]Waiting{}
	for _, st := range []order.Status{order.Pending, order.Shipped} {
		var row struct {
			Count   int64  `db:"n"`
			Overdue int64  `db:"overdue"`
			Oldest  *int64 `db:"oldest"`
		}
		if err := s.db.GetContext(ctx, &row, `SELECT COUNT(*) AS n,
			COALESCE(SUM(CASE WHEN due_at <= ? THEN 1 ELSE 0 END), 0) AS overdue,
			MIN(CASE WHEN due_at <= ? THEN due_at END) AS oldest
			FROM orders WHERE status = ?`, ms(now), ms(now), st); err != nil {
			return nil, fmt.Errorf("sqlstore: count %s orders: %w", st, err)
		}
		w := Waiting{Count: row.Count, Overdue: row.Overdue}
		if row.Oldest != nil {
			w.Oldest = fromMS(*row.Oldest)
		}
		out[st] = w
	}
	return out, nil
}
