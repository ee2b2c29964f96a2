// Package sqlstore keeps orders and SKUs in MySQL/MariaDB (through sqlx and
// go-sql-driver/mysql) or in an embedded SQLite file (pure Go, no cgo). The
// schema comes from versioned SQL files embedded in the binary.
package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"
	"github.com/pressly/goose/v3"
	"modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/orderd/orderd/internal/sqlretry"
	"github.com/orderd/orderd/order"
)

//go:embed migrations
var migrations embed.FS

// Store is an order.Store on a SQL database.
type Store struct {
	db      *sqlx.DB
	dialect string // "mysql" or "sqlite"
	outbox  bool   // record every transition in transitions_outbox
	// skipLocked: the server has SELECT … FOR UPDATE SKIP LOCKED
	// (MariaDB 10.6+, MySQL 8).
	skipLocked bool
	server     string  // VERSION(), on MySQL/MariaDB
	creates    creates // orders waiting for a creation of their SKU (create.go)
	retry      sqlretry.Policy
	galera     bool // the server is a node of a Galera cluster (wsrep_on)
}

// Options tune a Store to the process that opens it.
type Options struct {
	// TxIdleTimeout, on MariaDB, makes the server roll back a session's
	// transaction (freeing its row locks) once the session has sat idle
	// inside it this long (idle_transaction_timeout): a process frozen in
	// the middle of a transaction (a GC pause, a VM freeze, SIGSTOP) then
	// stalls the others for this long, not for as long as it is frozen.
	// Rounded up to whole seconds. If zero, the server's setting stands.
	TxIdleTimeout time.Duration
	// LockWait bounds each wait for a row lock (innodb_lock_wait_timeout):
	// a batch that waited this long is rolled back and tried again. Rounded
	// up to whole seconds. If zero, the server's setting (50 s) stands.
	LockWait time.Duration
	// StatementTimeout, on MariaDB, aborts a statement running longer
	// (max_statement_time). If zero, none.
	StatementTimeout time.Duration
	// OnRetry, if set, is called with the reason (sqlretry's Deadlock,
	// LockWait, Connection) each time a transaction is run again.
	OnRetry func(reason string)
}

var _ order.Store = (*Store)(nil)

// Open connects to the database at raw (see ParseURL) and checks that it
// answers. It does not change the schema: call Migrate for that.
func Open(ctx context.Context, raw string) (*Store, error) {
	return OpenWith(ctx, raw, Options{})
}

// OpenWith is Open with opts applied to every session (on MySQL/MariaDB;
// SQLite has one writer and no sessions to bound).
func OpenWith(ctx context.Context, raw string, opts Options) (*Store, error) {
	u, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	st, err := open(ctx, u)
	if err != nil {
		return nil, err
	}
	st.retry.OnRetry = opts.OnRetry
	if u.Driver != "mysql" {
		return st, nil
	}
	// The session settings go into the connections' parameters: the driver
	// sets them on every connection it opens. Some exist on MariaDB only.
	params := map[string]string{}
	secs := func(d time.Duration) string { return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10) }
	mariadb := strings.Contains(st.server, "MariaDB")
	if opts.TxIdleTimeout > 0 && mariadb {
		params["idle_transaction_timeout"] = secs(opts.TxIdleTimeout)
	}
	if opts.StatementTimeout > 0 && mariadb {
		params["max_statement_time"] = strconv.FormatFloat(opts.StatementTimeout.Seconds(), 'f', 3, 64)
	}
	if opts.LockWait > 0 {
		params["innodb_lock_wait_timeout"] = secs(opts.LockWait)
	}
	// READ COMMITTED: no gap locks, so concurrent batches and new orders do
	// not block each other on index ranges. Set for the session, not per
	// transaction: the driver's BeginTx with an isolation level costs a
	// round trip more for every transaction. The variable's name differs:
	// MariaDB has tx_isolation (transaction_isolation from 11.1 on too),
	// MySQL transaction_isolation; the first connection above told which.
	isolation := "transaction_isolation"
	if mariadb {
		isolation = "tx_isolation"
	}
	params[isolation] = "'READ-COMMITTED'"
	st.Close()
	if st, err = open(ctx, u.withParams(params)); err != nil {
		return nil, err
	}
	st.retry.OnRetry = opts.OnRetry
	return st, nil
}

func open(ctx context.Context, u URL) (*Store, error) {
	sdb, err := u.OpenDB()
	if err != nil {
		return nil, err
	}
	db := sqlx.NewDb(sdb, u.Driver)
	if u.Driver == "sqlite" {
		db.SetMaxOpenConns(1)
	} else {
		db.SetMaxOpenConns(64)
		db.SetMaxIdleConns(64)
		db.SetConnMaxLifetime(time.Hour)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlstore: connect: %w", err)
	}
	st := &Store{db: db, dialect: u.Driver}
	if u.Driver == "mysql" {
		if err := db.GetContext(ctx, &st.server, `SELECT VERSION()`); err != nil {
			db.Close()
			return nil, fmt.Errorf("sqlstore: read the server's version: %w", err)
		}
		st.skipLocked = hasSkipLocked(st.server)
		var wsrep sql.NullInt64
		if strings.Contains(st.server, "MariaDB") && db.GetContext(ctx, &wsrep, `SELECT @@wsrep_on`) == nil {
			st.galera = wsrep.Int64 == 1
		}
	}
	return st, nil
}

// hasSkipLocked reports whether a server of VERSION() v has SELECT … FOR
// UPDATE SKIP LOCKED: MariaDB from 10.6, MySQL from 8.0.1.
func hasSkipLocked(v string) bool {
	var major, minor, patch int
	if _, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch); err != nil {
		return false
	}
	if strings.Contains(v, "MariaDB") {
		return major > 10 || (major == 10 && minor >= 6)
	}
	return major > 8 || (major == 8 && (minor > 0 || patch >= 1))
}

// SkipsLocked reports whether the batches of Expire and Complete skip the
// rows another transaction holds locked, rather than wait for them.
func (s *Store) SkipsLocked() bool { return s.skipLocked }

// IsConfigError reports whether err (from Open) is one that no retry can
// fix, because the settings are wrong: credentials the server refuses, a
// database that does not exist or may not be used, an SQLite file that cannot
// be opened. A server that does not answer is not one.
func IsConfigError(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1044, 1045, 1049, 1698: // access denied to the database, bad credentials, unknown database, no password for root
			return true
		}
	}
	var le *sqlite.Error
	if errors.As(err, &le) {
		switch le.Code() & 0xff {
		case 14, 23, 26: // SQLITE_CANTOPEN, SQLITE_AUTH, SQLITE_NOTADB
			return true
		}
	}
	return false
}

// DB returns the underlying handle.
func (s *Store) DB() *sqlx.DB { return s.db }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

func (s *Store) provider() (*goose.Provider, error) {
	dialect, dir := goose.DialectMySQL, "migrations/mysql"
	if s.dialect == "sqlite" {
		dialect, dir = goose.DialectSQLite3, "migrations/sqlite"
	}
	sub, err := fs.Sub(migrations, dir)
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(dialect, s.db.DB, sub)
}

// Migrate creates or upgrades the schema. It is idempotent and returns the
// versions it applied.
func (s *Store) Migrate(ctx context.Context) ([]int64, error) {
	p, err := s.provider()
	if err != nil {
		return nil, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: migrate: %w", err)
	}
	var applied []int64
	for _, r := range res {
		applied = append(applied, r.Source.Version)
	}
	return applied, nil
}

// SchemaVersion returns the version of the last migration applied (0 for an
// empty database) and the latest this binary knows.
func (s *Store) SchemaVersion(ctx context.Context) (current, latest int64, err error) {
	p, err := s.provider()
	if err != nil {
		return 0, 0, err
	}
	if current, err = p.GetDBVersion(ctx); err != nil {
		return 0, 0, fmt.Errorf("sqlstore: read schema version: %w", err)
	}
	srcs := p.ListSources()
	if len(srcs) > 0 {
		latest = srcs[len(srcs)-1].Version
	}
	return current, latest, nil
}

// ErrSchemaOutdated is returned by CheckSchema when migrations are pending.
var ErrSchemaOutdated = errors.New("sqlstore: database schema is not up to date (run `orderd migrate`)")

// ErrSchemaNewer is returned by CheckSchema when the database was migrated
// past the last version this binary knows: its statements may no longer
// write what the newer schema expects (an older binary on a schema with the
// outbox, say, would make transitions that never reach the stream).
var ErrSchemaNewer = errors.New("this database was migrated by a newer orderd; upgrade this binary")

// CheckSchema returns ErrSchemaOutdated unless every migration is applied,
// and an error wrapping ErrSchemaNewer when the database is at a version
// this binary does not know.
func (s *Store) CheckSchema(ctx context.Context) error {
	current, latest, err := s.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	switch {
	case current > latest:
		return fmt.Errorf("%w (schema version %d, this binary knows up to %d)", ErrSchemaNewer, current, latest)
	case current < latest:
		return ErrSchemaOutdated
	}
	return nil
}

// WatchSchema checks the schema version every interval until ctx ends, and
// returns the error of CheckSchema once the database has moved past this
// binary (ErrSchemaNewer): a running process must then stop. Other
// failures (a database that does not answer for a while) are not its
// business; it returns nil when ctx ends.
func (s *Store) WatchSchema(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.CheckSchema(ctx); errors.Is(err, ErrSchemaNewer) {
			return err
		}
	}
}

// tx runs fn in a transaction, and runs it again (a new transaction) when
// it failed in a way that doing so fixes (sqlretry.Reason): a deadlock, a
// lock wait timeout, a Galera certification conflict, a connection lost
// before the commit, or at it when idempotent (running fn twice does no
// harm: a conditional move of what is due).
func (s *Store) tx(ctx context.Context, idempotent bool, fn func(*sqlx.Tx) error) error {
	return s.retry.Do(ctx, idempotent, func(ctx context.Context) error {
		tx, err := s.db.BeginTxx(ctx, nil)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			_ = tx.Rollback()
			return err
		}
		return sqlretry.Commit(tx.Commit())
	})
}

// exec runs one statement on its own (autocommit), and again on a deadlock
// or lock wait timeout (it was rolled back). A connection lost during it
// leaves unknown whether it ran, as at a commit: it runs again then only
// when idempotent.
func (s *Store) exec(ctx context.Context, idempotent bool, q string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := s.retry.Do(ctx, idempotent, func(ctx context.Context) error {
		var err error
		res, err = s.db.ExecContext(ctx, q, args...)
		return sqlretry.Commit(err)
	})
	return res, err
}

// execer is a function as a sqlx.ExecerContext.
type execer func(ctx context.Context, q string, args ...any) (sql.Result, error)

func (f execer) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return f(ctx, q, args...)
}

// dataError returns an invalid-request error when err is the database
// refusing a value (a string its column cannot hold, a number out of range):
// no retry can fix that, so it is the request's fault, not a 503. It returns
// nil for any other error.
func dataError(err error) error {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return nil
	}
	switch me.Number {
	case 1264, 1366, 1406, 1292, 3819, 4025: // out of range, incorrect string, too long, truncated, check constraint
		return order.Errorf(order.CodeInvalidRequest, "the database cannot store a value of this request (error %d)", me.Number)
	}
	return nil
}

func (s *Store) forUpdate() string {
	if s.dialect == "mysql" {
		return " FOR UPDATE"
	}
	return "" // SQLite: the immediate transaction already holds the write lock
}
