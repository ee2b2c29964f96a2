package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/orderd/orderd/order"
)

const orderColumns = `id, user_id, sku, qty, amount_cents, status, created_at, pay_deadline,
	paid_at, cancelled_at, shipped_at, confirm_deadline, completed_at, auto_confirmed`

type orderRow struct {
	ID              int64         `db:"id"`
	UserID          int64         `db:"user_id"`
	SKU             int64         `db:"sku"`
	Qty             int64         `db:"qty"`
	AmountCents     int64         `db:"amount_cents"`
	Status          string        `db:"status"`
	CreatedAt       int64         `db:"created_at"`
	PayDeadline     int64         `db:"pay_deadline"`
	PaidAt          sql.NullInt64 `db:"paid_at"`
	CancelledAt     sql.NullInt64 `db:"cancelled_at"`
	ShippedAt       sql.NullInt64 `db:"shipped_at"`
	ConfirmDeadline sql.NullInt64 `db:"confirm_deadline"`
	CompletedAt     sql.NullInt64 `db:"completed_at"`
	AutoConfirmed   bool          `db:"auto_confirmed"`
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

func fromNull(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMS(v.Int64)
	return &t
}

func (r orderRow) order() order.Order {
	return order.Order{
		ID: r.ID, UserID: r.UserID, SKU: r.SKU, Qty: r.Qty, AmountCents: r.AmountCents,
		Status: order.Status(r.Status), CreatedAt: fromMS(r.CreatedAt), PayDeadline: fromMS(r.PayDeadline),
		PaidAt: fromNull(r.PaidAt), CancelledAt: fromNull(r.CancelledAt), ShippedAt: fromNull(r.ShippedAt),
		ConfirmDeadline: fromNull(r.ConfirmDeadline), CompletedAt: fromNull(r.CompletedAt),
		AutoConfirmed: r.AutoConfirmed,
	}
}

type skuRow struct {
	SKU          int64  `db:"sku"`
	Name         string `db:"name"`
	PriceCents   int64  `db:"price_cents"`
	Available    int64  `db:"available"`
	LimitPerUser int64  `db:"limit_per_user"`
}

func (r skuRow) sku() order.SKU { return order.SKU(r) }

// PutSKU creates or replaces a SKU.
func (s *Store) PutSKU(ctx context.Context, k order.SKU) (order.SKU, error) {
	q := `INSERT INTO skus (sku, name, price_cents, available, limit_per_user) VALUES (?, ?, ?, ?, ?)
		ON DUPLICATE KEY UPDATE name = VALUES(name), price_cents = VALUES(price_cents),
		available = VALUES(available), limit_per_user = VALUES(limit_per_user)`
	if s.dialect == "sqlite" {
		q = `INSERT INTO skus (sku, name, price_cents, available, limit_per_user) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,
		available = excluded.available, limit_per_user = excluded.limit_per_user`
	}
	if _, err := s.exec(ctx, true, q, k.SKU, k.Name, k.PriceCents, k.Available, k.LimitPerUser); err != nil {
		return order.SKU{}, cmp.Or(dataError(err), fmt.Errorf("sqlstore: put sku %d: %w", k.SKU, err))
	}
	return k, nil
}

// GetSKU returns one SKU or order.ErrNotFound.
func (s *Store) GetSKU(ctx context.Context, sku int64) (order.SKU, error) {
	var r skuRow
	err := s.db.GetContext(ctx, &r, `SELECT sku, name, price_cents, available, limit_per_user FROM skus WHERE sku = ?`, sku)
	if errors.Is(err, sql.ErrNoRows) {
		return order.SKU{}, order.Errorf(order.CodeNotFound, "sku %d not found", sku)
	}
	if err != nil {
		return order.SKU{}, fmt.Errorf("sqlstore: get sku %d: %w", sku, err)
	}
	return r.sku(), nil
}

// ListSKUs returns every SKU by number.
func (s *Store) ListSKUs(ctx context.Context) ([]order.SKU, error) {
	var rows []skuRow
	if err := s.db.SelectContext(ctx, &rows, `SELECT sku, name, price_cents, available, limit_per_user FROM skus ORDER BY sku`); err != nil {
		return nil, fmt.Errorf("sqlstore: list skus: %w", err)
	}
	out := make([]order.SKU, len(rows))
	for i, r := range rows {
		out[i] = r.sku()
	}
	return out, nil
}

// Get returns one order or order.ErrNotFound.
func (s *Store) Get(ctx context.Context, id int64) (order.Order, error) {
	return s.get(ctx, s.db, id)
}

func (s *Store) get(ctx context.Context, q sqlx.QueryerContext, id int64) (order.Order, error) {
	var r orderRow
	err := sqlx.GetContext(ctx, q, &r, `SELECT `+orderColumns+` FROM orders WHERE id = ?`, id)
	if errors.Is(err, sql.ErrNoRows) {
		return order.Order{}, order.Errorf(order.CodeNotFound, "order %d not found", id)
	}
	if err != nil {
		return order.Order{}, fmt.Errorf("sqlstore: get order %d: %w", id, err)
	}
	return r.order(), nil
}

// ListByUser returns the user's orders, newest first.
func (s *Store) ListByUser(ctx context.Context, userID int64, limit int) ([]order.Order, error) {
	var rows []orderRow
	if err := s.db.SelectContext(ctx, &rows, `SELECT `+orderColumns+` FROM orders WHERE user_id = ? ORDER BY id DESC LIMIT ?`, userID, limit); err != nil {
		return nil, fmt.Errorf("sqlstore: list orders: %w", err)
	}
	out := make([]order.Order, len(rows))
	for i, r := range rows {
		out[i] = r.order()
	}
	return out, nil
}

// transition runs one conditional update of order id from status from to
// status to at now (args: those of set, then those of where) and returns the
// order after it; when no row matched it returns order.ErrNotFound or an
// invalid-transition error naming the order's status. With the outbox on,
// the update and its record are one transaction.
func (s *Store) transition(ctx context.Context, id int64, action string, from, to order.Status, now time.Time, set, where string, args ...any) (order.Order, error) {
	q := `UPDATE orders SET ` + set + ` WHERE ` + where + ` AND status = ? AND id = ?`
	args = append(args, string(from), id)
	var n int64
	update := func(ex sqlx.ExecerContext) error {
		res, err := ex.ExecContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("sqlstore: %s order %d: %w", action, id, err)
		}
		n, _ = res.RowsAffected()
		return nil
	}
	var err error
	if s.outbox {
		err = s.tx(ctx, false, func(tx *sqlx.Tx) error {
			if err := update(tx); err != nil || n == 0 {
				return err
			}
			return s.recordChange(ctx, tx, id, from, to, ms(now))
		})
	} else {
		err = update(execer(func(ctx context.Context, q string, args ...any) (sql.Result, error) {
			return s.exec(ctx, false, q, args...)
		}))
	}
	if err != nil {
		return order.Order{}, err
	}
	o, err := s.Get(ctx, id)
	if err != nil {
		return order.Order{}, err
	}
	if n == 0 {
		return o, &order.Error{Code: order.CodeInvalidTransition, Status: o.Status,
			Message: fmt.Sprintf("cannot %s order %d: it is %s", action, id, o.Status)}
	}
	return o, nil
}

// Pay moves a pending order to paid if its pay deadline is after now.
func (s *Store) Pay(ctx context.Context, id int64, now time.Time) (order.Order, error) {
	return s.transition(ctx, id, "pay", order.Pending, order.Paid, now, `status = 'paid', paid_at = ?`,
		`pay_deadline > ?`, ms(now), ms(now))
}

// Ship moves a paid order to shipped.
func (s *Store) Ship(ctx context.Context, id int64, now, confirmDeadline time.Time) (order.Order, error) {
	return s.transition(ctx, id, "ship", order.Paid, order.Shipped, now, `status = 'shipped', shipped_at = ?, confirm_deadline = ?`,
		`TRUE`, ms(now), ms(confirmDeadline))
}

// Confirm moves a shipped order to completed, confirmed by its owner.
func (s *Store) Confirm(ctx context.Context, id int64, now time.Time) (order.Order, error) {
	return s.transition(ctx, id, "confirm", order.Shipped, order.Completed, now, `status = 'completed', completed_at = ?, auto_confirmed = ?`,
		`TRUE`, ms(now), false)
}

// lockOrder reads order id in tx and locks its row until the commit;
// order.ErrNotFound when there is none.
func (s *Store) lockOrder(ctx context.Context, tx *sqlx.Tx, id int64) (orderRow, error) {
	var r orderRow
	err := tx.GetContext(ctx, &r, `SELECT `+orderColumns+` FROM orders WHERE id = ?`+s.forUpdate(), id)
	if errors.Is(err, sql.ErrNoRows) {
		return r, order.Errorf(order.CodeNotFound, "order %d not found", id)
	}
	if err != nil {
		return r, fmt.Errorf("sqlstore: lock order %d: %w", id, err)
	}
	return r, nil
}

// MoveDeadline sets the pay deadline of a pending order, or the confirm
// deadline of a shipped one, and records the move in the outbox, in one
// transaction that locks the order: an expiry batch moving it at the same
// moment either finds the new deadline (not due: it leaves it) or moved it
// first (then the order is expired, and this says so).
func (s *Store) MoveDeadline(ctx context.Context, id int64, status order.Status, deadline, now time.Time) (order.Order, error) {
	col := "pay_deadline"
	if status == order.Shipped {
		col = "confirm_deadline"
	} else if status != order.Pending {
		return order.Order{}, fmt.Errorf("sqlstore: no deadline to move in status %s", status)
	}
	var o order.Order
	err := s.tx(ctx, false, func(tx *sqlx.Tx) error {
		r, err := s.lockOrder(ctx, tx, id)
		if err != nil {
			return err
		}
		if order.Status(r.Status) != status {
			o = r.order()
			return &order.Error{Code: order.CodeInvalidTransition, Status: o.Status,
				Message: fmt.Sprintf("cannot move the %s of order %d: it is %s", strings.ReplaceAll(col, "_", " "), id, o.Status)}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE orders SET `+col+` = ? WHERE id = ?`, ms(deadline), id); err != nil {
			return fmt.Errorf("sqlstore: move the deadline of order %d: %w", id, err)
		}
		if err := s.recordDeadline(ctx, tx, r, status, ms(now), ms(deadline)); err != nil {
			return err
		}
		o, err = s.get(ctx, tx, id)
		return err
	})
	if err != nil {
		return order.Order{}, err
	}
	return o, nil
}

// Cancel moves a pending order whose deadline is after now to cancelled and
// gives its stock back, in one transaction.
func (s *Store) Cancel(ctx context.Context, id int64, now time.Time) (order.Order, error) {
	var ok bool
	err := s.tx(ctx, false, func(tx *sqlx.Tx) error {
		r, err := s.lockOrder(ctx, tx, id)
		if err != nil {
			return err
		}
		if r.Status != string(order.Pending) || r.PayDeadline <= ms(now) {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE orders SET status = 'cancelled', cancelled_at = ? WHERE id = ? AND status = 'pending'`, ms(now), id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE skus SET available = available + ? WHERE sku = ?`, r.Qty, r.SKU); err != nil {
			return err
		}
		ok = true
		return s.recordChanges(ctx, tx, []orderRow{r}, order.Pending, order.Cancelled, ms(now), order.SourceRequest)
	})
	if err != nil {
		return order.Order{}, err
	}
	o, err := s.Get(ctx, id)
	if err != nil {
		return order.Order{}, err
	}
	if !ok {
		return o, &order.Error{Code: order.CodeInvalidTransition, Status: o.Status,
			Message: fmt.Sprintf("cannot cancel order %d: it is %s", id, o.Status)}
	}
	return o, nil
}

// lockColumns are what a batch transition needs of an order (the rest stay
// zero in the rows lockOrders returns).
const lockColumns = `id, user_id, sku, qty, status, pay_deadline, confirm_deadline`

// lockOrders reads and locks the orders of ids (ascending id, so that
// concurrent batches lock in one order). With skip (where the server can:
// MariaDB 10.6+, MySQL 8), rows another transaction holds locked are
// skipped, not waited for: a batch never queues behind a stalled one (a
// frozen process's transaction holds its locks until the server ends it).
func (s *Store) lockOrders(ctx context.Context, tx *sqlx.Tx, ids []int64, skip bool) ([]orderRow, error) {
	lock := s.forUpdate()
	if skip {
		lock += " SKIP LOCKED"
	}
	q, args, err := sqlx.In(`SELECT `+lockColumns+` FROM orders WHERE id IN (?) ORDER BY id`+lock, ids)
	if err != nil {
		return nil, err
	}
	var rows []orderRow
	if err := tx.SelectContext(ctx, &rows, q, args...); err != nil {
		return nil, fmt.Errorf("sqlstore: lock orders: %w", err)
	}
	return rows, nil
}

// deadlineMove is a transition that a deadline makes, applied to a batch.
type deadlineMove struct {
	from     order.Status
	to       order.Status
	deadline func(orderRow) sql.NullInt64     // the deadline that decides
	mark     func(r *orderRow, now int64)     // the row as the move leaves it
	set      string                           // the UPDATE's SET clause
	setArgs  func(now int64) []any            // its arguments
	after    func(*sqlx.Tx, []orderRow) error // more work in the same transaction
}

// moveDue applies m, in one transaction, to the orders of ids that are in
// m.from and whose deadline is at or before now: they are locked, moved by one
// UPDATE, then m.after runs, and the fence of ctx is checked before the
// commit. It returns the orders moved, those in m.from whose deadline has not
// come, and the ids skipped because another transaction holds them.
func (s *Store) moveDue(ctx context.Context, ids []int64, now time.Time, source string, m deadlineMove) (order.Moves, error) {
	if len(ids) == 0 {
		return order.Moves{}, nil
	}
	nowMS := ms(now)
	var mv order.Moves
	err := s.tx(ctx, true, func(tx *sqlx.Tx) error {
		mv = order.Moves{}
		// A request (one order, a person waiting) waits for the lock; the
		// daemon's batches skip what others hold and come back for it.
		skip := s.skipLocked && source != order.SourceRequest
		rows, err := s.lockOrders(ctx, tx, ids, skip)
		if err != nil {
			return err
		}
		if skip && len(rows) < len(ids) {
			if mv.Busy, err = s.busy(ctx, tx, ids, rows); err != nil {
				return err
			}
		}
		var due []orderRow
		var dueIDs []int64
		for _, r := range rows {
			d := m.deadline(r)
			if r.Status != string(m.from) || !d.Valid {
				continue
			}
			if d.Int64 > nowMS {
				mv.NotDue = append(mv.NotDue, r.order())
				continue
			}
			m.mark(&r, nowMS)
			mv.Moved = append(mv.Moved, r.order())
			due, dueIDs = append(due, r), append(dueIDs, r.ID)
		}
		if len(due) == 0 {
			return nil
		}
		q, args, err := sqlx.In(`UPDATE orders SET `+m.set+` WHERE id IN (?) AND status = ?`,
			append(m.setArgs(nowMS), dueIDs, m.from)...)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("sqlstore: move orders: %w", err)
		}
		if n, _ := res.RowsAffected(); n != int64(len(due)) { // they are locked: none may escape
			return fmt.Errorf("sqlstore: moved %d of %d locked orders", n, len(due))
		}
		if err := s.recordChanges(ctx, tx, due, m.from, m.to, nowMS, source); err != nil {
			return err
		}
		if m.after != nil { // last: it may lock a hot row (a SKU's), held until the commit
			if err := m.after(tx, due); err != nil {
				return err
			}
		}
		return order.CheckFence(ctx)
	})
	if err != nil {
		return order.Moves{}, err
	}
	return mv, nil
}

// busy returns those of ids that lockOrders skipped (got holds the rows it
// locked) but that are orders: another transaction holds them. A plain read
// sees them without waiting.
func (s *Store) busy(ctx context.Context, tx *sqlx.Tx, ids []int64, got []orderRow) ([]int64, error) {
	locked := make(map[int64]bool, len(got))
	for _, r := range got {
		locked[r.ID] = true
	}
	var absent []int64
	for _, id := range ids {
		if !locked[id] {
			absent = append(absent, id)
		}
	}
	q, args, err := sqlx.In(`SELECT id FROM orders WHERE id IN (?)`, absent)
	if err != nil {
		return nil, err
	}
	var out []int64
	if err := tx.SelectContext(ctx, &out, q, args...); err != nil {
		return nil, fmt.Errorf("sqlstore: orders locked by others: %w", err)
	}
	return out, nil
}

// Expire expires the due pending orders of ids and gives their stock back,
// set-based, in one transaction: the orders are locked, moved by one UPDATE,
// recorded, and last each SKU's stock is given back by one UPDATE, SKUs in
// ascending order (so that concurrent batches never deadlock on them). Last,
// because a flash sale's SKU row is what every creation and expiry of it
// waits for: it is held only until the commit.
func (s *Store) Expire(ctx context.Context, ids []int64, now time.Time, source string) (order.Moves, error) {
	return s.moveDue(ctx, ids, now, source, deadlineMove{
		from:     order.Pending,
		to:       order.Expired,
		deadline: func(r orderRow) sql.NullInt64 { return sql.NullInt64{Int64: r.PayDeadline, Valid: true} },
		mark: func(r *orderRow, now int64) {
			r.Status, r.CancelledAt = string(order.Expired), sql.NullInt64{Int64: now, Valid: true}
		},
		set:     `status = 'expired', cancelled_at = ?`,
		setArgs: func(now int64) []any { return []any{now} },
		after: func(tx *sqlx.Tx, due []orderRow) error {
			give := map[int64]int64{}
			for _, r := range due {
				give[r.SKU] += r.Qty
			}
			for _, k := range slices.Sorted(maps.Keys(give)) {
				if _, err := tx.ExecContext(ctx, `UPDATE skus SET available = available + ? WHERE sku = ?`, give[k], k); err != nil {
					return fmt.Errorf("sqlstore: give back stock of sku %d: %w", k, err)
				}
			}
			return nil
		},
	})
}

// Complete confirms receipt of the due shipped orders of ids, in one
// transaction.
func (s *Store) Complete(ctx context.Context, ids []int64, now time.Time, source string) (order.Moves, error) {
	return s.moveDue(ctx, ids, now, source, deadlineMove{
		from:     order.Shipped,
		to:       order.Completed,
		deadline: func(r orderRow) sql.NullInt64 { return r.ConfirmDeadline },
		mark: func(r *orderRow, now int64) {
			r.Status, r.CompletedAt, r.AutoConfirmed = string(order.Completed), sql.NullInt64{Int64: now, Valid: true}, true
		},
		set:     `status = 'completed', completed_at = ?, auto_confirmed = ?`,
		setArgs: func(now int64) []any { return []any{now, true} },
	})
}

// Due pages through the orders of status whose deadline has passed, in
// (deadline, id) order: the index orders_due serves it.
func (s *Store) Due(ctx context.Context, status order.Status, now time.Time, after order.DueCursor, limit int) ([]int64, order.DueCursor, error) {
	var rows []struct {
		ID    int64 `db:"id"`
		DueAt int64 `db:"due_at"`
	}
	err := s.db.SelectContext(ctx, &rows, `SELECT id, due_at FROM orders
		WHERE status = ? AND due_at <= ? AND (due_at > ? OR (due_at = ? AND id > ?))
		ORDER BY due_at, id LIMIT ?`, status, ms(now), after.At, after.At, after.ID, limit)
	if err != nil {
		return nil, after, fmt.Errorf("sqlstore: due %s orders: %w", status, err)
	}
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
		after = order.DueCursor{At: r.DueAt, ID: r.ID}
	}
	return ids, after, nil
}

// Existing returns those of ids that are orders.
func (s *Store) Existing(ctx context.Context, ids []int64) ([]int64, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	q, args, err := sqlx.In(`SELECT id FROM orders WHERE id IN (?)`, ids)
	if err != nil {
		return nil, err
	}
	var out []int64
	if err := s.db.SelectContext(ctx, &out, q, args...); err != nil {
		return nil, fmt.Errorf("sqlstore: existing orders: %w", err)
	}
	return out, nil
}

// LiveQty returns, per user, the units of sku held by live orders.
func (s *Store) LiveQty(ctx context.Context, sku int64) (map[int64]int64, error) {
	var rows []struct {
		UserID int64 `db:"user_id"`
		Qty    int64 `db:"qty"`
	}
	if err := s.db.SelectContext(ctx, &rows, `SELECT user_id, SUM(qty) AS qty FROM orders
		WHERE sku = ? AND status IN ('pending', 'paid', 'shipped', 'completed') GROUP BY user_id`, sku); err != nil {
		return nil, fmt.Errorf("sqlstore: live quantities of sku %d: %w", sku, err)
	}
	out := make(map[int64]int64, len(rows))
	for _, r := range rows {
		out[r.UserID] = r.Qty
	}
	return out, nil
}
