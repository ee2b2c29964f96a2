// Package sqlretry runs again the database transactions that failed in a
// way that running them again fixes: a deadlock or lock wait timeout (the
// server rolled the transaction back), a Galera certification conflict
// (reported as a deadlock, at COMMIT), and a connection lost (a node
// stopped) before the commit, or at it for a transaction that may run twice.
package sqlretry

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MaxAttempts is how many times a transaction is run before its error is
// returned.
const MaxAttempts = 10

// The reasons a transaction is run again: the values of the reason label
// of orderd_db_retries_total.
const (
	// Deadlock: MySQL/MariaDB error 1213, a deadlock between two
	// transactions on one server or, on a Galera cluster, a conflict with a
	// transaction committed on another node (found at certification).
	Deadlock = "deadlock"
	// LockWait: error 1205, a row lock waited for longer than
	// innodb_lock_wait_timeout.
	LockWait = "lock_wait"
	// Connection: the connection was lost, or the node it reached cannot
	// take work (a Galera node out of its cluster: error 1047).
	Connection = "connection"
)

// Reason returns why a transaction that failed with err may simply be run
// again (Deadlock, LockWait, Connection), or "" when it may not. A lost
// connection at the commit (an error wrapped by Commit) leaves unknown
// whether the transaction was committed: it is a reason only for an
// idempotent transaction, one that running twice does no harm.
func Reason(err error, idempotent bool) string {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1213:
			return Deadlock
		case 1205:
			return LockWait
		case 1047, 1927: // WSREP not ready (a node out of its cluster); connection killed
			if idempotent || !isCommit(err) {
				return Connection
			}
		}
		return ""
	}
	if lostConnection(err) && (idempotent || !isCommit(err)) {
		return Connection
	}
	return ""
}

func lostConnection(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false // the caller's, not the connection's
	}
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ne)
}

// commitError marks an error returned by COMMIT.
type commitError struct{ err error }

func (e commitError) Error() string { return e.err.Error() }
func (e commitError) Unwrap() error { return e.err }

// Commit returns err (from a transaction's Commit) marked as an error of
// the commit, for Reason; nil stays nil.
func Commit(err error) error {
	if err == nil {
		return nil
	}
	return commitError{err}
}

func isCommit(err error) bool {
	var ce commitError
	return errors.As(err, &ce)
}

// Backoff is the pause before attempt (2, 3, …) of a transaction: 5 ms
// doubling up to 400 ms, each drawn between half and all of it so that
// transactions that conflicted do not meet again.
func Backoff(attempt int) time.Duration {
	d := 5 * time.Millisecond << min(max(attempt-2, 0), 6)
	return d/2 + rand.N(d/2+1)
}

// Policy is how a process runs its transactions again.
type Policy struct {
	// OnRetry, if set, is called with the reason of every retry.
	OnRetry func(reason string)
}

// Do runs attempt until it returns nil, an error with no Reason, or
// MaxAttempts times, pausing Backoff between; it returns the last error.
// idempotent is attempt's: whether running it again after a commit whose
// outcome is unknown does no harm.
func (p Policy) Do(ctx context.Context, idempotent bool, attempt func(context.Context) error) error {
	for n := 1; ; n++ {
		err := attempt(ctx)
		reason := ""
		if err != nil && n < MaxAttempts {
			reason = Reason(err, idempotent)
		}
		if reason == "" {
			return err
		}
		if p.OnRetry != nil {
			p.OnRetry(reason)
		}
		t := time.NewTimer(Backoff(n + 1))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
