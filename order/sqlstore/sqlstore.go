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
	"net/url"
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
	db        *sqlx.DB
	dialect   string // "mysql" or "sqlite"
	txOptions *sql.TxOptions
	outbox    bool // record every transition in transitions_outbox
	// skipLocked: the server has SELECT … FOR UPDATE SKIP LOCKED
	// (MariaDB 10.6+, MySQL 8).
	skipLocked bool
	server     string  // VERSION(), on MySQL/MariaDB
	creates    creates // orders waiting for a creation of their SKU (create.go)
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
}

var _ order.Store = (*Store)(nil)

// ParseURL turns a database URL into a driver name and its DSN:
// "sqlite:PATH" or "mysql://user:pass@host:port/dbname[?param=value…]".
func ParseURL(raw string) (driver, dsn string, err error) {
	switch {
	case strings.HasPrefix(raw, "sqlite:"):
		path := strings.TrimPrefix(raw, "sqlite:")
		path = strings.TrimPrefix(path, "//")
		if path == "" {
			return "", "", errors.New("sqlite URL needs a path, as in sqlite:orderd.db")
		}
		// One connection: SQLite writes one at a time anyway, and a single
		// connection never meets SQLITE_BUSY. WAL keeps readers of other
		// processes out of the writer's way.
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Set("_txlock", "immediate")
		return "sqlite", "file:" + path + "?" + q.Encode(), nil
	case strings.HasPrefix(raw, "mysql://"):
		u, err := url.Parse(raw)
		if err != nil {
			return "", "", fmt.Errorf("bad mysql URL: %v", err)
		}
		cfg := mysql.NewConfig()
		cfg.Net = "tcp"
		cfg.Addr = u.Host
		if u.Port() == "" {
			cfg.Addr = u.Host + ":3306"
		}
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
		cfg.DBName = strings.TrimPrefix(u.Path, "/")
		if u.Hostname() == "" || cfg.DBName == "" || strings.Contains(cfg.DBName, "/") {
			return "", "", errors.New("mysql URL needs a host and a database name, as in mysql://user:pass@127.0.0.1:3306/orderd")
		}
		cfg.InterpolateParams = true
		for k, v := range u.Query() {
			if cfg.Params == nil {
				cfg.Params = map[string]string{}
			}
			cfg.Params[k] = v[len(v)-1]
		}
		return "mysql", cfg.FormatDSN(), nil
	default:
		return "", "", fmt.Errorf("unsupported database URL %q: use sqlite:PATH or mysql://user:pass@host:port/dbname", raw)
	}
}

// Open connects to the database at raw (see ParseURL) and checks that it
// answers. It does not change the schema: call Migrate for that.
func Open(ctx context.Context, raw string) (*Store, error) {
	return OpenWith(ctx, raw, Options{})
}

// OpenWith is Open with opts applied to every session (on MySQL/MariaDB;
// SQLite has one writer and no sessions to bound).
func OpenWith(ctx context.Context, raw string, opts Options) (*Store, error) {
	driver, dsn, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	st, err := open(ctx, driver, dsn)
	if err != nil || driver != "mysql" || opts == (Options{}) {
		return st, err
	}
	// The session settings go into the DSN: the driver sets them on every
	// connection it opens. Some exist on MariaDB only.
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		st.Close()
		return nil, err
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	secs := func(d time.Duration) string { return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10) }
	mariadb := strings.Contains(st.server, "MariaDB")
	if opts.TxIdleTimeout > 0 && mariadb {
		cfg.Params["idle_transaction_timeout"] = secs(opts.TxIdleTimeout)
	}
	if opts.StatementTimeout > 0 && mariadb {
		cfg.Params["max_statement_time"] = strconv.FormatFloat(opts.StatementTimeout.Seconds(), 'f', 3, 64)
	}
	if opts.LockWait > 0 {
		cfg.Params["innodb_lock_wait_timeout"] = secs(opts.LockWait)
	}
	st.Close()
	return open(ctx, driver, cfg.FormatDSN())
}

func open(ctx context.Context, driver, dsn string) (*Store, error) {
	db, err := sqlx.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	if driver == "sqlite" {
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
	st := &Store{db: db, dialect: driver}
	if driver == "mysql" {
		// READ COMMITTED: no gap locks, so concurrent batches and new orders
		// do not block each other on index ranges. (Set per transaction: the
		// session variable's name differs between MySQL and MariaDB.)
		st.txOptions = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
		if err := db.GetContext(ctx, &st.server, `SELECT VERSION()`); err != nil {
			db.Close()
			return nil, fmt.Errorf("sqlstore: read the server's version: %w", err)
		}
		st.skipLocked = hasSkipLocked(st.server)
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

// tx runs fn in a transaction, trying again when MySQL reports a deadlock or a
// lock wait timeout (the transaction was rolled back and may simply be redone).
func (s *Store) tx(ctx context.Context, fn func(*sqlx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		tx, err := s.db.BeginTxx(ctx, s.txOptions)
		if err != nil {
			return err
		}
		err = fn(tx)
		if err == nil {
			err = tx.Commit()
		} else {
			_ = tx.Rollback()
		}
		if attempt < sqlretry.MaxAttempts && sqlretry.Transient(err) {
			time.Sleep(sqlretry.Backoff(attempt + 1))
			continue
		}
		return err
	}
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
