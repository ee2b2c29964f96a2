package order

import (
	"context"
	"strconv"
	"time"
)

// Sources of a transition: what made it.
const (
	SourceRequest = "request" // a call of the API (or of the Service) by a user or an admin
	SourceEvent   = "event"   // an expired timer: its key's event, or the reaper
	SourceSweep   = "sweep"   // the database sweep, for a deadline no event announced
)

// A Change is one transition of an order as the store recorded it, in the
// transaction that made it, for the transitions stream (the outbox).
type Change struct {
	// Seq orders the changes of one order: a later transition of an order
	// has a larger Seq. It names the outbox record holding the change (the
	// changes one statement made together share one).
	Seq     int64
	OrderID int64
	UserID  int64
	SKU     int64
	Qty     int64
	From    Status // empty for a created order
	To      Status
	At      time.Time
	Source  string // SourceRequest, SourceEvent or SourceSweep
	// Deadline is set on the change of a moved deadline (From and To are
	// the order's status then, which did not change): the new pay deadline
	// of a pending order, or confirm deadline of a shipped one.
	Deadline time.Time
}

// An Outbox holds the changes committed but not yet relayed to the
// transitions stream. A Store that records changes (sqlstore, with its outbox
// on) implements it.
type Outbox interface {
	// PendingChanges returns the changes of up to limit records, in Seq
	// order, oldest first. A record holds the changes that one statement
	// made (one order's, or a batch's); they share its Seq.
	PendingChanges(ctx context.Context, limit int) ([]Change, error)
	// DeleteChanges removes the records of seqs, relayed.
	DeleteChanges(ctx context.Context, seqs []int64) error
	// ChangeBacklog returns how many changes wait and when the oldest was
	// made (zero when none wait).
	ChangeBacklog(ctx context.Context) (n int64, oldest time.Time, err error)
}

// AppendOrderRef appends "order_id:user_id:sku:qty" to b: the form in which
// one record of the outbox, and the relay's call to Redis, list the orders
// of a group of changes (comma-separated).
func AppendOrderRef(b []byte, orderID, userID, sku, qty int64) []byte {
	b = strconv.AppendInt(b, orderID, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, userID, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, sku, 10)
	b = append(b, ':')
	return strconv.AppendInt(b, qty, 10)
}
