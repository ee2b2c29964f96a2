package daemon

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/orderd/orderd/internal/testkit"
)

// When the leader's apply panics, every member of its batch is released (with
// an error worth retrying) instead of waiting forever.
func TestBatcherReleasesMembersWhenApplyPanics(t *testing.T) {
	entered := make(chan struct{})
	b := newBatcher(BatchConfig{Max: 100, Wait: 50 * time.Millisecond}, func(context.Context, []string, string) (Applied, error) {
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
			errs <- b.do(context.Background(), strconv.Itoa(i+1))
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
	b := newBatcher(BatchConfig{Max: 2, Wait: time.Hour}, func(context.Context, []string, string) (Applied, error) {
		close(entered)
		<-release
		return Applied{}, nil
	})
	var wg sync.WaitGroup
	wg.Go(func() { b.do(context.Background(), "1") }) // the leader, stuck in apply
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
	go func() { errc <- b.do(ctx, "2") }() // fills the batch
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

// While every slot is busy committing, members keep joining the next batch:
// under load batches grow rather than multiply (group commit).
func TestBatcherFillsWhileSlotsAreBusy(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var sizes []int
	b := newBatcher(BatchConfig{Max: 500, Wait: time.Millisecond, MaxWait: 2 * time.Millisecond, Concurrency: 1},
		func(_ context.Context, ids []string, _ string) (Applied, error) {
			mu.Lock()
			sizes = append(sizes, len(ids))
			first := len(sizes) == 1
			mu.Unlock()
			if first {
				<-release // the one slot stays busy
			}
			return Applied{Moved: len(ids)}, nil
		})
	var wg sync.WaitGroup
	wg.Go(func() { b.do(context.Background(), "1") })
	waitFor := func(what string, cond func() bool) { t.Helper(); testkit.WaitFor(t, 10*time.Second, what, cond) }
	waitFor("the first batch applying", func() bool { mu.Lock(); defer mu.Unlock(); return len(sizes) == 1 })
	const more = 300 // far past Wait and MaxWait apart, all waiting for the slot
	for i := range more {
		wg.Go(func() { b.do(context.Background(), strconv.Itoa(i+2)) })
	}
	waitFor("the waiting batch to hold them all", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.cur != nil && len(b.cur.ids) == more
	})
	close(release)
	wg.Wait()
	if len(sizes) != 2 || sizes[1] != more {
		t.Fatalf("batches %v, want [1 %d]", sizes, more)
	}
}

// BenchmarkBatcher is the cost of one member's way through a batch, with
// members arriving from many goroutines and an apply that does nothing.
func BenchmarkBatcher(b *testing.B) {
	bt := newBatcher(BatchConfig{Max: 500, Wait: 100 * time.Microsecond}, func(_ context.Context, ids []string, _ string) (Applied, error) {
		return Applied{Moved: len(ids)}, nil
	})
	b.SetParallelism(64)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var id int64
		for pb.Next() {
			id++
			if err := bt.do(context.Background(), strconv.FormatInt(id, 10)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
