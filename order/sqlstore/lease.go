package sqlstore

import (
	"context"
	"fmt"
	"time"
)

// dbNowMS is the database's clock in Unix ms, as SQL.
func (s *Store) dbNowMS() string {
	if s.dialect == "sqlite" {
		return `CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`
	}
	return `CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)`
}

// ClaimLease takes the database lease name for holder for ttl, or renews
// it when holder has it, and reports whether holder has it now. The lease
// is free when its time (kept on the database's clock) has passed: one
// conditional UPDATE decides, so two claimants never both win, on Galera
// too. The leases are rows of orderd_leases (migration: 'sweep').
func (s *Store) ClaimLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	now := s.dbNowMS()
	res, err := s.db.ExecContext(ctx, `UPDATE orderd_leases SET holder = ?, expires_at = `+now+` + ?
		WHERE name = ? AND (holder = ? OR expires_at < `+now+`)`, holder, ttl.Milliseconds(), name, holder)
	if err != nil {
		return false, fmt.Errorf("sqlstore: claim lease %s: %w", name, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// ReleaseLease gives the database lease name up if holder has it.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE orderd_leases SET holder = '', expires_at = 0 WHERE name = ? AND holder = ?`, name, holder); err != nil {
		return fmt.Errorf("sqlstore: release lease %s: %w", name, err)
	}
	return nil
}
