package order

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/orderd/orderd/stock"
)

// Timers sets and cancels the Redis keys whose expiry drives the daemon.
// *expiry.Scheduler implements it.
type Timers interface {
	Schedule(ctx context.Context, key string, deadline time.Time) error
	Cancel(ctx context.Context, key string) error
}

// Transition describes one order moved by its deadline, for metrics.
type Transition struct {
	To       Status        // Expired or Completed
	Lateness time.Duration // from the deadline to the commit
	Source   string        // SourceEvent or SourceSweep
}

// Config configures a Service. The zero value is usable.
type Config struct {
	// PayTimeout is the time to pay after ordering. If zero, 15 min is used.
	PayTimeout time.Duration
	// ConfirmTimeout is the time after shipping until receipt is confirmed
	// automatically. If zero, 24 h is used.
	ConfirmTimeout time.Duration
	// Keys names the Redis keys; the service writes the timer keys.
	Keys Keys
	// MaxQty bounds the units of one order. If zero, 1,000 is used.
	MaxQty int64
	// SweepBatch is the number of overdue orders one sweep transaction takes
	// on. If zero, 500 is used.
	SweepBatch int
	// SweepWorkers is the number of sweep transactions run at once.
	// If zero, 2 are used.
	SweepWorkers int
	// StockSettle is how long ReconcileStock must have seen a Redis stock
	// counter disagree with the database (over two calls at least that far
	// apart) before it replaces it: a counter that nothing reserved from or
	// gave back to for that long, beside a database whose available units
	// did not move either, is wrong, not busy. Keep it
	// longer than the longest order creation (the HTTP API's request deadline
	// is 5 s): an order reserved in Redis whose row is not committed yet is
	// no lost give-back. If zero, 6 s is used.
	StockSettle time.Duration
	// Logger receives the service's log lines. If nil, nothing is logged.
	Logger *zap.Logger
	// OnTransition, if set, is called for every order moved by a deadline.
	OnTransition func(Transition)
	// Now tells the time. If nil, time.Now is used.
	Now func() time.Time
	// GiveBacks, if set, keeps the stock give-backs that could not reach
	// Redis and retries them until they land (run it). If nil, such a
	// counter waits for the daemon's stock check.
	GiveBacks *stock.GiveBacks
}

// Service is the order logic shared by the HTTP API and the daemon.
type Service struct {
	store  Store
	stock  *stock.Counter
	timers Timers
	cfg    Config
	log    *zap.Logger

	resyncMu   sync.Mutex
	resyncAt   map[int64]time.Time  // SKU → last resync after the database refused what Redis took
	stockWatch map[int64]stockWatch // counters ReconcileStock saw disagree, and since when
}

// NewService returns a Service over store. counter (the Redis stock
// pre-deduction) and timers may be nil: the database alone is then the stock
// path, and orders are closed by the sweep alone.
func NewService(store Store, counter *stock.Counter, timers Timers, cfg Config) *Service {
	if cfg.PayTimeout <= 0 {
		cfg.PayTimeout = 15 * time.Minute
	}
	if cfg.ConfirmTimeout <= 0 {
		cfg.ConfirmTimeout = 24 * time.Hour
	}
	if cfg.MaxQty <= 0 {
		cfg.MaxQty = 1000
	}
	if cfg.SweepBatch <= 0 {
		cfg.SweepBatch = 500
	}
	if cfg.SweepWorkers <= 0 {
		cfg.SweepWorkers = 2
	}
	if cfg.StockSettle <= 0 {
		cfg.StockSettle = 6 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Service{store: store, stock: counter, timers: timers, cfg: cfg, log: log, resyncAt: map[int64]time.Time{}, stockWatch: map[int64]stockWatch{}}
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC().Truncate(time.Millisecond) }

// PutSKU creates or replaces a SKU; s.Available sets the available quantity.
// The Redis counter is rebuilt from the database.
func (s *Service) PutSKU(ctx context.Context, sku SKU) (SKU, error) {
	switch {
	case sku.SKU <= 0:
		return SKU{}, Errorf(CodeInvalidRequest, "sku must be a positive integer")
	case sku.Name == "" || len(sku.Name) > 200:
		return SKU{}, Errorf(CodeInvalidRequest, "name must have 1 to 200 bytes")
	case sku.PriceCents < 0 || sku.PriceCents > 1e12:
		return SKU{}, Errorf(CodeInvalidRequest, "price_cents must be between 0 and 10^12")
	case sku.Available < 0 || sku.Available > 1e12:
		return SKU{}, Errorf(CodeInvalidRequest, "stock must be between 0 and 10^12")
	case sku.LimitPerUser < 0:
		return SKU{}, Errorf(CodeInvalidRequest, "limit_per_user must not be negative")
	}
	out, err := s.store.PutSKU(ctx, sku)
	if err != nil {
		return SKU{}, err
	}
	if err := s.ResyncStock(ctx, out.SKU); err != nil {
		s.log.Warn("stock counter not rebuilt", zap.Int64("sku", out.SKU), zap.Error(err))
	}
	return out, nil
}

// Keys returns the names of the Redis keys the service works with.
func (s *Service) Keys() Keys { return s.cfg.Keys }

// GetSKU returns one SKU.
func (s *Service) GetSKU(ctx context.Context, sku int64) (SKU, error) {
	return s.store.GetSKU(ctx, sku)
}

// ListSKUs returns every SKU.
func (s *Service) ListSKUs(ctx context.Context) ([]SKU, error) { return s.store.ListSKUs(ctx) }

// ResyncStock sets the Redis counter of sku from the database.
func (s *Service) ResyncStock(ctx context.Context, sku int64) error {
	if s.stock == nil {
		return nil
	}
	k, err := s.store.GetSKU(ctx, sku)
	if err != nil {
		return err
	}
	held, err := s.store.LiveQty(ctx, sku)
	if err != nil {
		return err
	}
	return s.stock.Set(ctx, sku, k.Available, k.LimitPerUser, held)
}

// Create places an order of qty units of sku for user: stock is reserved in
// Redis (fast refusal in a flash sale), then in the database (the truth), and
// the pay timer is set.
func (s *Service) Create(ctx context.Context, user, sku, qty int64) (Order, error) {
	if qty < 1 || qty > s.cfg.MaxQty {
		return Order{}, Errorf(CodeInvalidRequest, "qty must be between 1 and %d", s.cfg.MaxQty)
	}
	if sku <= 0 {
		return Order{}, Errorf(CodeInvalidRequest, "sku must be a positive integer")
	}
	reserved, err := s.reserve(ctx, sku, user, qty)
	if err != nil {
		return Order{}, err
	}
	now := s.now()
	o := Order{UserID: user, SKU: sku, Qty: qty, Status: Pending, CreatedAt: now, PayDeadline: now.Add(s.cfg.PayTimeout)}
	if err := s.store.Create(ctx, &o); err != nil {
		if reserved {
			s.unreserve(context.WithoutCancel(ctx), stock.Hold{SKU: sku, User: user, Qty: qty}, err)
		}
		return Order{}, err
	}
	s.schedule(ctx, PayKey(o.ID), o.PayDeadline)
	return o, nil
}

// reserve takes the units from the Redis counter. It reports whether it did;
// a missing counter is rebuilt once, and a Redis failure leaves the database
// to decide alone.
func (s *Service) reserve(ctx context.Context, sku, user, qty int64) (bool, error) {
	if s.stock == nil {
		return false, nil
	}
	for attempt := 0; ; attempt++ {
		res, err := s.stock.Reserve(ctx, sku, user, qty)
		if err != nil {
			s.log.Warn("stock counter unavailable; the database decides alone", zap.Error(err))
			return false, nil
		}
		switch res {
		case stock.Reserved:
			return true, nil
		case stock.SoldOut:
			return false, ErrSoldOut
		case stock.LimitExceeded:
			return false, ErrLimitExceeded
		}
		if attempt > 0 {
			return false, nil
		}
		if err := s.ResyncStock(ctx, sku); err != nil {
			if errors.Is(err, ErrNotFound) {
				return false, err
			}
			return false, nil
		}
	}
}

// unreserve hands back units that Redis reserved for an order the database
// did not create. When the database refused the order (sold out, over the
// limit), Redis believed in units or room that the database does not have:
// the counter is rebuilt from the database instead, at most once a second per
// SKU, so that a counter above the truth stops letting buyers through to the
// database.
func (s *Service) unreserve(ctx context.Context, h stock.Hold, createErr error) {
	if errors.Is(createErr, ErrSoldOut) || errors.Is(createErr, ErrLimitExceeded) {
		s.resyncMu.Lock()
		due := s.now().Sub(s.resyncAt[h.SKU]) >= time.Second
		if due {
			s.resyncAt[h.SKU] = s.now()
		}
		s.resyncMu.Unlock()
		if due {
			if err := s.ResyncStock(ctx, h.SKU); err == nil {
				s.log.Info("stock counter was above the database: rebuilt", zap.Int64("sku", h.SKU))
				return
			}
		}
	}
	if err := s.stock.Release(ctx, h); err != nil {
		s.giveBackLater(err, h)
	}
}

// giveBackLater hands holds whose give-back failed to GiveBacks, or else
// leaves them to the daemon's stock check.
func (s *Service) giveBackLater(err error, holds ...stock.Hold) {
	if g := s.cfg.GiveBacks; g != nil {
		g.Add(holds...)
		s.log.Warn("stock counter not given back now: retried until Redis answers", zap.Int("holds", len(holds)), zap.Error(err))
		return
	}
	s.log.Warn("stock counter not given back (the daemon's stock check mends it)", zap.Int("holds", len(holds)), zap.Error(err))
}

// Get returns order id as seen by user (admins see every order; others only
// their own, and someone else's order is not found).
func (s *Service) Get(ctx context.Context, user int64, admin bool, id int64) (Order, error) {
	o, err := s.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) || (err == nil && !admin && o.UserID != user) {
		// One answer for both: it must not tell which ids exist.
		return Order{}, Errorf(CodeNotFound, "order not found")
	}
	if err != nil {
		return Order{}, err
	}
	return o, nil
}

// List returns the user's orders, newest first.
func (s *Service) List(ctx context.Context, user int64) ([]Order, error) {
	return s.store.ListByUser(ctx, user, 1000)
}

// Pay marks the user's pending order paid. The deadline decides: a payment at
// or after the pay deadline is refused, and the order expired on the spot.
func (s *Service) Pay(ctx context.Context, user, id int64) (Order, error) {
	if _, err := s.Get(ctx, user, false, id); err != nil {
		return Order{}, err
	}
	o, err := s.store.Pay(ctx, id, s.now())
	if err != nil {
		return Order{}, s.refuse(ctx, "pay", id, err)
	}
	s.cancelTimer(ctx, PayKey(id))
	return o, nil
}

// Cancel cancels the user's pending order and gives its stock back.
func (s *Service) Cancel(ctx context.Context, user, id int64) (Order, error) {
	if _, err := s.Get(ctx, user, false, id); err != nil {
		return Order{}, err
	}
	o, err := s.store.Cancel(ctx, id, s.now())
	if err != nil {
		return Order{}, s.refuse(ctx, "cancel", id, err)
	}
	s.releaseRedis(ctx, o)
	s.cancelTimer(ctx, PayKey(id))
	return o, nil
}

// refuse turns a failed pending-order transition into the error to report.
// When the order is still pending but its deadline has passed, it expires the
// order first, so the answer names the status the deadline gave it.
func (s *Service) refuse(ctx context.Context, action string, id int64, err error) error {
	if !errors.Is(err, ErrInvalidTransition) {
		return err
	}
	o, gerr := s.store.Get(ctx, id)
	if gerr != nil {
		return gerr
	}
	if o.Status == Pending && !s.now().Before(o.PayDeadline) {
		if _, xerr := s.ExpireOrders(ctx, []int64{id}, SourceRequest); xerr != nil {
			return xerr
		}
		if o, gerr = s.store.Get(ctx, id); gerr != nil {
			return gerr
		}
	}
	return transitionError(action, o)
}

// Ship marks a paid order shipped and sets its confirm timer.
func (s *Service) Ship(ctx context.Context, id int64) (Order, error) {
	now := s.now()
	o, err := s.store.Ship(ctx, id, now, now.Add(s.cfg.ConfirmTimeout))
	if err != nil {
		return Order{}, err
	}
	s.schedule(ctx, ConfirmKey(id), *o.ConfirmDeadline)
	return o, nil
}

// Confirm marks the user's shipped order completed.
func (s *Service) Confirm(ctx context.Context, user, id int64) (Order, error) {
	if _, err := s.Get(ctx, user, false, id); err != nil {
		return Order{}, err
	}
	o, err := s.store.Confirm(ctx, id, s.now())
	if err != nil {
		return Order{}, err
	}
	s.cancelTimer(ctx, ConfirmKey(id))
	return o, nil
}

// MoveDeadline moves the deadline of order id, for an admin: the pay
// deadline of a pending order (status Pending) or the confirm deadline of a
// shipped one (Shipped), earlier or later; a deadline in the past means now.
// The database has the new deadline first, then the order's timer (its key
// and due-index entry) moves with it; a timer that could not be moved fires
// at the old deadline, finds the order not due and is set again for the
// time left. An order in another status is an invalid-transition error
// naming it. A daemon expiring the order at the same moment either finds
// the new deadline or expires it first, never both.
func (s *Service) MoveDeadline(ctx context.Context, id int64, status Status, deadline time.Time) (Order, error) {
	now := s.now()
	deadline = deadline.UTC().Truncate(time.Millisecond)
	if deadline.Before(now) {
		deadline = now
	}
	o, err := s.store.MoveDeadline(ctx, id, status, deadline, now)
	if err != nil {
		return Order{}, err
	}
	if key, _, ok := o.Timer(); ok {
		s.schedule(ctx, key, deadline)
	}
	return o, nil
}

// ExpireNow expires a pending order at once, for an admin, as its timer
// would: its pay deadline moves to now, then it is expired and its stock
// given back (source request). An order in another status (paid meanwhile,
// say) is an invalid-transition error naming it.
func (s *Service) ExpireNow(ctx context.Context, id int64) (Order, error) {
	if _, err := s.store.MoveDeadline(ctx, id, Pending, s.now(), s.now()); err != nil {
		if oe := (*Error)(nil); errors.As(err, &oe) && oe.Code == CodeInvalidTransition {
			return Order{}, &Error{Code: CodeInvalidTransition, Status: oe.Status,
				Message: fmt.Sprintf("cannot expire order %d: it is %s", id, oe.Status)}
		}
		return Order{}, err
	}
	if _, err := s.ExpireOrders(ctx, []int64{id}, SourceRequest); err != nil {
		return Order{}, err
	}
	o, err := s.store.Get(ctx, id)
	if err != nil {
		return Order{}, err
	}
	if o.Status != Expired {
		return Order{}, transitionError("expire", o)
	}
	s.cancelTimer(ctx, PayKey(id))
	return o, nil
}

func (s *Service) schedule(ctx context.Context, key string, deadline time.Time) {
	if s.timers == nil {
		return
	}
	// The order is committed: a timer that cannot be set costs time, not the
	// order (the sweep finds it by its deadline).
	if err := s.timers.Schedule(context.WithoutCancel(ctx), s.cfg.Keys.Prefix+key, deadline); err != nil {
		s.log.Warn("timer not set; the sweep will act at the deadline", zap.String("key", key), zap.Error(err))
	}
}

func (s *Service) cancelTimer(ctx context.Context, key string) {
	if s.timers == nil {
		return
	}
	if err := s.timers.Cancel(context.WithoutCancel(ctx), s.cfg.Keys.Prefix+key); err != nil {
		s.log.Warn("timer not cancelled (its expiry will change nothing)", zap.String("key", key), zap.Error(err))
	}
}

// releaseTimeout bounds a give-back to the Redis stock counters made after
// a commit: one that Redis does not answer in time is retried by GiveBacks
// (or mended by the stock check) rather than held up the batch.
const releaseTimeout = time.Second

func (s *Service) releaseRedis(ctx context.Context, orders ...Order) {
	if s.stock == nil || len(orders) == 0 {
		return
	}
	holds := make([]stock.Hold, len(orders))
	for i, o := range orders {
		holds[i] = stock.Hold{SKU: o.SKU, User: o.UserID, Qty: o.Qty}
	}
	if g := s.cfg.GiveBacks; g != nil && g.Pending() > 0 {
		g.Add(holds...) // Redis did not answer the last give-back: join the queue, do not wait on it
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := s.stock.Release(rctx, holds...); err != nil {
		s.giveBackLater(err, holds...)
	}
}

// Applied is what one batch of deadline transitions did.
type Applied struct {
	// Moved is how many orders the batch moved; the others of its ids were
	// left as they were (moved already, paid or cancelled meanwhile, not due,
	// busy).
	Moved int
	// Missing are the ids of no order at all: a timer key written (by
	// another program, say) for an order that does not exist. Batches from
	// the sweep, which reads its ids from the orders, have none.
	Missing []int64
	// Busy are the ids another transaction held locked, skipped rather than
	// waited for: ask again shortly (the other may be a process frozen in
	// its transaction, which the server ends).
	Busy []int64
	// Rearmed are the ids not due yet whose timers the batch set again for
	// their real deadlines.
	Rearmed []int64
}

// ExpireOrders expires, in one transaction, those of ids that are pending and
// past their pay deadline, and gives their stock back. Orders not due yet get
// their timer set again for the real deadline.
func (s *Service) ExpireOrders(ctx context.Context, ids []int64, source string) (Applied, error) {
	mv, err := s.store.Expire(ctx, ids, s.now(), source)
	if err != nil {
		return Applied{}, err
	}
	s.observe(mv.Moved, Expired, source) // before any Redis call: the transitions are committed
	s.releaseRedis(ctx, mv.Moved...)
	for _, o := range mv.NotDue {
		s.schedule(ctx, PayKey(o.ID), o.PayDeadline)
	}
	return s.applied(ctx, ids, mv, source)
}

// CompleteOrders confirms receipt, in one transaction, of those of ids that
// are shipped and past their confirm deadline.
func (s *Service) CompleteOrders(ctx context.Context, ids []int64, source string) (Applied, error) {
	mv, err := s.store.Complete(ctx, ids, s.now(), source)
	if err != nil {
		return Applied{}, err
	}
	s.observe(mv.Moved, Completed, source)
	for _, o := range mv.NotDue {
		s.schedule(ctx, ConfirmKey(o.ID), *o.ConfirmDeadline)
	}
	return s.applied(ctx, ids, mv, source)
}

// applied finds, when some of ids were neither moved nor waiting nor busy,
// which of them are no order at all. It costs a query only then.
func (s *Service) applied(ctx context.Context, ids []int64, mv Moves, source string) (Applied, error) {
	a := Applied{Moved: len(mv.Moved), Busy: mv.Busy}
	for _, o := range mv.NotDue {
		a.Rearmed = append(a.Rearmed, o.ID)
	}
	if len(mv.Moved)+len(mv.NotDue)+len(mv.Busy) == len(ids) || source == SourceSweep {
		return a, nil
	}
	existing, err := s.store.Existing(ctx, ids)
	if err != nil {
		return a, nil // the transitions committed; which ids were strangers is only for counting
	}
	for _, id := range ids {
		if !slices.Contains(existing, id) {
			a.Missing = append(a.Missing, id)
		}
	}
	return a, nil
}

// maxLoggedIDs bounds the order ids one log line lists.
const maxLoggedIDs = 100

// observe reports the orders a deadline moved: one info line per batch naming
// them (the first 100 ids), and each to OnTransition.
func (s *Service) observe(moved []Order, to Status, source string) {
	if len(moved) == 0 {
		return
	}
	ids := make([]int64, 0, min(len(moved), maxLoggedIDs))
	var latest time.Duration
	for _, o := range moved {
		deadline, at := o.PayDeadline, o.CancelledAt
		if to == Completed {
			deadline, at = *o.ConfirmDeadline, o.CompletedAt
		}
		lateness := at.Sub(deadline)
		latest = max(latest, lateness)
		if len(ids) < maxLoggedIDs {
			ids = append(ids, o.ID)
		}
		if s.cfg.OnTransition != nil {
			s.cfg.OnTransition(Transition{To: to, Lateness: lateness, Source: source})
		}
	}
	s.log.Info("orders "+string(to), zap.String("source", source), zap.Int("count", len(moved)),
		zap.Int64s("order_ids", ids), zap.Bool("ids_cut", len(moved) > len(ids)), zap.Duration("max_late", latest))
}

// Sweep applies the overdue transitions the database holds whose deadline
// passed at least olderThan ago (0: every overdue one): it is what makes
// "nothing lost" true when events are lost. A periodic sweep leaves the
// orders that are only just due to the event path (a short olderThan), so
// that what it moves was really missed; a catch-up sweep takes everything.
//
// It pages through the overdue orders in deadline order (from the first
// every time: an order committed after a sweep passed its place, with an
// id lower than those it read, is the next sweep's) and applies the pages
// as batches, SweepWorkers at a time (pages are disjoint, so batches do not
// contend but for stock rows). When ctx ends it takes no new page, lets the
// batches in hand commit, and returns ctx's error: the rest waits for the
// next sweep. It returns how many orders it moved.
func (s *Service) Sweep(ctx context.Context, olderThan time.Duration) (int, error) {
	return s.SweepWhere(ctx, olderThan, nil)
}

// SweepWhere is Sweep over the overdue orders for which keep (when not nil)
// returns true, given the status they wait in (Pending or Shipped) and their
// id: one of several daemons catching up on the events it missed takes the
// orders whose events were its own.
func (s *Service) SweepWhere(ctx context.Context, olderThan time.Duration, keep func(Status, int64) bool) (int, error) {
	total := 0
	for _, status := range []Status{Pending, Shipped} {
		var k func(int64) bool
		if keep != nil {
			k = func(id int64) bool { return keep(status, id) }
		}
		n, err := s.SweepStatus(ctx, status, olderThan, k)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// SweepStatus is SweepWhere over the orders waiting in status (Pending:
// their pay timeout; Shipped: their auto-confirm) for which keep (when not
// nil) returns true, given their id.
func (s *Service) SweepStatus(ctx context.Context, status Status, olderThan time.Duration, keep func(int64) bool) (int, error) {
	apply := s.ExpireOrders
	if status == Shipped {
		apply = s.CompleteOrders
	}
	// A batch in hand finishes even when ctx ends: stopping means taking no
	// new page, not abandoning a transaction.
	work := context.WithoutCancel(ctx)
	var total atomic.Int64
	before := s.now().Add(-olderThan)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	var busy []int64 // ids other transactions held: tried again at the end
	fail := func(err error) {
		mu.Lock()
		firstErr = cmp.Or(firstErr, err)
		mu.Unlock()
	}
	sem := make(chan struct{}, s.cfg.SweepWorkers)
	// launch applies ids as one batch, SweepWorkers at a time, and
	// reports whether to go on.
	launch := func(ids []int64) bool {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			fail(ctx.Err())
			return false
		}
		wg.Go(func() {
			defer func() { <-sem }()
			a, err := apply(work, ids, SourceSweep)
			total.Add(int64(a.Moved))
			if err != nil {
				fail(err)
			}
			mu.Lock()
			busy = append(busy, a.Busy...)
			mu.Unlock()
		})
		mu.Lock()
		defer mu.Unlock()
		return firstErr == nil
	}
	var cursor DueCursor
	var held []int64 // kept, not applied yet: filtered pages fill a batch together
pages:
	for {
		if err := ctx.Err(); err != nil {
			fail(err)
			break
		}
		ids, next, err := s.store.Due(ctx, status, before, cursor, s.cfg.SweepBatch)
		if err != nil {
			fail(cmp.Or(ctx.Err(), err))
			break
		}
		last := len(ids) < s.cfg.SweepBatch
		if keep != nil {
			ids = slices.DeleteFunc(ids, func(id int64) bool { return !keep(id) })
		}
		held = append(held, ids...)
		for len(held) >= s.cfg.SweepBatch || (last && len(held) > 0) {
			n := min(len(held), s.cfg.SweepBatch)
			if !launch(held[:n:n]) {
				break pages
			}
			held = held[n:]
		}
		if last {
			break
		}
		cursor = next
	}
	wg.Wait()
	if firstErr == nil && len(busy) > 0 {
		n, err := s.retryBusy(ctx, apply, busy)
		total.Add(int64(n))
		firstErr = err
	}
	return int(total.Load()), firstErr
}

// busyRetries are the waits before a sweep asks again for the orders
// another transaction held locked (most often another sweep or batch moving
// them right now). What stays held after them (a frozen process's
// transaction, which the server ends after 2 s idle) is the next sweep's:
// a sweep does not hold up the ones after it.
var busyRetries = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}

// retryBusy applies ids again after each of busyRetries while some stay
// busy; what is still busy then waits for the next sweep.
func (s *Service) retryBusy(ctx context.Context, apply func(context.Context, []int64, string) (Applied, error), ids []int64) (int, error) {
	moved := 0
	for _, wait := range busyRetries {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return moved, ctx.Err()
		case <-t.C:
		}
		for len(ids) > 0 {
			n := min(len(ids), s.cfg.SweepBatch)
			a, err := apply(context.WithoutCancel(ctx), ids[:n], SourceSweep)
			if err != nil {
				return moved, err
			}
			moved += a.Moved
			ids = append(ids[n:], a.Busy...)
			if len(a.Busy) == n {
				break // all still held: wait
			}
		}
		if len(ids) == 0 {
			return moved, nil
		}
	}
	s.log.Info("sweep left orders that other transactions held locked to the next sweep", zap.Int("orders", len(ids)))
	return moved, nil
}

// ReconcileStock mends the Redis stock counters that disagree with the
// database while nothing moves them: a give-back lost between a database
// commit and Redis (Redis unreachable for a moment, the process killed in
// between) leaves a counter below the truth, which would answer sold_out
// for good. Each call reads every counter and every SKU's available units
// and remembers those that differ; a counter found differing in the same
// way (its seq and the database's units unmoved) by a call at least
// StockSettle after the one that first saw it is rebuilt from the database,
// unless it moved in the instant before the rebuild. A busy counter, or one
// beside a database still catching up with it, is left alone. It never
// waits: the daemon calls it after every periodic sweep, so a lost give-back
// is mended after the later of StockSettle and a sweep interval. The cost
// when all agree is one query and one Redis round trip. It returns how many
// counters it rebuilt.
func (s *Service) ReconcileStock(ctx context.Context) (int, error) {
	if s.stock == nil {
		return 0, nil
	}
	suspects, err := s.stockSuspects(ctx)
	if err != nil {
		return 0, err
	}
	now := time.Now()
	s.resyncMu.Lock()
	due := map[int64]stockState{}
	for sku, st := range suspects {
		// Idle means idle on both sides: an order reserved in Redis whose
		// row is not committed yet (a database that lags a flash sale)
		// leaves the counter still and the database moving, and is no lost
		// give-back.
		if w, ok := s.stockWatch[sku]; ok && w.state == st {
			if now.Sub(w.since) >= s.cfg.StockSettle {
				due[sku] = st
			}
			continue
		}
		s.stockWatch[sku] = stockWatch{state: st, since: now}
	}
	for sku := range s.stockWatch {
		if _, ok := suspects[sku]; !ok {
			delete(s.stockWatch, sku)
		}
	}
	s.resyncMu.Unlock()

	fixed := 0
	for sku, st := range due {
		k, err := s.store.GetSKU(ctx, sku)
		if err != nil {
			return fixed, err
		}
		if k.Available != st.db {
			continue // the database moved since
		}
		held, err := s.store.LiveQty(ctx, sku)
		if err != nil {
			return fixed, err
		}
		ok, err := s.stock.SetIf(ctx, sku, st.seq, k.Available, k.LimitPerUser, held)
		if err != nil {
			return fixed, err
		}
		s.resyncMu.Lock()
		delete(s.stockWatch, sku)
		s.resyncMu.Unlock()
		if ok {
			fixed++
			s.log.Warn("stock counter disagreed with the database while idle: rebuilt",
				zap.Int64("sku", sku), zap.Int64("available", k.Available))
		}
	}
	return fixed, nil
}

// stockWatch is a counter found disagreeing with the database, and since when.
type stockWatch struct {
	state stockState
	since time.Time
}

// stockState is a SKU's Redis counter's seq and the database's available
// units, read together.
type stockState struct{ seq, db int64 }

// stockSuspects returns the SKUs whose Redis counter exists and differs
// from the database's available units, with the counter's seq and the
// database's units.
func (s *Service) stockSuspects(ctx context.Context) (map[int64]stockState, error) {
	skus, err := s.store.ListSKUs(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(skus))
	for i, k := range skus {
		ids[i] = k.SKU
	}
	states, err := s.stock.States(ctx, ids...)
	if err != nil {
		return nil, err
	}
	out := map[int64]stockState{}
	for i, st := range states {
		if st.OK && st.Available != skus[i].Available {
			out[ids[i]] = stockState{seq: st.Seq, db: skus[i].Available}
		}
	}
	return out, nil
}
