// Package sqlretry tells which database errors end a transaction that may
// simply be run again.
package sqlretry

import (
	"errors"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MaxAttempts is how many times a transaction is run before its transient
// error is returned.
const MaxAttempts = 10

// Transient reports whether err is a MySQL/MariaDB deadlock (1213) or lock
// wait timeout (1205): the server rolled the transaction back, and running it
// again may well succeed.
func Transient(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205)
}

// Backoff is the pause before attempt (2, 3, …) of a transaction.
func Backoff(attempt int) time.Duration {
	return time.Duration(attempt-1) * 5 * time.Millisecond
}
