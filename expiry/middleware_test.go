package expiry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
)

var ev1 = expiry.Event{Key: "k:1", RawKey: "k:1"}

func TestRecover(t *testing.T) {
	logs := &logRecorder{Min: slog.LevelError}
	h := expiry.Recover(slog.New(logs))(expiry.HandlerFunc(func(context.Context, expiry.Event) error {
		var m map[string]int
		m["boom"] = 1 // nil map write panics
		return nil
	}))
	err := h.HandleExpired(context.Background(), ev1)
	if !errors.Is(err, expiry.ErrPanic) {
		t.Fatalf("err = %v, want ErrPanic", err)
	}
	if all := logs.records(""); len(all) != 1 || all[0].Attrs["key"] != "k:1" {
		t.Fatalf("want one error log with the key, got %v", all)
	}
}

func TestTimeout(t *testing.T) {
	h := expiry.Timeout(20 * time.Millisecond)(expiry.HandlerFunc(func(ctx context.Context, _ expiry.Event) error {
		<-ctx.Done()
		return ctx.Err()
	}))
	if err := h.HandleExpired(context.Background(), ev1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}

func TestRetry(t *testing.T) {
	policy := expiry.RetryPolicy{Attempts: 4, Base: time.Millisecond, Max: 2 * time.Millisecond}
	errFlaky := errors.New("flaky")
	tests := []struct {
		name      string
		failUntil int   // calls before success
		err       error // error returned while failing
		wantCalls int
		wantErr   error
	}{
		{"succeeds first time", 0, errFlaky, 1, nil},
		{"succeeds on third", 2, errFlaky, 3, nil},
		{"gives up", 100, errFlaky, 4, errFlaky},
		{"skip retry", 100, fmt.Errorf("bad id: %w", expiry.SkipRetry), 1, expiry.SkipRetry},
		{"no handler", 100, expiry.ErrHandlerNotFound, 1, expiry.ErrHandlerNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			h := expiry.Retry(policy)(expiry.HandlerFunc(func(context.Context, expiry.Event) error {
				calls++
				if calls <= tt.failUntil {
					return tt.err
				}
				return nil
			}))
			err := h.HandleExpired(context.Background(), ev1)
			if calls != tt.wantCalls || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("calls %d err %v, want %d calls err %v", calls, err, tt.wantCalls, tt.wantErr)
			}
		})
	}
}

func TestRetryStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	h := expiry.Retry(expiry.RetryPolicy{Attempts: 100, Base: time.Hour})(expiry.HandlerFunc(func(context.Context, expiry.Event) error {
		calls++
		cancel()
		return errors.New("down")
	}))
	if err := h.HandleExpired(ctx, ev1); !errors.Is(err, context.Canceled) || calls != 1 {
		t.Fatalf("calls %d err %v, want 1 call and context.Canceled", calls, err)
	}
}

func TestLogging(t *testing.T) {
	logs := &logRecorder{Min: slog.LevelDebug}
	boom := errors.New("boom")
	h := expiry.Logging(slog.New(logs))(expiry.HandlerFunc(func(_ context.Context, ev expiry.Event) error {
		if ev.Key == "bad" {
			return boom
		}
		return nil
	}))
	_ = h.HandleExpired(context.Background(), ev1)
	if err := h.HandleExpired(context.Background(), expiry.Event{Key: "bad"}); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the handler's error", err)
	}
	all := logs.records("")
	if len(all) != 2 || all[0].Level != slog.LevelDebug || all[1].Level != slog.LevelError ||
		all[1].Attrs["key"] != "bad" || fmt.Sprint(all[1].Attrs["error"]) != "boom" {
		t.Fatalf("unexpected logs: %+v", all)
	}
}
