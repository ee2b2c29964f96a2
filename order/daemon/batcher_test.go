package daemon

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// When the leader's apply panics, every member of its batch is released (with
// an error worth retrying) instead of waiting forever.
func TestBatcherReleasesMembersWhenApplyPanics(t *testing.T) {
	entered := make(chan struct{})
	b := newBatcher(BatchConfig{Max: 100, Wait: 50 * time.Millisecond}, func(context.Context, []int64, string) (int, error) {
		close(entered)
		panic("apply failed")
	})
	const members = 20
	errs := make(chan error, members+1)
	var wg sync.WaitGroup
	for i := range members + 1 {
		wg.Go(func() {
			defer func() {
				if v := recover(); v != nil {
					errs <- errors.New("panicked")
				}
			}()
			errs <- b.do(context.Background(), int64(i+1))
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("members of a batch whose apply panicked are still waiting")
	}
	close(errs)
	var aborted, panicked int
	for err := range errs {
		switch {
		case errors.Is(err, errBatchAborted):
			aborted++
		case err != nil && err.Error() == "panicked":
			panicked++
		default:
			t.Fatalf("unexpected outcome %v", err)
		}
	}
	if panicked != 1 || aborted != members {
		t.Fatalf("%d leaders panicked and %d members were released, want 1 and %d", panicked, aborted, members)
	}
}

// A member waiting for a batch that does not finish returns when its own
// context ends.
func TestBatcherMemberWatchesContext(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	b := newBatcher(BatchConfig{Max: 2, Wait: time.Hour}, func(context.Context, []int64, string) (int, error) {
		close(entered)
		<-release
		return 0, nil
	})
	var wg sync.WaitGroup
	wg.Go(func() { b.do(context.Background(), 1) }) // the leader, stuck in apply
	defer func() { close(release); wg.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b.mu.Lock()
		led := b.cur != nil
		b.mu.Unlock()
		if led {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.do(ctx, 2) }() // fills the batch
	<-entered
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("member returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a member ignored its context")
	}
}
