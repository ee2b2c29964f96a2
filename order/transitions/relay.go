package transitions

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/orderd/orderd/order"
)

// Config configures a Relay. Stream and LeaseKey are required.
type Config struct {
	// Stream is the stream's key (order.Keys.Transitions).
	Stream string
	// LeaseKey is the key of the lease that lets one relay work at a time
	// (order.Keys.TransitionsRelay).
	LeaseKey string
	// MaxLen caps the stream near this many entries (XADD MAXLEN ~): Redis
	// trims the oldest in whole blocks, so the stream may hold a few more.
	// If zero, 1,000,000 is used.
	MaxLen int64
	// ID names this relay in the lease; relays sharing a stream need
	// different ones. If empty, "<hostname>:<pid>:<random>" is used.
	ID string
	// LeaseTTL is how long the lease outlives its holder's last renewal: a
	// relay that dies is replaced after at most LeaseTTL plus one renewal
	// interval (LeaseTTL/5). If zero, 5 s is used.
	LeaseTTL time.Duration
	// Batch is the most outbox records one round reads and appends (a
	// record holds one transition, or the batch of up to 1,000 that one
	// transaction made). If zero, 20 is used.
	Batch int
	// Poll is how long the holder waits, when the outbox is empty, before
	// reading it again (Wake cuts it short). If zero, 50 ms is used.
	Poll time.Duration
	// Timeout bounds each call to Redis or the database. If zero, 5 s is used.
	Timeout time.Duration
	// Logger receives the relay's log lines. If nil, nothing is logged.
	Logger *zap.Logger
	// OnRelay, if set, is called after each round with the transitions
	// appended.
	OnRelay func(n int)
	// OnLease, if set, is called when this relay takes or loses the lease.
	OnLease func(held bool)
}

// Relay moves the changes of an outbox to the transitions stream, while it
// holds the lease. Start it with Run.
type Relay struct {
	outbox order.Outbox
	rdb    redis.UniversalClient
	cfg    Config
	log    *zap.Logger
	wake   chan struct{}

	unDeleted []int64 // appended, but their deletion from the outbox failed
}

// NewRelay returns a Relay from outbox to the stream cfg.Stream on rdb.
func NewRelay(outbox order.Outbox, rdb redis.UniversalClient, cfg Config) *Relay {
	if cfg.Stream == "" || cfg.LeaseKey == "" {
		panic("transitions: Config.Stream and Config.LeaseKey are required")
	}
	if cfg.MaxLen <= 0 {
		cfg.MaxLen = 1_000_000
	}
	if cfg.ID == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "unknown"
		}
		cfg.ID = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), rand.Text()[:6])
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 5 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 20
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Relay{outbox: outbox, rdb: rdb, cfg: cfg, log: log.With(zap.String("stream", cfg.Stream)), wake: make(chan struct{}, 1)}
}

// ID returns the name this relay holds the lease under.
func (r *Relay) ID() string { return r.cfg.ID }

// Wake tells the relay that changes were committed, so that a holder
// waiting for its next poll reads the outbox at once. It never blocks.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// takeLease takes the lease, or renews it when this relay holds it.
var takeLease = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`)

// dropLease gives the lease up if this relay holds it.
var dropLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// Run relays until ctx ends: it bids for the lease every LeaseTTL/5 (plus
// jitter), and while it holds it, appends the outbox's changes to the
// stream and deletes them from the outbox. When ctx ends it relays what the
// outbox still holds (for up to a Timeout), gives the lease up and returns
// nil. Failures of Redis or the database are logged and retried; they never
// end Run.
func (r *Relay) Run(ctx context.Context) error {
	interval := r.cfg.LeaseTTL / 5
	var held bool
	var renewAt, validUntil time.Time
	defer func() {
		if held {
			r.finish(time.Now().Before(validUntil))
			if r.cfg.OnLease != nil {
				r.cfg.OnLease(false)
			}
		}
	}()
	failures := 0
	for ctx.Err() == nil {
		if now := time.Now(); !now.Before(renewAt) {
			ok, err := r.bid(ctx)
			if err != nil && ctx.Err() == nil {
				r.log.Warn("transitions relay: cannot reach the lease in Redis", zap.Error(err))
			}
			if ok != held {
				held = ok
				if held {
					r.log.Info("relaying transitions to the stream", zap.String("relay", r.cfg.ID))
				} else {
					r.log.Info("no longer relaying transitions (another process does)", zap.String("relay", r.cfg.ID))
				}
				if r.cfg.OnLease != nil {
					r.cfg.OnLease(held)
				}
			}
			if held {
				validUntil = now.Add(r.cfg.LeaseTTL - interval)
			}
			renewAt = now.Add(interval + mrand.N(interval/10+1))
		}
		if !held || time.Now().After(validUntil) {
			r.sleep(ctx, time.Until(renewAt), false)
			continue
		}
		n, err := r.round(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			failures++
			r.log.Warn("transitions not relayed yet; they stay in the outbox and are tried again",
				zap.Int("failures", failures), zap.Error(err))
			r.sleep(ctx, min(time.Duration(failures)*100*time.Millisecond, 2*time.Second, time.Until(renewAt)), false)
		case n < r.cfg.Batch:
			failures = 0
			r.sleep(ctx, min(r.cfg.Poll, time.Until(renewAt)), true)
		default:
			failures = 0
		}
	}
	return nil
}

// sleep waits for d, ctx's end or (when wakeable) a Wake.
func (r *Relay) sleep(ctx context.Context, d time.Duration, wakeable bool) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	wake := r.wake
	if !wakeable {
		wake = nil
	}
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
}

// bid takes or renews the lease.
func (r *Relay) bid(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	n, err := takeLease.Run(ctx, r.rdb, []string{r.cfg.LeaseKey}, r.cfg.ID, r.cfg.LeaseTTL.Milliseconds()).Int()
	return n == 1, err
}

// finish relays what the outbox holds (when the lease is still good),
// bounded by one Timeout, and gives the lease up: a clean stop leaves
// nothing for the next holder to wait for.
func (r *Relay) finish(valid bool) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
	defer cancel()
	for valid {
		n, err := r.round(ctx)
		if err != nil {
			r.log.Warn("transitions left in the outbox at stop; the next relay appends them", zap.Error(err))
			break
		}
		if n < r.cfg.Batch {
			break
		}
	}
	if err := dropLease.Run(ctx, r.rdb, []string{r.cfg.LeaseKey}, r.cfg.ID).Err(); err != nil {
		r.log.Warn("transitions relay lease not given up; another process takes it when it expires", zap.Error(err))
	}
}

// appendMany appends entries to the stream KEYS[1], capped near ARGV[1].
// ARGV[2…] come in fives, one per group of changes sharing a transition:
// from, to, at, source, and the orders as "order_id:user_id:sku:qty,…". The
// fields are those of Values. One call carries many entries, and the relay
// sends one string per group rather than eight values per entry: far cheaper
// for both than a command each.
var appendMany = redis.NewScript(`
local n = 0
for i = 2, #ARGV, 5 do
  for id, user, sku, qty in string.gmatch(ARGV[i+4], '(-?%d+):(-?%d+):(-?%d+):(-?%d+)') do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
      'order_id', id, 'user_id', user, 'sku', sku, 'qty', qty,
      'from', ARGV[i], 'to', ARGV[i+1], 'at', ARGV[i+2], 'source', ARGV[i+3])
    n = n + 1
  end
end
return n`)

// entriesPerCall bounds, roughly, the entries of one appendMany call.
const entriesPerCall = 2000

// round appends the changes of up to Batch outbox records to the stream, in
// calls of up to 1,000 entries, then deletes the records. It returns how many
// records it read.
func (r *Relay) round(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if len(r.unDeleted) > 0 {
		// Appended already: delete them before reading, or they would be
		// appended again.
		if err := r.outbox.DeleteChanges(ctx, r.unDeleted); err != nil {
			return 0, err
		}
		r.unDeleted = nil
	}
	cs, err := r.outbox.PendingChanges(ctx, r.cfg.Batch)
	if err != nil || len(cs) == 0 {
		return 0, err
	}
	var seqs []int64
	args := []any{r.cfg.MaxLen}
	entries := 0
	var list []byte
	call := func() error {
		if entries == 0 {
			return nil
		}
		n, err := appendMany.Run(ctx, r.rdb, []string{r.cfg.Stream}, args...).Int()
		if err == nil && n != entries {
			err = fmt.Errorf("appended %d entries of %d", n, entries)
		}
		args, entries = args[:1], 0
		if err != nil {
			return fmt.Errorf("append to %s: %w", r.cfg.Stream, err)
		}
		return nil
	}
	for i, c := range cs {
		if i > 0 && c.Seq == cs[i-1].Seq && c.To == cs[i-1].To && c.At.Equal(cs[i-1].At) && c.Source == cs[i-1].Source {
			list = append(list, ',') // the same group
		} else {
			if len(list) > 0 {
				args = append(args, string(list))
				list = list[:0]
				if entries >= entriesPerCall {
					if err := call(); err != nil {
						return 0, err
					}
				}
			}
			args = append(args, string(c.From), string(c.To), c.At.UTC().Format(timeLayout), c.Source)
			if len(seqs) == 0 || seqs[len(seqs)-1] != c.Seq {
				seqs = append(seqs, c.Seq)
			}
		}
		list = order.AppendOrderRef(list, c.OrderID, c.UserID, c.SKU, c.Qty)
		entries++
	}
	args = append(args, string(list))
	if err := call(); err != nil {
		return 0, err
	}
	if r.cfg.OnRelay != nil {
		r.cfg.OnRelay(len(cs))
	}
	if err := r.outbox.DeleteChanges(ctx, seqs); err != nil {
		r.unDeleted = seqs
		return len(seqs), err
	}
	return len(seqs), nil
}
