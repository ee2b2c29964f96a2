package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jmoiron/sqlx"

	"github.com/orderd/orderd/order"
)

// In a flash sale every order takes stock from one SKU's row, and every
// expiry gives stock back to it: its lock is the hottest there is. A
// transaction holds it from the stock update to the commit (an fsync), so one
// order per transaction queues the buyers of a SKU, and the expiries behind
// them, in the database's lock queue. Instead, orders for one SKU that arrive
// while a creation of that SKU is in flight wait their turn here and are
// created together, in one transaction that takes their stock in one update:
// the row is locked once per batch, for its stock update, its per-user limit
// check, its outbox records and its commit. When the batch cannot be created
// whole (the stock does not cover it, a buyer would pass the SKU's limit, a
// statement fails) each order is created on its own, so that each gets its
// own answer. SQLite, with one writer at a time, creates one by one.

// maxCreateBatch bounds the orders created in one transaction.
const maxCreateBatch = 100

// creates queues orders per SKU while a creation of that SKU is in flight.
type creates struct {
	mu    sync.Mutex
	bySKU map[int64]*skuCreates
}

type skuCreates struct {
	pending []*createReq
}

type createReq struct {
	ctx  context.Context
	o    *order.Order
	err  error
	done chan struct{}
}

// errNotWhole says that a batch of creations could not be made whole.
var errNotWhole = errors.New("sqlstore: batch not created whole")

// Create takes the stock and inserts the order, in one transaction with the
// other orders of its SKU that wait meanwhile (see above). The per-user limit
// check cannot race: it runs under the SKU row's lock.
func (s *Store) Create(ctx context.Context, o *order.Order) error {
	if s.dialect == "sqlite" {
		return s.createOne(ctx, o)
	}
	req := &createReq{ctx: ctx, o: o, done: make(chan struct{})}
	s.creates.mu.Lock()
	if s.creates.bySKU == nil {
		s.creates.bySKU = map[int64]*skuCreates{}
	}
	q, running := s.creates.bySKU[o.SKU]
	if !running {
		q = &skuCreates{}
		s.creates.bySKU[o.SKU] = q
	}
	q.pending = append(q.pending, req)
	s.creates.mu.Unlock()
	if !running {
		go s.runCreates(o.SKU, q) // until none waits
	}
	<-req.done
	return req.err
}

// runCreates creates the SKU's waiting orders, a batch at a time, until none
// waits.
func (s *Store) runCreates(sku int64, q *skuCreates) {
	for {
		s.creates.mu.Lock()
		n := min(len(q.pending), maxCreateBatch)
		batch := q.pending[:n:n]
		q.pending = q.pending[n:]
		if n == 0 {
			delete(s.creates.bySKU, sku)
		}
		s.creates.mu.Unlock()
		if n == 0 {
			return
		}
		if n == 1 || s.createMany(batch) != nil {
			for _, r := range batch {
				r.err = s.createOne(r.ctx, r.o)
			}
		}
		for _, r := range batch {
			close(r.done)
		}
	}
}

// createMany creates a batch of orders of one SKU in one transaction, or
// none of them (errNotWhole, or the failure).
func (s *Store) createMany(batch []*createReq) error {
	// The batch runs for all its callers: the first one's values (its
	// deadline), not its cancellation.
	ctx := context.WithoutCancel(batch[0].ctx)
	return s.tx(ctx, false, func(tx *sqlx.Tx) error {
		sku := batch[0].o.SKU
		var k skuRow
		if err := tx.GetContext(ctx, &k, `SELECT sku, name, price_cents, available, limit_per_user FROM skus WHERE sku = ?`, sku); err != nil {
			return err
		}
		var total int64
		for _, r := range batch {
			total += r.o.Qty
		}
		if k.Available < total {
			return errNotWhole
		}
		rows := make([]orderRow, len(batch))
		for i, r := range batch { // before the stock: the SKU's row is locked as late as can be
			o := r.o
			o.AmountCents = k.PriceCents * o.Qty
			res, err := tx.ExecContext(ctx, `INSERT INTO orders (user_id, sku, qty, amount_cents, status, created_at, pay_deadline, auto_confirmed)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, o.UserID, o.SKU, o.Qty, o.AmountCents, order.Pending, ms(o.CreatedAt), ms(o.PayDeadline), false)
			if err != nil {
				return fmt.Errorf("sqlstore: insert order: %w", err)
			}
			id, err := res.LastInsertId()
			if err != nil {
				return err
			}
			rows[i] = orderRow{ID: id, UserID: o.UserID, SKU: o.SKU, Qty: o.Qty}
		}
		if err := s.recordCreated(ctx, tx, batch, rows); err != nil { // before the stock too
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE skus SET available = available - ? WHERE sku = ? AND available >= ?`, total, sku, total)
		if err != nil {
			return fmt.Errorf("sqlstore: take stock: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errNotWhole
		}
		if k.LimitPerUser > 0 {
			if err := s.checkLimits(ctx, tx, sku, k.LimitPerUser, batch); err != nil {
				return err
			}
		}
		for i, r := range batch {
			r.o.ID, r.o.Status = rows[i].ID, order.Pending
		}
		return nil
	})
}

// checkLimits fails the batch when one of its buyers would hold more of the
// SKU than its limit. A locking read: it sees what was committed while this
// transaction waited for the SKU's row.
func (s *Store) checkLimits(ctx context.Context, tx *sqlx.Tx, sku, limit int64, batch []*createReq) error {
	users := map[int64]bool{}
	args := []any{sku}
	for _, r := range batch {
		if !users[r.o.UserID] {
			users[r.o.UserID] = true
			args = append(args, r.o.UserID)
		}
	}
	q := `SELECT COALESCE(MAX(held), 0) FROM (SELECT SUM(qty) AS held FROM orders
		WHERE sku = ? AND user_id IN (?` + strings.Repeat(", ?", len(users)-1) + `) AND status IN ('pending', 'paid', 'shipped', 'completed')
		GROUP BY user_id LOCK IN SHARE MODE) AS h`
	var most int64
	if err := tx.GetContext(ctx, &most, q, args...); err != nil {
		return err
	}
	if most > limit {
		return errNotWhole
	}
	return nil
}

// recordCreated records the creation of each order of a batch, one outbox
// record each (their times differ), in one statement, when the outbox is on.
func (s *Store) recordCreated(ctx context.Context, tx *sqlx.Tx, batch []*createReq, rows []orderRow) error {
	if !s.outbox {
		return nil
	}
	var q strings.Builder
	q.WriteString(`INSERT INTO transitions_outbox (from_status, to_status, changed_at, source, n, changes) VALUES `)
	args := make([]any, 0, 6*len(rows))
	for i, r := range rows {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?, ?, ?, ?)")
		args = append(args, "", string(order.Pending), ms(batch[i].o.CreatedAt), order.SourceRequest, 1,
			string(order.AppendOrderRef(nil, r.ID, r.UserID, r.SKU, r.Qty)))
	}
	if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
		return fmt.Errorf("sqlstore: record created orders: %w", err)
	}
	return nil
}

// createOne creates one order in a transaction of its own.
func (s *Store) createOne(ctx context.Context, o *order.Order) error {
	return s.tx(ctx, false, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE skus SET available = available - ? WHERE sku = ? AND available >= ?`, o.Qty, o.SKU, o.Qty)
		if err != nil {
			return fmt.Errorf("sqlstore: take stock: %w", err)
		}
		var k skuRow
		if err := tx.GetContext(ctx, &k, `SELECT sku, name, price_cents, available, limit_per_user FROM skus WHERE sku = ?`, o.SKU); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return order.Errorf(order.CodeNotFound, "sku %d not found", o.SKU)
			}
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return order.ErrSoldOut
		}
		if k.LimitPerUser > 0 {
			var held int64
			if err := tx.GetContext(ctx, &held, `SELECT COALESCE(SUM(qty), 0) FROM orders
				WHERE user_id = ? AND sku = ? AND status IN ('pending', 'paid', 'shipped', 'completed')`, o.UserID, o.SKU); err != nil {
				return err
			}
			if held+o.Qty > k.LimitPerUser {
				return order.ErrLimitExceeded
			}
		}
		o.AmountCents = k.PriceCents * o.Qty
		res, err = tx.ExecContext(ctx, `INSERT INTO orders (user_id, sku, qty, amount_cents, status, created_at, pay_deadline, auto_confirmed)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, o.UserID, o.SKU, o.Qty, o.AmountCents, order.Pending, ms(o.CreatedAt), ms(o.PayDeadline), false)
		if err != nil {
			return fmt.Errorf("sqlstore: insert order: %w", err)
		}
		if o.ID, err = res.LastInsertId(); err != nil {
			return err
		}
		o.Status = order.Pending
		return s.recordChanges(ctx, tx, []orderRow{{ID: o.ID, UserID: o.UserID, SKU: o.SKU, Qty: o.Qty}},
			"", order.Pending, ms(o.CreatedAt), order.SourceRequest)
	})
}
