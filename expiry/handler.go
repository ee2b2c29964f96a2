package expiry

import (
	"context"
	"errors"
	"fmt"
)

// A Handler reacts to one expired key. Handlers must be idempotent: every
// listener replica receives every event, and the same key may be reported by
// an event and by a sweep.
type Handler interface {
	HandleExpired(ctx context.Context, ev Event) error
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(ctx context.Context, ev Event) error

// HandleExpired calls f(ctx, ev).
func (f HandlerFunc) HandleExpired(ctx context.Context, ev Event) error { return f(ctx, ev) }

// Middleware wraps a Handler with behaviour of its own.
type Middleware func(Handler) Handler

// ErrHandlerNotFound is wrapped by the error ServeMux returns for a key that no
// pattern matches.
var ErrHandlerNotFound = errors.New("expiry: no handler for key")

// SkipRetry tells the Retry middleware not to try again. Wrap it:
//
//	return fmt.Errorf("order %d: %w", id, expiry.SkipRetry)
var SkipRetry = errors.New("expiry: skip retry")

// ErrGiveUp, wrapped by a handler's error, says that the handler's own
// bound on attempts is reached: with a Scheduler, the timer goes to the dead
// set now rather than after MaxAttempts. It wraps SkipRetry.
var ErrGiveUp = fmt.Errorf("expiry: give up: %w", SkipRetry)

// ErrMalformedKey is wrapped by the error a handler returns for a key it
// cannot parse (a malformed id, say). Such a key never gets better: it wraps
// SkipRetry, and the Listener counts it in Stats.Malformed and logs a bounded
// prefix of it at most once a second.
var ErrMalformedKey = fmt.Errorf("expiry: malformed key: %w", SkipRetry)

// ErrNoRecord is wrapped by the error a handler returns for a well-formed
// key whose record does not exist (a timer set for an order id that no order
// has). It wraps SkipRetry; the Listener counts it in Stats.NoRecord, not as
// handled, and logs a bounded prefix of such a key at most once a second.
var ErrNoRecord = fmt.Errorf("expiry: no record for the key: %w", SkipRetry)
