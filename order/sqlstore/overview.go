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
	for _, st := range []order.Status{order.Pending, order.Shipped} {
		var due struct {
			N      int64  `db:"n"`
			Oldest *int64 `db:"oldest"`
		}
		if err := s.db.GetContext(ctx, &due, `SELECT COUNT(*) AS n, MIN(due_at) AS oldest FROM orders
			WHERE status = ? AND due_at <= ?`, st, ms(now)); err != nil {
			return ov, fmt.Errorf("sqlstore: count overdue %s orders: %w", st, err)
		}
		ov.Overdue[st] = due.N
		if due.Oldest != nil {
			ov.OldestOverdue[st] = fromMS(*due.Oldest)
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
