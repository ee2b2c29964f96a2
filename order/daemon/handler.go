package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
)

// BatchConfig says how expiry events that arrive together are grouped into
// one database transaction.
type BatchConfig struct {
	// Max is the largest batch. If zero, 500 is used.
	Max int
	// Wait is how long a batch waits for one more event: it is applied when
	// it is full, when no event joined it for Wait, or MaxWait after its
	// first event, whichever comes first. A lone event waits Wait; a burst
	// fills batches whatever the share of it each daemon gets.
	// If zero, 1 ms is used.
	Wait time.Duration
	// MaxWait bounds how long the first event of a batch waits for others:
	// a reaper hands timers over at their deadlines, so a steady stream
	// (one a millisecond) never leaves a gap of Wait, and MaxWait is then
	// what each batch waits. Under load batches grow anyway, while both
	// slots (Concurrency) are busy. If zero, 5 × Wait is used.
	MaxWait time.Duration
	// Concurrency bounds the batches of one kind (expiries, completions)
	// applied at once. A batch ready while all are busy waits for one to
	// commit, and goes on filling meanwhile: under load, batches grow rather
	// than multiply (group commit), which is what keeps several daemons
	// sharing a burst at about the transactions of one. If zero, 2 is used.
	Concurrency int
	// OnBatch, if set, is told the name of the timer, the size of every
	// batch applied (its ids of records that exist) and how many of them it
	// moved. The others were left as they were: moved already (by another
	// daemon, a sweep, or a repeated event), paid or cancelled meanwhile, or
	// not due yet (their timer is set again). With several daemons, that
	// count is the measure of work done twice.
	OnBatch func(timer string, size, moved int)
}

// Register routes the two timer keys of mux to the service s: an expired
// order_pay:<id> expires the order if it is still pending, an expired
// order_confirm:<id> completes it if it is still shipped. Events that arrive
// together are applied in batches, one transaction per batch. A key with a
// malformed id gets an error wrapping expiry.ErrMalformedKey, and one for an
// order that does not exist an error wrapping expiry.ErrNoRecord (the
// listener counts each and logs them, bounded).
func Register(mux *expiry.ServeMux, s *order.Service, cfg BatchConfig) {
	register(mux, BuiltIn(s), cfg, nil, nil)
}

// register routes each timer's keys of mux to it, in batches. With a fence,
// it is asked, just before a batch commits, whether this process may still
// commit the timers of t and ids; an error rolls the batch back
// (order.ErrFenced). With after, every batch applied is told to it (the
// daemon sets again the timers of ids not due yet).
func register(mux *expiry.ServeMux, timers []Timer, cfg BatchConfig, fence func(t Timer, ids []string) error,
	after func(ctx context.Context, t Timer, a Applied)) {
	for _, t := range timers {
		apply := t.Apply
		if after != nil {
			apply = func(ctx context.Context, ids []string, source string) (Applied, error) {
				a, err := t.Apply(ctx, ids, source)
				if err == nil {
					after(ctx, t, a)
				}
				return a, err
			}
		}
		tc := cfg
		if m, ok := t.(interface{ BatchMax() int }); ok && m.BatchMax() > 0 {
			tc.Max = m.BatchMax() // a timer's own batch size
		}
		b := newBatcher(tc, apply)
		if f := cfg.OnBatch; f != nil {
			b.onBatch = func(size, moved int) { f(t.Name(), size, moved) }
		}
		if fence != nil {
			b.fence = func(ids []string) error { return fence(t, ids) }
		}
		mux.Handle(t.Prefix(), batchHandler(t, b))
	}
}

func batchHandler(t Timer, b *batcher) expiry.Handler {
	return expiry.HandlerFunc(func(ctx context.Context, ev expiry.Event) error {
		id, ok := strings.CutPrefix(ev.Key, t.Prefix())
		if !ok {
			return fmt.Errorf("key lacks %q: %w", t.Prefix(), expiry.ErrMalformedKey)
		}
		if err := t.CheckID(id); err != nil {
			return err
		}
		err := b.doAttempt(ctx, id, ev.Attempt)
		if m, ok := t.(interface{ MaxAttempts() int }); ok && err != nil && ev.Attempt+1 >= m.MaxAttempts() {
			err = fmt.Errorf("%w (attempt %d of %d: %w)", err, ev.Attempt+1, m.MaxAttempts(), expiry.ErrGiveUp)
		}
		return err
	})
}

// batcher groups concurrent calls of do into calls of apply. The first caller
// of a batch leads it: it waits up to Wait for the batch to fill, applies it
// and tells every member the outcome. There is no goroutine of its own, so
// nothing to start or stop; a batch never holds more ids than there are
// concurrent callers (the listener's workers).
type batcher struct {
	max     int
	wait    time.Duration
	maxWait time.Duration
	slots   chan struct{} // one per batch being applied
	apply   func(ctx context.Context, ids []string, source string) (Applied, error)
	onBatch func(size, moved int)    // OnBatch, for this batcher's timer
	fence   func(ids []string) error // checked before each batch commits; nil: none

	mu  sync.Mutex
	cur *batch
}

type batch struct {
	ids     []string
	missing []string      // of ids, those that are no record
	busy    []string      // of ids, those another transaction held
	attempt int           // the highest of its members' failed attempts before
	grew    chan struct{} // a member joined
	full    chan struct{}
	done    chan struct{}
	err     error
}

func newBatcher(cfg BatchConfig, apply func(context.Context, []string, string) (Applied, error)) *batcher {
	if cfg.Max <= 0 {
		cfg.Max = 500
	}
	if cfg.Wait <= 0 {
		cfg.Wait = time.Millisecond
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 5 * cfg.Wait
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2
	}
	return &batcher{max: cfg.Max, wait: cfg.Wait, maxWait: max(cfg.MaxWait, cfg.Wait),
		slots: make(chan struct{}, cfg.Concurrency), apply: apply}
}

// errBatchAborted is what the members of a batch get when its leader did not
// apply it (its apply panicked, or its context ended first). It is worth
// retrying: the next attempt joins or leads another batch.
var errBatchAborted = errors.New("order: batch not applied")

func (b *batcher) do(ctx context.Context, id string) error {
	return b.doAttempt(ctx, id, 0)
}

// doAttempt is do for the attempt-th try at id (0: the first); the batch
// is applied with the highest of its members' (Attempt).
func (b *batcher) doAttempt(ctx context.Context, id string, attempt int) error {
	b.mu.Lock()
	bt, leader := b.cur, false
	if bt == nil {
		bt = &batch{grew: make(chan struct{}, 1), full: make(chan struct{}), done: make(chan struct{}), err: errBatchAborted}
		b.cur, leader = bt, true
	}
	bt.ids = append(bt.ids, id)
	bt.attempt = max(bt.attempt, attempt)
	select {
	case bt.grew <- struct{}{}:
	default:
	}
	if len(bt.ids) >= b.max {
		b.cur = nil
		close(bt.full)
	}
	b.mu.Unlock()

	if !leader {
		select {
		case <-bt.done:
			return bt.result(id)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := b.lead(ctx, bt); err != nil {
		return err
	}
	return bt.result(id)
}

// result is what member id of a finished batch gets.
func (bt *batch) result(id string) error {
	switch {
	case bt.err != nil:
		return bt.err
	case slices.Contains(bt.missing, id):
		return fmt.Errorf("%w: %s does not exist", expiry.ErrNoRecord, id)
	case slices.Contains(bt.busy, id):
		return fmt.Errorf("%w: %s, skipped for now", order.ErrBusy, id)
	}
	return nil
}

// lead waits for bt to fill (or for members to stop joining) and for a free
// slot, applies it and tells its members the outcome. The members are released whatever happens:
// bt.done is closed even when apply panics (they see errBatchAborted, the
// panic goes on up).
func (b *batcher) lead(ctx context.Context, bt *batch) error {
	defer close(bt.done)
	idle, limit := time.NewTimer(b.wait), time.NewTimer(b.maxWait)
	defer idle.Stop()
	defer limit.Stop()
	<-bt.grew // the leader's own join
wait:
	for {
		select {
		case <-bt.full:
			break wait
		case <-bt.grew:
			idle.Reset(b.wait)
		case <-idle.C:
			break wait
		case <-limit.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	select { // the batch stays open to new members until a slot frees
	case b.slots <- struct{}{}:
		defer func() { <-b.slots }()
	case <-ctx.Done():
	}
	b.mu.Lock()
	if b.cur == bt {
		b.cur = nil
	}
	ids, attempt := bt.ids, bt.attempt
	b.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	actx := ctx
	if b.fence != nil {
		actx = order.WithFence(ctx, func() error { return b.fence(ids) })
	}
	a, err := b.apply(withAttempt(actx, attempt+1), ids, order.SourceEvent)
	if b.onBatch != nil && err == nil {
		b.onBatch(len(ids)-len(a.Missing), a.Moved)
	}
	bt.missing, bt.busy, bt.err = a.Missing, a.Busy, err
	return err
}

type attemptKey struct{}

// withAttempt tells a Timer's Apply which attempt at its batch this is (1:
// the first).
func withAttempt(ctx context.Context, attempt int) context.Context {
	return context.WithValue(ctx, attemptKey{}, attempt)
}

// Attempt returns which attempt at a batch ctx is applying (1: the first;
// the highest of its members'). Outside a batch it is 1.
func Attempt(ctx context.Context) int {
	if n, ok := ctx.Value(attemptKey{}).(int); ok {
		return n
	}
	return 1
}
