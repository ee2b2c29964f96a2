package sqlretry

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func TestReason(t *testing.T) {
	my := func(n uint16) error { return fmt.Errorf("move: %w", &mysql.MySQLError{Number: n}) }
	tests := []struct {
		name       string
		err        error
		idempotent bool
		want       string
	}{
		{"deadlock in a statement", my(1213), false, Deadlock},
		{"certification conflict at the commit", Commit(my(1213)), false, Deadlock},
		{"lock wait timeout", my(1205), false, LockWait},
		{"node out of its cluster", my(1047), false, Connection},
		{"node out of its cluster at the commit", Commit(my(1047)), false, ""},
		{"a duplicate key", my(1062), true, ""},
		{"connection lost in a statement", fmt.Errorf("x: %w", mysql.ErrInvalidConn), false, Connection},
		{"bad connection", driver.ErrBadConn, false, Connection},
		{"connection lost at the commit", Commit(mysql.ErrInvalidConn), false, ""},
		{"connection lost at an idempotent commit", Commit(mysql.ErrInvalidConn), true, Connection},
		{"the caller's deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), true, ""},
		{"the caller gave up", context.Canceled, true, ""},
		{"anything else", errors.New("no"), true, ""},
		{"no error", nil, true, ""},
	}
	for _, tt := range tests {
		if got := Reason(tt.err, tt.idempotent); got != tt.want {
			t.Errorf("%s: Reason = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestDoRunsAgainThenGivesUp(t *testing.T) {
	var reasons []string
	p := Policy{OnRetry: func(r string) { reasons = append(reasons, r) }}
	runs := 0
	err := p.Do(context.Background(), false, func(context.Context) error {
		runs++
		if runs < 3 {
			return &mysql.MySQLError{Number: 1213}
		}
		return nil
	})
	if err != nil || runs != 3 || len(reasons) != 2 || reasons[0] != Deadlock {
		t.Fatalf("err %v after %d runs, retries %v; want success on the third run after 2 deadlocks", err, runs, reasons)
	}
	runs = 0
	err = p.Do(context.Background(), false, func(context.Context) error { runs++; return &mysql.MySQLError{Number: 1205} })
	if runs != MaxAttempts || Reason(err, false) != LockWait {
		t.Fatalf("%d runs, err %v; want %d runs and the last error", runs, err, MaxAttempts)
	}
	runs = 0
	err = p.Do(context.Background(), false, func(context.Context) error { runs++; return Commit(mysql.ErrInvalidConn) })
	if runs != 1 || !errors.Is(err, mysql.ErrInvalidConn) {
		t.Fatalf("%d runs, err %v; want a commit of unknown outcome returned at once", runs, err)
	}
}

func TestBackoff(t *testing.T) {
	for attempt := 2; attempt <= MaxAttempts+5; attempt++ {
		full := 5 * time.Millisecond << min(attempt-2, 6)
		for range 50 {
			if d := Backoff(attempt); d < full/2 || d > full {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", attempt, d, full/2, full)
			}
		}
	}
}
