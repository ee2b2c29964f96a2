package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
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

// maxChangesPerRecord bounds the transitions one outbox record holds.
const maxChangesPerRecord = 1000

// recordChanges records, in tx, the transition of each of rows from from to
// to at at (Unix ms), when the outbox is on: one record per 1,000 orders.
func (s *Store) recordChanges(ctx context.Context, tx *sqlx.Tx, rows []orderRow, from, to order.Status, at int64, source string) error {
	if !s.outbox {
		return nil
	}
	var b []byte
	for len(rows) > 0 {
		n := min(len(rows), maxChangesPerRecord)
		b = b[:0]
		for i, r := range rows[:n] {
			if i > 0 {
				b = append(b, ',')
			}
			b = order.AppendOrderRef(b, r.ID, r.UserID, r.SKU, r.Qty)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO transitions_outbox (from_status, to_status, changed_at, source, n, changes)
			VALUES (?, ?, ?, ?, ?, ?)`, string(from), string(to), at, source, n, string(b)); err != nil {
			return fmt.Errorf("sqlstore: record transitions to %s: %w", to, err)
		}
		rows = rows[n:]
	}
	return nil
}

// recordChange records, in tx, the transition of order id (read from its
// row) from from to to at at, by a request, when the outbox is on.
func (s *Store) recordChange(ctx context.Context, tx *sqlx.Tx, id int64, from, to order.Status, at int64) error {
	if !s.outbox {
		return nil
	}
	var r orderRow
	if err := tx.GetContext(ctx, &r, `SELECT id, user_id, sku, qty FROM orders WHERE id = ?`, id); err != nil {
		return fmt.Errorf("sqlstore: record transition of order %d to %s: %w", id, to, err)
	}
	return s.recordChanges(ctx, tx, []orderRow{r}, from, to, at, order.SourceRequest)
}

// recordDeadline records, in tx, the move of order id's deadline (it is in
// status) to deadline at at, by a request, when the outbox is on.
func (s *Store) recordDeadline(ctx context.Context, tx *sqlx.Tx, r orderRow, status order.Status, at, deadline int64) error {
	if !s.outbox {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO transitions_outbox (from_status, to_status, changed_at, source, n, changes, deadline)
		VALUES (?, ?, ?, ?, 1, ?, ?)`, string(status), string(status), at, order.SourceRequest,
		string(order.AppendOrderRef(nil, r.ID, r.UserID, r.SKU, r.Qty)), deadline); err != nil {
		return fmt.Errorf("sqlstore: record the deadline of order %d: %w", r.ID, err)
	}
	return nil
}

type changeRecord struct {
	Seq      int64         `db:"seq"`
	From     string        `db:"from_status"`
	To       string        `db:"to_status"`
	At       int64         `db:"changed_at"`
	Source   string        `db:"source"`
	N        int           `db:"n"`
	Changes  string        `db:"changes"`
	Deadline sql.NullInt64 `db:"deadline"`
}

// PendingChanges returns the changes of up to limit outbox records (a
// record holds the transitions of one statement: one order, or a batch),
// oldest first; the changes of a record share its Seq. Records are read
// from the smallest seq every time, never from a cursor: a record whose
// seq is lower than one read already (taken earlier, committed later, as
// happens with concurrent transactions and with a Galera cluster's
// interleaved auto-increments) is read by the next call.
func (s *Store) PendingChanges(ctx context.Context, limit int) ([]order.Change, error) {
	// On a Galera cluster the read waits until this node has applied every
	// write the cluster committed before it (wsrep_sync_wait): a relay that
	// took over from one on another node must not see records that one
	// deleted, once appended, as still to append.
	q := `SELECT seq, from_status, to_status, changed_at, source, n, changes, deadline FROM transitions_outbox ORDER BY seq LIMIT ?`
	if s.galera {
		q = `SET STATEMENT wsrep_sync_wait = 1 FOR ` + q
	}
	var recs []changeRecord
	if err := s.db.SelectContext(ctx, &recs, q, limit); err != nil {
		return nil, fmt.Errorf("sqlstore: read the outbox: %w", err)
	}
	var out []order.Change
	for _, r := range recs {
		c := order.Change{Seq: r.Seq, From: order.Status(r.From), To: order.Status(r.To), At: fromMS(r.At), Source: r.Source}
		if r.Deadline.Valid {
			c.Deadline = fromMS(r.Deadline.Int64)
		}
		for item := range strings.SplitSeq(r.Changes, ",") {
			var f [4]int64
			parts := strings.SplitN(item, ":", 4)
			if len(parts) != 4 {
				return nil, fmt.Errorf("sqlstore: outbox record %d is malformed: %q", r.Seq, item)
			}
			for i, p := range parts {
				v, err := strconv.ParseInt(p, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("sqlstore: outbox record %d is malformed: %q", r.Seq, item)
				}
				f[i] = v
			}
			c.OrderID, c.UserID, c.SKU, c.Qty = f[0], f[1], f[2], f[3]
			out = append(out, c)
		}
	}
	return out, nil
}

// DeleteChanges removes the outbox records of seqs (a seq may come once per
// change of its record).
func (s *Store) DeleteChanges(ctx context.Context, seqs []int64) error {
	seqs = slices.Compact(slices.Sorted(slices.Values(seqs)))
	for len(seqs) > 0 {
		n := min(len(seqs), maxChangesPerRecord)
		q, args, err := sqlx.In(`DELETE FROM transitions_outbox WHERE seq IN (?)`, seqs[:n])
		if err != nil {
			return err
		}
		if _, err := s.exec(ctx, true, q, args...); err != nil {
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
	if err := s.db.GetContext(ctx, &n, `SELECT COALESCE(SUM(n), 0) FROM transitions_outbox`); err != nil {
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
