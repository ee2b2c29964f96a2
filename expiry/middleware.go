package expiry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"time"
)

// ErrPanic is wrapped by the error Recover returns for a handler that panicked.
var ErrPanic = errors.New("expiry: handler panicked")

// Recover turns a panic in the next handler into an error wrapping ErrPanic,
// so one bad key never takes the listener down. The panic value and the stack
// are logged to logger (if non-nil), not returned.
func Recover(logger *slog.Logger) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, ev Event) (err error) {
			defer func() {
				if v := recover(); v != nil {
					if logger != nil {
						buf := make([]byte, 8<<10)
						buf = buf[:runtime.Stack(buf, false)]
						logger.Error("handler panicked", KeyAttr(ev.Key), "panic", v, "stack", string(buf))
					}
					err = fmt.Errorf("%w: %v", ErrPanic, v)
				}
			}()
			return next.HandleExpired(ctx, ev)
		})
	}
}

// Timeout gives each call of the next handler a context that ends after d.
func Timeout(d time.Duration) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, ev Event) error {
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			return next.HandleExpired(ctx, ev)
		})
	}
}

// RetryPolicy says how often and how patiently Retry tries again.
type RetryPolicy struct {
	// Attempts is the number of calls in all, the first included.
	// If zero, 5 is used.
	Attempts int
	// Base is the wait before the second attempt; each later wait doubles,
	// with up to 50 % random jitter added. If zero, 50 ms is used.
	Base time.Duration
	// Max caps a single wait. If zero, 5 s is used.
	Max time.Duration
}

// Retry calls the next handler again, with exponential backoff, while it
// returns an error. It stops at once on success, on an error wrapping
// SkipRetry or ErrHandlerNotFound, and when ctx ends; it returns the last error.
func Retry(p RetryPolicy) Middleware {
	if p.Attempts <= 0 {
		p.Attempts = 5
	}
	if p.Base <= 0 {
		p.Base = 50 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, ev Event) error {
			wait := p.Base
			for attempt := 1; ; attempt++ {
				err := next.HandleExpired(ctx, ev)
				if err == nil || attempt >= p.Attempts ||
					errors.Is(err, SkipRetry) || errors.Is(err, ErrHandlerNotFound) {
					return err
				}
				d := wait + rand.N(wait/2+1)
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return errors.Join(err, ctx.Err())
				case <-t.C:
				}
				wait = min(wait*2, p.Max)
			}
		})
	}
}

// Logging logs every handled event at debug level and every failure at error
// level, with the key and the duration.
func Logging(logger *slog.Logger) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, ev Event) error {
			start := time.Now()
			err := next.HandleExpired(ctx, ev)
			switch {
			case err == nil:
				logger.Debug("expired key handled", KeyAttr(ev.Key), "took", time.Since(start))
			case errors.Is(err, ErrHandlerNotFound):
				logger.Debug("expired key ignored: no handler", KeyAttr(ev.Key))
			default:
				logger.Error("expired key failed", KeyAttr(ev.Key), "took", time.Since(start), "error", err)
			}
			return err
		})
	}
}
