// Package transitions relays every transition of an order, recorded in the
// store's outbox in the transaction that made it, to the Redis Stream
// <prefix>orderd:transitions, so that a shop's own programs learn of them
// with XREAD or XREADGROUP.
//
// Delivery is at least once: a change is deleted from the outbox only after
// Redis took it, so neither Redis failing nor the relaying process dying
// between the commit and the append loses it, and the changes of one order
// reach the stream in the order they were committed. A consumer may see an
// entry twice (after such a failure) and deduplicates by order id and the
// status moved to (and the deadline, for a moved deadline: an entry with a
// deadline field moves no status, only the order's pay or confirm
// deadline).
//
// Several processes may run a Relay over one outbox and stream (every
// `orderd serve` and `orderd listen`): a lease in Redis lets one of them
// relay at a time, so each change is appended once in normal operation.
package transitions

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/orderd/orderd/order"
)

// timeLayout is RFC 3339 in UTC with milliseconds, as the HTTP API writes times.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// Values returns the fields of c's stream entry, for XADD: order_id,
// user_id, sku, qty, from (empty for a created order), to, at (RFC 3339,
// UTC, milliseconds) and source; and deadline (RFC 3339, UTC, milliseconds)
// for a moved deadline, whose from and to are both the order's status.
func Values(c order.Change) []any {
	v := []any{
		"order_id", strconv.FormatInt(c.OrderID, 10),
		"user_id", strconv.FormatInt(c.UserID, 10),
		"sku", strconv.FormatInt(c.SKU, 10),
		"qty", strconv.FormatInt(c.Qty, 10),
		"from", string(c.From),
		"to", string(c.To),
		"at", c.At.UTC().Format(timeLayout),
		"source", c.Source,
	}
	if !c.Deadline.IsZero() {
		v = append(v, "deadline", c.Deadline.UTC().Format(timeLayout))
	}
	return v
}

// Decode reads a stream entry's fields (as go-redis's XMessage.Values holds
// them) back into a Change; its Seq is zero.
func Decode(values map[string]any) (order.Change, error) {
	str := func(name string) (string, error) {
		v, ok := values[name]
		if !ok {
			return "", fmt.Errorf("transitions: entry has no %q", name)
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("transitions: entry's %q is a %T, not a string", name, v)
		}
		return s, nil
	}
	var c order.Change
	var errs []error
	for _, f := range []struct {
		name string
		to   *int64
	}{{"order_id", &c.OrderID}, {"user_id", &c.UserID}, {"sku", &c.SKU}, {"qty", &c.Qty}} {
		s, err := str(f.name)
		if err == nil {
			*f.to, err = strconv.ParseInt(s, 10, 64)
		}
		errs = append(errs, err)
	}
	from, err := str("from")
	errs = append(errs, err)
	to, err := str("to")
	errs = append(errs, err)
	c.From, c.To = order.Status(from), order.Status(to)
	at, err := str("at")
	if err == nil {
		c.At, err = time.Parse(time.RFC3339Nano, at)
	}
	errs = append(errs, err)
	c.Source, err = str("source")
	errs = append(errs, err)
	if _, ok := values["deadline"]; ok { // a moved deadline
		d, err := str("deadline")
		if err == nil {
			c.Deadline, err = time.Parse(time.RFC3339Nano, d)
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return order.Change{}, err
	}
	return c, nil
}
