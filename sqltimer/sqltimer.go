// Package sqltimer runs timers on an application's own tables: the SQL of a
// timer says which of a batch of expired ids are due and still to move
// (claim), what moving them is (apply), which ids are overdue without an
// event (sweep) and how long those not due yet have left (deadline). The
// database's own clock decides what is due (NOW() in the application's SQL);
// this package never compares a deadline with its host's clock.
//
// Statements bind two placeholders, outside quoted strings: :ids, a list
// expanded to "?, ?, …" (claim, apply, deadline), and :limit (sweep).
package sqltimer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/orderd/orderd/internal/sqlretry"
)

// IDKind says how a timer's ids are bound: as integers or as strings.
type IDKind int

const (
	IntIDs    IDKind = iota // the rest of the key is a decimal integer
	StringIDs               // the rest of the key is bound as it is
)

// Config is one timer's SQL.
type Config struct {
	// Name names the timer in errors and logs.
	Name string
	// IDs says how ids are bound.
	IDs IDKind
	// Claim returns, and locks (FOR UPDATE), the ids of :ids that are due
	// and still to move.
	Claim string
	// Apply are run in order, in the claim's transaction, with :ids bound to
	// the claimed ids.
	Apply []string
	// Sweep, if set, returns up to :limit overdue ids, oldest first.
	Sweep string
	// Deadline, if set, returns (id, seconds left) for those of :ids that
	// are not due yet.
	Deadline string
	// OnRetry, if set, is called with the reason (sqlretry's Deadlock,
	// LockWait, Connection) each time a batch is run again.
	OnRetry func(reason string)
}

// ErrMalformedID is wrapped by the error of an id that IDs cannot bind.
var ErrMalformedID = errors.New("sqltimer: malformed id")

// Timer runs one timer's SQL against a database.
type Timer struct {
	db       *sql.DB
	cfg      Config
	claim    statement
	apply    []statement
	sweep    statement
	deadline statement
}

// New compiles cfg's statements for db. It returns an error naming the
// timer and the statement for a placeholder other than those allowed, or a
// missing claim or apply.
func New(db *sql.DB, cfg Config) (*Timer, error) {
	t := &Timer{db: db, cfg: cfg}
	if strings.TrimSpace(cfg.Claim) == "" || len(cfg.Apply) == 0 {
		return nil, fmt.Errorf("timer %s: claim and apply are both needed", cfg.Name)
	}
	var err error
	if t.claim, err = compile(cfg.Claim, "ids"); err != nil {
		return nil, fmt.Errorf("timer %s: claim: %w", cfg.Name, err)
	}
	for i, a := range cfg.Apply {
		st, err := compile(a, "ids")
		if err != nil {
			return nil, fmt.Errorf("timer %s: apply[%d]: %w", cfg.Name, i, err)
		}
		t.apply = append(t.apply, st)
	}
	if t.sweep, err = compile(cfg.Sweep, "limit"); err != nil {
		return nil, fmt.Errorf("timer %s: sweep: %w", cfg.Name, err)
	}
	if t.deadline, err = compile(cfg.Deadline, "ids"); err != nil {
		return nil, fmt.Errorf("timer %s: deadline: %w", cfg.Name, err)
	}
	return t, nil
}

// NewSweep compiles only a sweep statement, for a timer whose records
// another party moves (a webhook): its Overdue works, its Apply does not.
func NewSweep(db *sql.DB, name, sweep string) (*Timer, error) {
	t := &Timer{db: db, cfg: Config{Name: name, Sweep: sweep}}
	var err error
	if t.sweep, err = compile(sweep, "limit"); err != nil {
		return nil, fmt.Errorf("timer %s: sweep: %w", name, err)
	}
	return t, nil
}

// Name returns the timer's name.
func (t *Timer) Name() string { return t.cfg.Name }

// Sweeps reports whether the timer has a sweep statement.
func (t *Timer) Sweeps() bool { return !t.sweep.empty() }

// ParseID returns id as bound: an int64 for IntIDs, the string itself for
// StringIDs. An id IDs cannot bind gets an error wrapping ErrMalformedID.
func (t *Timer) ParseID(id string) (any, error) {
	if t.cfg.IDs == StringIDs {
		if id == "" {
			return nil, fmt.Errorf("%w: empty", ErrMalformedID)
		}
		return id, nil
	}
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not an integer", ErrMalformedID, id)
	}
	return n, nil
}

// Check has the database prepare every statement, in a transaction it
// rolls back: a statement the database rejects (a syntax error, a table or
// a column it does not have) is an error naming the timer and the
// statement.
func (t *Timer) Check(ctx context.Context) error {
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("timer %s: %w", t.cfg.Name, err)
	}
	defer tx.Rollback()
	sample, _ := t.ParseID("1")
	for _, s := range t.statements() {
		if s.st.empty() {
			continue
		}
		q, _ := s.st.bind([]any{sample}, 1)
		p, err := tx.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("timer %s: %s: the database rejects it: %w", t.cfg.Name, s.what, err)
		}
		p.Close()
	}
	return nil
}

type namedStatement struct {
	what string
	st   statement
}

func (t *Timer) statements() []namedStatement {
	var out []namedStatement
	if !t.claim.empty() {
		out = append(out, namedStatement{"claim", t.claim})
	}
	for i, a := range t.apply {
		out = append(out, namedStatement{fmt.Sprintf("apply[%d]", i), a})
	}
	return append(out, namedStatement{"sweep", t.sweep}, namedStatement{"deadline", t.deadline})
}

// Outcome is what a batch did with its ids.
type Outcome struct {
	// Claimed are the ids the claim returned: moved, once the batch
	// committed.
	Claimed []string
	// NotDue are ids the claim left out that the deadline statement says
	// are not due yet, with the time they have left. The other ids left out
	// are done: moved already, or no longer to move.
	NotDue map[string]time.Duration
}

// Apply runs one batch of ids in one transaction: the claim, then each
// apply statement with the claimed ids, then the deadline statement for
// the rest. A deadlock (a Galera conflict included), a lock wait timeout or
// a lost connection runs the batch again (a few times, with a pause); any
// other error is returned, naming the timer and the statement, and nothing
// is committed.
func (t *Timer) Apply(ctx context.Context, ids []string) (Outcome, error) {
	if len(ids) == 0 {
		return Outcome{}, nil
	}
	if t.claim.empty() {
		return Outcome{}, fmt.Errorf("timer %s: no claim: a sweep only", t.cfg.Name)
	}
	b := batch{args: make([]any, len(ids)), given: make(map[string]int, len(ids))}
	for i, id := range ids {
		a, err := t.ParseID(id)
		if err != nil {
			return Outcome{}, fmt.Errorf("timer %s: %w", t.cfg.Name, err)
		}
		b.args[i] = a
		b.given[fmt.Sprint(a)] = i
	}
	// A batch is idempotent: run again after a commit that went through,
	// its claim finds nothing left to move.
	var out Outcome
	err := sqlretry.Policy{OnRetry: t.cfg.OnRetry}.Do(ctx, true, func(ctx context.Context) error {
		var err error
		out, err = t.applyOnce(ctx, b, ids)
		return err
	})
	if err != nil {
		return Outcome{}, err
	}
	return out, nil
}

// batch is a batch's ids as bound, and the index of each id as the
// database prints it.
type batch struct {
	args  []any
	given map[string]int
}

func (t *Timer) applyOnce(ctx context.Context, b batch, ids []string) (Outcome, error) {
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return Outcome{}, fmt.Errorf("timer %s: begin: %w", t.cfg.Name, err)
	}
	defer tx.Rollback()
	claimed, err := t.ids(ctx, tx, "claim", t.claim, b.args)
	if err != nil {
		return Outcome{}, err
	}
	var out Outcome
	var claimedArgs []any
	isClaimed := make([]bool, len(ids))
	for _, c := range claimed {
		i, ok := b.given[c]
		if !ok || isClaimed[i] {
			continue // not one of ours (a claim that returns more than asked), or twice
		}
		isClaimed[i] = true
		out.Claimed = append(out.Claimed, ids[i])
		claimedArgs = append(claimedArgs, b.args[i])
	}
	if len(claimedArgs) > 0 {
		for i, st := range t.apply {
			q, qa := st.bind(claimedArgs, 0)
			if _, err := tx.ExecContext(ctx, q, qa...); err != nil {
				return Outcome{}, fmt.Errorf("timer %s: apply[%d]: %w", t.cfg.Name, i, err)
			}
		}
	}
	if !t.deadline.empty() && len(out.Claimed) < len(ids) {
		var rest []any
		for i, a := range b.args {
			if !isClaimed[i] {
				rest = append(rest, a)
			}
		}
		if out.NotDue, err = t.timeLeft(ctx, tx, rest, b, ids); err != nil {
			return Outcome{}, err
		}
	}
	if err := tx.Commit(); err != nil {
		return Outcome{}, sqlretry.Commit(fmt.Errorf("timer %s: commit: %w", t.cfg.Name, err))
	}
	return out, nil
}

// ids runs a statement that returns ids in its first column.
func (t *Timer) ids(ctx context.Context, tx *sql.Tx, what string, st statement, args []any) ([]string, error) {
	q, qa := st.bind(args, 0)
	rows, err := tx.QueryContext(ctx, q, qa...)
	return t.scanIDs(rows, err, what)
}

// scanIDs reads the ids in the first column of rows (the result of a query
// that returned err), naming the statement in its errors.
func (t *Timer) scanIDs(rows *sql.Rows, err error, what string) ([]string, error) {
	if err != nil {
		return nil, fmt.Errorf("timer %s: %s: %w", t.cfg.Name, what, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id sql.NullString
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("timer %s: %s: %w", t.cfg.Name, what, err)
		}
		if id.Valid {
			out = append(out, id.String)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("timer %s: %s: %w", t.cfg.Name, what, err)
	}
	return out, nil
}

// timeLeft runs the deadline statement for args.
func (t *Timer) timeLeft(ctx context.Context, tx *sql.Tx, args []any, b batch, ids []string) (map[string]time.Duration, error) {
	q, qa := t.deadline.bind(args, 0)
	rows, err := tx.QueryContext(ctx, q, qa...)
	if err != nil {
		return nil, fmt.Errorf("timer %s: deadline: %w", t.cfg.Name, err)
	}
	defer rows.Close()
	out := map[string]time.Duration{}
	for rows.Next() {
		var id string
		var secs sql.NullFloat64
		if err := rows.Scan(&id, &secs); err != nil {
			return nil, fmt.Errorf("timer %s: deadline: want (id, seconds left): %w", t.cfg.Name, err)
		}
		i, ok := b.given[id]
		if !ok || !secs.Valid || secs.Float64 <= 0 {
			continue
		}
		out[ids[i]] = time.Duration(secs.Float64 * float64(time.Second))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("timer %s: deadline: %w", t.cfg.Name, err)
	}
	return out, nil
}

// Overdue runs the sweep statement: up to limit overdue ids, oldest first.
// A timer without one has nothing overdue.
func (t *Timer) Overdue(ctx context.Context, limit int) ([]string, error) {
	if t.sweep.empty() {
		return nil, nil
	}
	q, qa := t.sweep.bind(nil, limit)
	rows, err := t.db.QueryContext(ctx, q, qa...)
	return t.scanIDs(rows, err, "sweep")
}

// statement is a statement split at its placeholders: parts[i] comes
// before holes[i].
type statement struct {
	parts []string
	holes []string
}

func (s statement) empty() bool { return len(s.parts) == 0 }

var placeholder = regexp.MustCompile(`:([A-Za-z_][A-Za-z0-9_]*)`)

// compile splits text at its placeholders, refusing any but :allowed.
func compile(text, allowed string) (statement, error) {
	if strings.TrimSpace(text) == "" {
		return statement{}, nil
	}
	var s statement
	last := 0
	for _, m := range placeholder.FindAllStringSubmatchIndex(unquoted(text), -1) {
		name := text[m[2]:m[3]]
		if name != allowed {
			return statement{}, fmt.Errorf("placeholder :%s: only :%s is bound here", name, allowed)
		}
		s.parts = append(s.parts, text[last:m[0]])
		s.holes = append(s.holes, name)
		last = m[1]
	}
	s.parts = append(s.parts, text[last:])
	return s, nil
}

// CheckPlaceholders refuses a placeholder of stmt other than :allowed,
// outside quoted strings.
func CheckPlaceholders(stmt, allowed string) error {
	_, err := compile(stmt, allowed)
	return err
}

// bind returns the statement's text with its placeholders expanded, and
// its arguments.
func (s statement) bind(ids []any, limit int) (string, []any) {
	var b strings.Builder
	var args []any
	for i, p := range s.parts {
		b.WriteString(p)
		if i >= len(s.holes) {
			continue
		}
		switch s.holes[i] {
		case "ids":
			b.WriteString(strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", "))
			args = append(args, ids...)
		case "limit":
			b.WriteString("?")
			args = append(args, limit)
		}
	}
	return b.String(), args
}

// unquoted is stmt with what is inside quotes ('…', "…", `…`) blanked, so
// that a colon in a string or a name is not taken for a placeholder.
func unquoted(stmt string) string {
	b := []byte(stmt)
	var quote byte
	for i, c := range b {
		switch {
		case quote == 0 && (c == '\'' || c == '"' || c == '`'):
			quote = c
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			b[i] = ' '
		}
	}
	return string(b)
}
