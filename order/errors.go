package order

import (
	"context"
	"errors"
	"fmt"
)

// Error codes, as the HTTP API answers them (README.md lists them).
const (
	CodeInvalidRequest    = "invalid_request"
	CodeUnauthorized      = "unauthorized"
	CodeForbidden         = "forbidden"
	CodeNotFound          = "not_found"
	CodeSoldOut           = "sold_out"
	CodeLimitExceeded     = "limit_exceeded"
	CodeInvalidTransition = "invalid_transition"
	CodeUnavailable       = "unavailable"
	CodeMethodNotAllowed  = "method_not_allowed"
	CodeInternal          = "internal"
)

// Error is an error with a code that callers act on. Status is set for
// CodeInvalidTransition: the order's current status.
type Error struct {
	Code    string
	Message string
	Status  Status
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Is matches any *Error with the same code, so errors.Is(err, ErrSoldOut)
// holds for every sold-out error whatever its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels to test with errors.Is.
var (
	ErrNotFound          = &Error{Code: CodeNotFound, Message: "not found"}
	ErrSoldOut           = &Error{Code: CodeSoldOut, Message: "sold out"}
	ErrLimitExceeded     = &Error{Code: CodeLimitExceeded, Message: "limit per user exceeded"}
	ErrInvalidTransition = &Error{Code: CodeInvalidTransition, Message: "not allowed in this status"}
)

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// transitionError reports that action is not allowed for an order in status.
func transitionError(action string, o Order) *Error {
	return &Error{Code: CodeInvalidTransition, Status: o.Status,
		Message: fmt.Sprintf("cannot %s order %d: it is %s", action, o.ID, o.Status)}
}

// ErrorCode returns the code of err's *Error, or CodeInternal.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrBusy is wrapped by the error for an order a batch skipped because
// another transaction held it locked: worth trying again shortly.
var ErrBusy = errors.New("order: locked by another transaction")

// ErrFenced is wrapped by the error of a transaction rolled back because its
// fence (WithFence) said the caller may no longer do this work: a listener
// that paused past its leases, say.
var ErrFenced = errors.New("order: fenced: this process no longer holds the work")

type fenceKey struct{}

// WithFence returns a context whose deadline transitions (Store.Expire,
// Store.Complete) check fence just before they commit, and roll back with an
// error wrapping ErrFenced when it returns an error.
func WithFence(ctx context.Context, fence func() error) context.Context {
	return context.WithValue(ctx, fenceKey{}, fence)
}

// CheckFence runs the fence of ctx, if any.
func CheckFence(ctx context.Context) error {
	if f, ok := ctx.Value(fenceKey{}).(func() error); ok && f != nil {
		if err := f(); err != nil {
			return fmt.Errorf("%w: %v", ErrFenced, err)
		}
	}
	return nil
}
