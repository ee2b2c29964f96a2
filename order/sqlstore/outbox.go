package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/orderd/orderd/order"
)

var _ order.Outbox = (*Store)(nil)

// SetOutbox turns on (or off) recording every transition of an order in the
// outbox table, in the transaction that makes it, for the transitions stream
// (see order.Outbox). Off, the store records nothing there. Call it before
// the store is used.
func (s *Store) SetOutbox(on bool) { s.outbox = on }

const changeColumns = `order_id, user_id, sku, qty, from_status, to_status, changed_at, source`

// maxChangesPerInsert bounds the rows of one INSERT (8 values each: SQLite
// takes at most 32,766 in a statement).
const maxChangesPerInsert = 1000

// recordChanges records, in tx, the transition of each of rows from from to
// to at at (Unix ms), when the outbox is on.
func (s *Store) recordChanges(ctx context.Context, tx *sqlx.Tx, rows []orderRow, from, to order.Status, at int64, source string) error {
	if !s.outbox {
		return nil
	}
	for len(rows) > 0 {
		n := min(len(rows), maxChangesPerInsert)
		var b strings.Builder
		b.WriteString(`INSERT INTO transitions_outbox (` + changeColumns + `) VALUES `)
		args := make([]any, 0, 8*n)
		for i, r := range rows[:n] {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
			args = append(args, r.ID, r.UserID, r.SKU, r.Qty, string(from), string(to), at, source)
		}
		if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("sqlstore: record transitions to %s: %w", to, err)
		}
		rows = rows[n:]
	}
	return nil
}

// recordChange records, in tx, the transition of order id (read from its
// row) from from to to at at, when the outbox is on.
func (s *Store) recordChange(ctx context.Context, tx *sqlx.Tx, id int64, from, to order.Status, at int64) error {
	if !s.outbox {
		return nil
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO transitions_outbox (`+changeColumns+`)
		SELECT id, user_id, sku, qty, ?, ?, ?, ? FROM orders WHERE id = ?`,
		string(from), string(to), at, order.SourceRequest, id)
	if err != nil {
		return fmt.Errorf("sqlstore: record transition of order %d to %s: %w", id, to, err)
	}
	return nil
}

type changeRow struct {
	Seq     int64  `db:"seq"`
	OrderID int64  `db:"order_id"`
	UserID  int64  `db:"user_id"`
	SKU     int64  `db:"sku"`
	Qty     int64  `db:"qty"`
	From    string `db:"from_status"`
	To      string `db:"to_status"`
	At      int64  `db:"changed_at"`
	Source  string `db:"source"`
}

// PendingChanges returns up to limit changes not relayed yet, oldest first.
func (s *Store) PendingChanges(ctx context.Context, limit int) ([]order.Change, error) {
	var rows []changeRow
	if err := s.db.SelectContext(ctx, &rows, `SELECT seq, `+changeColumns+` FROM transitions_outbox ORDER BY seq LIMIT ?`, limit); err != nil {
		return nil, fmt.Errorf("sqlstore: read the outbox: %w", err)
	}
	out := make([]order.Change, len(rows))
	for i, r := range rows {
		out[i] = order.Change{
			Seq: r.Seq, OrderID: r.OrderID, UserID: r.UserID, SKU: r.SKU, Qty: r.Qty,
			From: order.Status(r.From), To: order.Status(r.To), At: fromMS(r.At), Source: r.Source,
		}
	}
	return out, nil
}

// DeleteChanges removes the changes of seqs from the outbox.
func (s *Store) DeleteChanges(ctx context.Context, seqs []int64) error {
	for len(seqs) > 0 {
		n := min(len(seqs), maxChangesPerInsert)
		q, args, err := sqlx.In(`DELETE FROM transitions_outbox WHERE seq IN (?)`, seqs[:n])
		if err != nil {
			return err
		}
		if _, err := s.db.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("sqlstore: delete relayed transitions: %w", err)
		}
		seqs = seqs[n:]
	}
	return nil
}

// ChangeBacklog returns how many changes wait in the outbox, and when the
// first of them (in seq order) was made.
func (s *Store) ChangeBacklog(ctx context.Context) (int64, time.Time, error) {
	var n int64
	if err := s.db.GetContext(ctx, &n, `SELECT COUNT(*) FROM transitions_outbox`); err != nil {
		return 0, time.Time{}, fmt.Errorf("sqlstore: outbox backlog: %w", err)
	}
	if n == 0 {
		return 0, time.Time{}, nil
	}
	var first int64
	err := s.db.GetContext(ctx, &first, `SELECT changed_at FROM transitions_outbox ORDER BY seq LIMIT 1`)
	if errors.Is(err, sql.ErrNoRows) { // relayed meanwhile
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("sqlstore: outbox backlog: %w", err)
	}
	return n, fromMS(first), nil
}
