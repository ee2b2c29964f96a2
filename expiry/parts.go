package expiry

import (
	"context"
	"sync"
	"time"
)

// The Listener is a set of parts, each with its own start and stop, composed
// by Run: the subscriber (subscriber.go) feeds the workers' queue; the hook
// runner runs OnSubscribe, OnDrop, OnInterval, the notify check and one
// reaper per shard of the due index.

// workers is the queue of events read but not yet handled and the pool of
// goroutines handling them. Its context outlives the listener's, so that
// queued and in-flight events finish after a stop, until the shutdown
// timeout cancels it.
type workers struct {
	queue  chan Event
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

func startWorkers(ctx context.Context, n, size int, handle func(context.Context, Event)) *workers {
	w := &workers{queue: make(chan Event, size)}
	ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for range n {
		w.wg.Go(func() {
			for ev := range w.queue {
				handle(ctx, ev)
			}
		})
	}
	return w
}

// shutdown takes no more events: the workers finish the queue and return.
// Only call it once nothing sends to the queue any more.
func (w *workers) shutdown() { close(w.queue) }

// abandon cancels the context of the events still being handled.
func (w *workers) abandon() { w.cancel() }

func (w *workers) wait() { w.wg.Wait() }

// hookRunner runs the listener's background work, each on a goroutine of its
// own, until the context given to start ends: a hook triggered again while it
// runs runs once more afterwards (triggers coalesce).
type hookRunner struct {
	wg sync.WaitGroup
}

// onTrigger runs f(ctx) each time trigger fires.
func (h *hookRunner) onTrigger(ctx context.Context, trigger <-chan struct{}, f func(context.Context)) {
	h.wg.Go(func() { onTrigger(ctx, trigger, func() { f(ctx) }) })
}

// every runs f(ctx) every d, and each time kick (which may be nil) fires.
func (h *hookRunner) every(ctx context.Context, d time.Duration, kick <-chan struct{}, f func(context.Context)) {
	h.wg.Go(func() { every(ctx, d, kick, func() { f(ctx) }) })
}

// run runs f(ctx) once, until it returns.
func (h *hookRunner) run(ctx context.Context, f func(context.Context)) {
	h.wg.Go(func() { f(ctx) })
}

func (h *hookRunner) wait() { h.wg.Wait() }

// every calls f every d, and whenever kick (which may be nil) is triggered,
// until ctx ends.
func every(ctx context.Context, d time.Duration, kick <-chan struct{}, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		f()
	}
}

// onTrigger calls f each time trigger fires, until ctx ends.
func onTrigger(ctx context.Context, trigger <-chan struct{}, f func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-trigger:
			f()
		}
	}
}
