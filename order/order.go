// Package order holds orders, their statuses and the only transitions allowed,
// and the Service that the HTTP API and the expiry daemon share.
//
// The database is the truth: every transition is one conditional update, so
// exactly one actor wins and a repeated or late event changes nothing. Redis
// keys (order_pay:<id>, order_confirm:<id>) only make the daemon fast.
package order

import (
	"context"
	"time"
)

// Status is where an order stands.
type Status string

// Statuses: pending → paid → shipped → completed; pending → cancelled (by the
// user) or expired (pay timeout). Nothing else moves.
const (
	Pending   Status = "pending"
	Paid      Status = "paid"
	Shipped   Status = "shipped"
	Completed Status = "completed"
	Cancelled Status = "cancelled"
	Expired   Status = "expired"
)

// Live reports whether an order in status s holds stock.
func (s Status) Live() bool {
	return s == Pending || s == Paid || s == Shipped || s == Completed
}

// Order is one purchase of qty units of one SKU.
type Order struct {
	ID              int64
	UserID          int64
	SKU             int64
	Qty             int64
	AmountCents     int64
	Status          Status
	CreatedAt       time.Time
	PayDeadline     time.Time
	PaidAt          *time.Time
	CancelledAt     *time.Time // cancelled by the user or expired
	ShippedAt       *time.Time
	ConfirmDeadline *time.Time
	CompletedAt     *time.Time
	AutoConfirmed   bool
}

// Timer returns the key (without the prefix) and deadline of the timer the
// order waits on: its pay timer while pending, its confirm timer while
// shipped; ok is false in any other status.
func (o Order) Timer() (key string, deadline time.Time, ok bool) {
	switch {
	case o.Status == Pending:
		return PayKey(o.ID), o.PayDeadline, true
	case o.Status == Shipped && o.ConfirmDeadline != nil:
		return ConfirmKey(o.ID), *o.ConfirmDeadline, true
	}
	return "", time.Time{}, false
}

// SKU is a product with its stock. Available is the database's truth.
type SKU struct {
	SKU          int64
	Name         string
	PriceCents   int64
	Available    int64
	LimitPerUser int64 // units one user may hold in live orders; 0: no limit
}

// DueCursor is a position in deadline order: the deadline (Unix ms) and the
// id of the last order seen. The zero value is the start.
type DueCursor struct {
	At, ID int64
}

// A Store keeps orders and SKUs. Each method that changes an order is one
// conditional transition; stock moves in the same transaction.
type Store interface {
	PutSKU(ctx context.Context, s SKU) (SKU, error)
	GetSKU(ctx context.Context, sku int64) (SKU, error)
	ListSKUs(ctx context.Context) ([]SKU, error)

	// Create takes qty from the SKU's available stock, checks the per-user
	// limit, and inserts o (pending) with its price, filling in o.ID and
	// o.AmountCents. ErrNotFound, ErrSoldOut or ErrLimitExceeded otherwise.
	Create(ctx context.Context, o *Order) error
	Get(ctx context.Context, id int64) (Order, error)
	// ListByUser returns the user's orders, newest first, at most limit.
	ListByUser(ctx context.Context, userID int64, limit int) ([]Order, error)

	// Pay moves a pending order whose pay deadline is after now to paid.
	Pay(ctx context.Context, id int64, now time.Time) (Order, error)
	// Cancel moves a pending order whose pay deadline is after now to
	// cancelled and gives its stock back.
	Cancel(ctx context.Context, id int64, now time.Time) (Order, error)
	// Ship moves a paid order to shipped with the confirm deadline given.
	Ship(ctx context.Context, id int64, now, confirmDeadline time.Time) (Order, error)
	// Confirm moves a shipped order to completed, confirmed by its owner.
	Confirm(ctx context.Context, id int64, now time.Time) (Order, error)
	// MoveDeadline sets the deadline of order id while it is in status
	// (Pending: its pay deadline; Shipped: its confirm deadline) to
	// deadline, at now; ErrNotFound, or an invalid-transition error naming
	// its status when it is in another.
	MoveDeadline(ctx context.Context, id int64, status Status, deadline, now time.Time) (Order, error)

	// Expire moves every pending order of ids whose pay deadline is at or
	// before now to expired and gives its stock back, all in one
	// transaction. It returns the orders it moved, those pending but not
	// due yet, and the ids it skipped because another transaction holds
	// them locked (Moves). The orders come with ID, UserID, SKU, Qty,
	// Status, the deadlines and the time of the transition set (other
	// fields may be zero). source (a Source constant) is what made the
	// transition, for the changes recorded. A fence in ctx (WithFence) is
	// checked before the commit.
	Expire(ctx context.Context, ids []int64, now time.Time, source string) (Moves, error)
	// Complete moves every shipped order of ids whose confirm deadline is at
	// or before now to completed (auto_confirmed), in one transaction.
	Complete(ctx context.Context, ids []int64, now time.Time, source string) (Moves, error)

	// Due returns up to limit ids of orders in status (Pending or Shipped)
	// whose deadline (pay or confirm) is at or before now, in deadline order,
	// starting after the cursor; and the cursor after the last one returned.
	Due(ctx context.Context, status Status, now time.Time, after DueCursor, limit int) ([]int64, DueCursor, error)

	// Existing returns those of ids that are orders.
	Existing(ctx context.Context, ids []int64) ([]int64, error)
	// LiveQty returns, per user, the units of sku held by live orders.
	LiveQty(ctx context.Context, sku int64) (map[int64]int64, error)

	Ping(ctx context.Context) error
	Close() error
}

// Moves is what one batch of deadline transitions (Store.Expire,
// Store.Complete) did.
type Moves struct {
	// Moved are the orders moved.
	Moved []Order
	// NotDue are the orders in the status the move starts from whose
	// deadline has not come.
	NotDue []Order
	// Busy are the ids locked by another transaction, skipped (SKIP LOCKED)
	// rather than waited for: the other may move them, or roll back. Ask
	// again for them shortly.
	Busy []int64
}
