package daemon

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/orderd/orderd/order"
)

// A Timer is one kind of timer a Daemon runs: the keys <key prefix><Prefix><id>,
// applied in batches when they expire, and swept for the overdue ids whose
// events were lost. The built-in pay timeout and auto-confirm (BuiltIn) and
// the timers of a shop's own tables (SQLTimer) are Timers; the daemon
// batches, fences, sweeps and counts them all the same way.
type Timer interface {
	// Name names the timer in logs and metrics ([a-z0-9_]+).
	Name() string
	// Prefix is what its keys start with, after the key prefix.
	Prefix() string
	// CheckID reads the id of a key (what follows Prefix): a malformed one
	// gets an error wrapping expiry.ErrMalformedKey.
	CheckID(id string) error
	// Apply moves those of ids that are due and still to move, in one
	// transaction; source is order.SourceEvent or order.SourceSweep.
	Apply(ctx context.Context, ids []string, source string) (Applied, error)
	// Sweep moves the overdue ids for which keep (when not nil) returns
	// true, whose deadline passed at least olderThan ago, and returns how
	// many it moved. A timer that cannot tell whose an id is, or how long ago
	// it fell due, may sweep more: moving is idempotent.
	Sweep(ctx context.Context, olderThan time.Duration, keep func(id string) bool) (int, error)
}

// Applied is what a batch did.
type Applied struct {
	// Moved counts the ids the batch moved.
	Moved int
	// Missing are ids with no record (their events get expiry.ErrNoRecord).
	Missing []string
	// Busy are ids another transaction held: asked again (order.ErrBusy).
	Busy []string
	// NotDue are ids not due yet, with the time they have left: the daemon
	// sets their timers again.
	NotDue map[string]time.Duration
	// Rearmed are ids not due yet whose timers the timer set again itself
	// (the built-in ones do).
	Rearmed []string
}

// BuiltIn returns the timers of orderd's own schema: pay_timeout
// (order_pay:<id>, an unpaid order expires and its stock goes back) and
// auto_confirm (order_confirm:<id>, a shipped order completes).
func BuiltIn(s *order.Service) []Timer {
	return []Timer{
		&builtIn{name: "pay_timeout", prefix: order.PayKeyPrefix, status: order.Pending, s: s, apply: s.ExpireOrders},
		&builtIn{name: "auto_confirm", prefix: order.ConfirmKeyPrefix, status: order.Shipped, s: s, apply: s.CompleteOrders},
	}
}

// builtIn is one of the timers of orderd's schema.
type builtIn struct {
	name, prefix string
	status       order.Status
	s            *order.Service
	apply        func(context.Context, []int64, string) (order.Applied, error)
}

func (b *builtIn) Name() string   { return b.name }
func (b *builtIn) Prefix() string { return b.prefix }

func (b *builtIn) CheckID(id string) error {
	_, err := ParseKeyID(id, "")
	return err
}

func (b *builtIn) Apply(ctx context.Context, ids []string, source string) (Applied, error) {
	nums := make([]int64, len(ids))
	for i, id := range ids {
		n, err := ParseKeyID(id, "")
		if err != nil {
			return Applied{}, fmt.Errorf("%s%s: %w", b.prefix, id, err)
		}
		nums[i] = n
	}
	a, err := b.apply(ctx, nums, source)
	return Applied{Moved: a.Moved, Missing: formatIDs(a.Missing), Busy: formatIDs(a.Busy), Rearmed: formatIDs(a.Rearmed)}, err
}

func (b *builtIn) Sweep(ctx context.Context, olderThan time.Duration, keep func(id string) bool) (int, error) {
	var k func(int64) bool
	if keep != nil {
		k = func(id int64) bool { return keep(strconv.FormatInt(id, 10)) }
	}
	return b.s.SweepStatus(ctx, b.status, olderThan, k)
}

func formatIDs(ids []int64) []string {
	if len(ids) == 0 {
		return nil
	}
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = strconv.FormatInt(id, 10)
	}
	return out
}
