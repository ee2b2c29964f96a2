package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/sqltimer"
)

// SQLTimer returns the Timer of a shop's own tables that t's SQL moves, for
// the keys <key prefix><prefix><id>, in batches of up to batchMax ids.
//
// Its sweep pages through t's overdue ids (batchMax at a time, the sweep
// statement's :limit) and applies each page as a batch, until a page is
// short. The database's clock and the shop's query decide what is
// overdue: the sweep takes every overdue id, whoever's shard and however
// lately due (claiming is idempotent: an id moved by another daemon meanwhile
// is not claimed again). A full page of which nothing moved ends the sweep
// too: the sweep statement then names ids the claim does not take, and
// reading it again would return them again.
func SQLTimer(t *sqltimer.Timer, prefix string, batchMax int) Timer {
	return &sqlTimer{t: t, prefix: prefix, batch: max(batchMax, 1)}
}

type sqlTimer struct {
	t      *sqltimer.Timer
	prefix string
	batch  int
}

func (s *sqlTimer) Name() string   { return s.t.Name() }
func (s *sqlTimer) Prefix() string { return s.prefix }
func (s *sqlTimer) BatchMax() int  { return s.batch }

func (s *sqlTimer) CheckID(id string) error {
	if _, err := s.t.ParseID(id); err != nil {
		return fmt.Errorf("%v: %w", err, expiry.ErrMalformedKey)
	}
	return nil
}

func (s *sqlTimer) Apply(ctx context.Context, ids []string, _ string) (Applied, error) {
	out, err := s.t.Apply(ctx, ids)
	if err != nil {
		return Applied{}, err
	}
	return Applied{Moved: len(out.Claimed), NotDue: out.NotDue}, nil
}

func (s *sqlTimer) Sweep(ctx context.Context, _ time.Duration, _ func(string) bool) (int, error) {
	moved := 0
	for ctx.Err() == nil {
		ids, err := s.t.Overdue(ctx, s.batch)
		if err != nil || len(ids) == 0 {
			return moved, err
		}
		// A page in hand is applied even when ctx ends meanwhile.
		out, err := s.t.Apply(context.WithoutCancel(ctx), ids)
		moved += len(out.Claimed)
		if err != nil || len(ids) < s.batch || len(out.Claimed) == 0 {
			return moved, err
		}
	}
	return moved, ctx.Err()
}
