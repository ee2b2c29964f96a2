package daemon

import (
	"context"
	"errors"
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
	// Wait is how long the first event of a batch waits for others.
	// If zero, 2 ms is used.
	Wait time.Duration
	// OnBatch, if set, is told the size of every batch applied.
	OnBatch func(size int)
}

// Register routes the two timer keys of mux to the service s: an expired
// order_pay:<id> expires the order if it is still pending, an expired
// order_confirm:<id> completes it if it is still shipped. Events that arrive
// together are applied in batches, one transaction per batch. A key with a
// malformed id gets an error wrapping expiry.ErrMalformedKey (the listener
// counts it and logs it, bounded).
func Register(mux *expiry.ServeMux, s *order.Service, cfg BatchConfig) {
	mux.Handle(order.PayKeyPrefix, batchHandler(order.PayKeyPrefix, newBatcher(cfg, s.ExpireOrders)))
	mux.Handle(order.ConfirmKeyPrefix, batchHandler(order.ConfirmKeyPrefix, newBatcher(cfg, s.CompleteOrders)))
}

func batchHandler(prefix string, b *batcher) expiry.Handler {
	return expiry.HandlerFunc(func(ctx context.Context, ev expiry.Event) error {
		id, err := ParseKeyID(ev.Key, prefix)
		if err != nil {
			return err
		}
		return b.do(ctx, id)
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
	apply   func(ctx context.Context, ids []int64, source string) (int, error)
	onBatch func(size int)

	mu  sync.Mutex
	cur *batch
}

type batch struct {
	ids  []int64
	full chan struct{}
	done chan struct{}
	err  error
}

func newBatcher(cfg BatchConfig, apply func(context.Context, []int64, string) (int, error)) *batcher {
	if cfg.Max <= 0 {
		cfg.Max = 500
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 2 * time.Millisecond
	}
	return &batcher{max: cfg.Max, wait: cfg.Wait, apply: apply, onBatch: cfg.OnBatch}
}

// errBatchAborted is what the members of a batch get when its leader did not
// apply it (its apply panicked, or its context ended first). It is worth
// retrying: the next attempt joins or leads another batch.
var errBatchAborted = errors.New("order: batch not applied")

func (b *batcher) do(ctx context.Context, id int64) error {
	b.mu.Lock()
	bt, leader := b.cur, false
	if bt == nil {
		bt = &batch{full: make(chan struct{}), done: make(chan struct{}), err: errBatchAborted}
		b.cur, leader = bt, true
	}
	bt.ids = append(bt.ids, id)
	if len(bt.ids) >= b.max {
		b.cur = nil
		close(bt.full)
	}
	b.mu.Unlock()

	if !leader {
		select {
		case <-bt.done:
			return bt.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.lead(ctx, bt)
}

// lead waits for bt to fill, applies it and tells its members the outcome.
// The members are released whatever happens: bt.done is closed even when
// apply panics (they see errBatchAborted, the panic goes on up).
func (b *batcher) lead(ctx context.Context, bt *batch) error {
	defer close(bt.done)
	t := time.NewTimer(b.wait)
	select {
	case <-bt.full:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	b.mu.Lock()
	if b.cur == bt {
		b.cur = nil
	}
	ids := bt.ids
	b.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.onBatch != nil {
		b.onBatch(len(ids))
	}
	_, err := b.apply(ctx, ids, "event")
	bt.err = err
	return err
}
