package order

import (
	"cmp"
	"context"
	"errors"
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
	Source   string        // "event" or "sweep"
}

// Config configures a Service. The zero value is usable.
type Config struct {
	// PayTimeout is the time to pay after ordering. If zero, 15 min is used.
	PayTimeout time.Duration
	// ConfirmTimeout is the time after shipping until receipt is confirmed
	// automatically. If zero, 24 h is used.
	ConfirmTimeout time.Duration
	// KeyPrefix is prepended to every timer key the service writes.
	KeyPrefix string
	// MaxQty bounds the units of one order. If zero, 1,000 is used.
	MaxQty int64
	// SweepBatch is the number of overdue orders one sweep transaction takes
	// on. If zero, 500 is used.
	SweepBatch int
	// SweepWorkers is the number of sweep transactions run at once.
	// If zero, 2 are used.
	SweepWorkers int
	// Logger receives the service's log lines. If nil, nothing is logged.
	Logger *zap.Logger
	// OnTransition, if set, is called for every order moved by a deadline.
	OnTransition func(Transition)
	// Now tells the time. If nil, time.Now is used.
	Now func() time.Time
}

// Service is the order logic shared by the HTTP API and the daemon.
type Service struct {
	store  Store
	stock  *stock.Counter
	timers Timers
	cfg    Config
	log    *zap.Logger
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Service{store: store, stock: counter, timers: timers, cfg: cfg, log: log}
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
			// The database said no (or failed): hand the Redis units back.
			if rerr := s.stock.Release(context.WithoutCancel(ctx), stock.Hold{SKU: sku, User: user, Qty: qty}); rerr != nil {
				s.log.Warn("stock reservation not given back", zap.Int64("sku", sku), zap.Error(rerr))
			}
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

// Get returns order id as seen by user (admins see every order; others only
// their own, and someone else's order is not found).
func (s *Service) Get(ctx context.Context, user int64, admin bool, id int64) (Order, error) {
	o, err := s.store.Get(ctx, id)
	if err != nil {
		return Order{}, err
	}
	if !admin && o.UserID != user {
		return Order{}, ErrNotFound
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
		if _, xerr := s.ExpireOrders(ctx, []int64{id}, "request"); xerr != nil {
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

func (s *Service) schedule(ctx context.Context, key string, deadline time.Time) {
	if s.timers == nil {
		return
	}
	// The order is committed: a timer that cannot be set costs time, not the
	// order (the sweep finds it by its deadline).
	if err := s.timers.Schedule(context.WithoutCancel(ctx), s.cfg.KeyPrefix+key, deadline); err != nil {
		s.log.Warn("timer not set; the sweep will act at the deadline", zap.String("key", key), zap.Error(err))
	}
}

func (s *Service) cancelTimer(ctx context.Context, key string) {
	if s.timers == nil {
		return
	}
	if err := s.timers.Cancel(context.WithoutCancel(ctx), s.cfg.KeyPrefix+key); err != nil {
		s.log.Warn("timer not cancelled (its expiry will change nothing)", zap.String("key", key), zap.Error(err))
	}
}

func (s *Service) releaseRedis(ctx context.Context, orders ...Order) {
	if s.stock == nil || len(orders) == 0 {
		return
	}
	holds := make([]stock.Hold, len(orders))
	for i, o := range orders {
		holds[i] = stock.Hold{SKU: o.SKU, User: o.UserID, Qty: o.Qty}
	}
	if err := s.stock.Release(context.WithoutCancel(ctx), holds...); err != nil {
		s.log.Warn("stock counter not given back (resync will fix it)", zap.Int("orders", len(orders)), zap.Error(err))
	}
}

// ExpireOrders expires, in one transaction, those of ids that are pending and
// past their pay deadline, and gives their stock back. Orders not due yet get
// their timer set again for the real deadline. It returns how many it moved.
func (s *Service) ExpireOrders(ctx context.Context, ids []int64, source string) (int, error) {
	moved, notDue, err := s.store.Expire(ctx, ids, s.now())
	if err != nil {
		return 0, err
	}
	s.releaseRedis(ctx, moved...)
	s.observe(moved, Expired, source)
	for _, o := range notDue {
		s.schedule(ctx, PayKey(o.ID), o.PayDeadline)
	}
	return len(moved), nil
}

// CompleteOrders confirms receipt, in one transaction, of those of ids that
// are shipped and past their confirm deadline.
func (s *Service) CompleteOrders(ctx context.Context, ids []int64, source string) (int, error) {
	moved, notDue, err := s.store.Complete(ctx, ids, s.now())
	if err != nil {
		return 0, err
	}
	s.observe(moved, Completed, source)
	for _, o := range notDue {
		s.schedule(ctx, ConfirmKey(o.ID), *o.ConfirmDeadline)
	}
	return len(moved), nil
}

func (s *Service) observe(moved []Order, to Status, source string) {
	for _, o := range moved {
		deadline, at := o.PayDeadline, o.CancelledAt
		if to == Completed {
			deadline, at = *o.ConfirmDeadline, o.CompletedAt
		}
		lateness := at.Sub(deadline)
		if s.cfg.OnTransition != nil {
			s.cfg.OnTransition(Transition{To: to, Lateness: lateness, Source: source})
		}
		if source == "sweep" {
			s.log.Info("order rescued by the sweep", zap.Int64("order_id", o.ID),
				zap.String("status", string(to)), zap.Duration("late", lateness))
		}
	}
}

// Sweep applies every overdue transition the database holds: it is what
// makes "nothing lost" true when events are lost. It pages through the
// overdue orders in deadline order and applies the pages as batches,
// SweepWorkers at a time (pages are disjoint, so batches do not contend but
// for stock rows). It returns how many orders it moved.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	var total atomic.Int64
	for _, step := range []struct {
		status Status
		apply  func(context.Context, []int64, string) (int, error)
	}{
		{Pending, s.ExpireOrders},
		{Shipped, s.CompleteOrders},
	} {
		now := s.now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		sem := make(chan struct{}, s.cfg.SweepWorkers)
		var cursor DueCursor
		for {
			ids, next, err := s.store.Due(ctx, step.status, now, cursor, s.cfg.SweepBatch)
			if err != nil {
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				mu.Unlock()
				break
			}
			if len(ids) == 0 {
				break
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				n, err := step.apply(ctx, ids, "sweep")
				total.Add(int64(n))
				if err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
			})
			mu.Lock()
			failed := firstErr != nil
			mu.Unlock()
			if failed || len(ids) < s.cfg.SweepBatch {
				break
			}
			cursor = next
		}
		wg.Wait()
		if firstErr != nil {
			return int(total.Load()), firstErr
		}
	}
	return int(total.Load()), nil
}
