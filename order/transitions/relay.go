package transitions

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
)

// Config configures a Relay. Stream and LeaseKey are required.
type Config struct {
	// Stream is the stream's key (order.Keys.Transitions).
	Stream string
	// LeaseKey is the key of the lease that lets one relay work at a time
	// (order.Keys.TransitionsRelay). It must share the stream's hash slot
	// (order.SameSlot): the append checks it, in one script.
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
	// interval (LeaseTTL/3). If zero, 5 s is used.
	LeaseTTL time.Duration
	// Batch is the most outbox records one round reads and appends (a
	// record holds one transition, or the batch of up to 1,000 that one
	// transaction made). If zero, 20 is used.
	Batch int
	// Poll is how long the holder waits, when the outbox is empty, before
	// reading it again (Wake cuts it short). If zero, 50 ms is used.
	Poll time.Duration
	// Linger is the least time from the start of a round that found
	// records to the start of the next: while changes keep being committed
	// (a batch every few milliseconds), a Wake within Linger waits for the
	// rest of it, and the next round takes what gathered meanwhile. A change
	// committed after a quiet spell is read at once. Each round costs a
	// commit (the records' deletion) and calls to Redis; without the
	// linger there is a round per batch committed, and they compete with
	// the batches for the database. If zero, 20 ms is used; negative: none.
	Linger time.Duration
	// Timeout bounds each call to Redis or the database. If zero, 5 s is used.
	Timeout time.Duration
	// Logger receives the relay's log lines. If nil, nothing is logged.
	Logger *zap.Logger
	// OnRelay, if set, is called after each round with the transitions
	// appended.
	OnRelay func(n int)
	// OnLease, if set, is called when this relay takes or loses the lease.
	OnLease func(held bool)
	// OnVanished, if set, is called when the relay finds that the entry it
	// (or another relay) appended last is no longer the stream's last: the
	// stream was deleted, or evicted by a maxmemory-policy that evicts keys
	// without a TTL, or its last entry was deleted.
	OnVanished func()
}

// Relay moves the changes of an outbox to the transitions stream, while it
// holds the lease. Start it with Run.
type Relay struct {
	outbox order.Outbox
	rdb    redis.UniversalClient
	cfg    Config
	log    *zap.Logger
	wake   chan struct{}

	record    string  // sorted set of the outbox seqs appended and maybe not yet deleted
	lastKey   string  // holds the ID of the last entry appended, for every relay
	token     string  // the lease's value while this relay holds it: a fencing token
	lastID    string  // the ID of the last entry this relay appended
	unDeleted []int64 // appended, but their deletion from the outbox failed
	cfgErr    error   // a configuration that cannot work: Run returns it
}

// defaultLinger is Config.Linger's default: at most 50 rounds a second
// where a batch committed every 3 ms or so (the benchmark's steady scenario,
// 1,000 expiries a second) could wake one each (BENCHMARKS.md, round 6).
const defaultLinger = 20 * time.Millisecond

// errFenced is a round's error when the lease was no longer this relay's at
// the append (it paused, say, and another relay took over): nothing was
// appended, the other relay appends the records.
var errFenced = errors.New("transitions relay: the lease passed to another relay before the append")

// NewRelay returns a Relay from outbox to the stream cfg.Stream on rdb.
func NewRelay(outbox order.Outbox, rdb redis.UniversalClient, cfg Config) *Relay {
	var cfgErr error
	if cfg.Stream == "" || cfg.LeaseKey == "" {
		cfgErr = errors.New("transitions: Config.Stream and Config.LeaseKey are required")
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
	if cfg.Linger == 0 {
		cfg.Linger = defaultLinger
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Relay{outbox: outbox, rdb: rdb, cfg: cfg, log: log.With(zap.String("stream", cfg.Stream)), wake: make(chan struct{}, 1), cfgErr: cfgErr,
		record: order.SameSlot(cfg.Stream, ":relayed"), lastKey: order.SameSlot(cfg.Stream, ":last")}
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

// Run relays until ctx ends: it bids for the lease every LeaseTTL/3 (plus
// jitter), and while it holds it, appends the outbox's changes to the
// stream and deletes them from the outbox. When ctx ends it relays what the
// outbox still holds (for up to a Timeout), gives the lease up and returns
// nil. Failures of Redis or the database are logged and retried; they never
// end Run. A Config without Stream or LeaseKey is an error Run returns at
// once.
func (r *Relay) Run(ctx context.Context) error {
	if r.cfgErr != nil {
		return r.cfgErr
	}
	interval := r.cfg.LeaseTTL / 3
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
		start := time.Now()
		n, err := r.round(ctx)
		switch {
		case errors.Is(err, errFenced):
			held, renewAt = false, time.Time{}
			r.log.Info("no longer relaying transitions: the lease passed to another relay, which appends what this one had read",
				zap.String("relay", r.cfg.ID))
			if r.cfg.OnLease != nil {
				r.cfg.OnLease(false)
			}
		case err != nil && ctx.Err() == nil:
			failures++
			r.log.Warn("transitions not relayed yet; they stay in the outbox and are tried again",
				zap.Int("failures", failures), zap.Error(err))
			r.sleep(ctx, min(time.Duration(failures)*100*time.Millisecond, 2*time.Second, time.Until(renewAt)), false)
		case n < r.cfg.Batch:
			failures = 0
			r.sleep(ctx, min(r.cfg.Poll, time.Until(renewAt)), true)
			if n > 0 { // changes are coming: let the next ones gather (Linger)
				r.sleep(ctx, min(time.Until(start.Add(r.cfg.Linger)), time.Until(renewAt)), false)
			}
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

// lease is the relay's lease: the same kind as the listeners' (expiry.Lease).
func (r *Relay) lease() expiry.Lease { return expiry.Lease{Key: r.cfg.LeaseKey, TTL: r.cfg.LeaseTTL} }

// bid takes or renews the lease. Each take holds it under a new token
// (the relay's ID and a random part), which the append checks: a relay that
// paused past its lease's end appends nothing once another took it, even if
// it renews later.
func (r *Relay) bid(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if r.token == "" {
		r.token = r.cfg.ID + "#" + rand.Text()[:8]
	}
	held, err := r.lease().Take(ctx, r.rdb, r.token)
	if err == nil && !held {
		r.token = "" // another holds it; the next take is a new one
	}
	return held, err
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
	token := r.token
	r.token = ""
	if _, err := r.lease().Release(ctx, r.rdb, token); err != nil {
		r.log.Warn("transitions relay lease not given up; another process takes it when it expires", zap.Error(err))
	}
}

// appendMany appends entries to the stream KEYS[1], capped near ARGV[1],
// if the lease KEYS[2] still holds this relay's token ARGV[2]; else it
// appends nothing and returns -1. ARGV[5…] come in sevens, one per outbox
// record (a group of changes sharing a transition): its seq, from, to, at,
// source, deadline (empty but for a moved deadline), and the orders as
// "order_id:user_id:sku:qty,…". The fields are
// those of Values. One call carries many entries, and the relay sends one
// string per group rather than eight values per entry: far cheaper for both
// than a command each.
//
// The append and the record of it are one: each record's seq goes into the
// sorted set KEYS[3] as it is appended, and a seq found there is skipped,
// so a record appended by a relay that paused or died before deleting it
// from the outbox is never appended again by the next. Seqs below ARGV[3]
// (the smallest seq still in the outbox when the caller read it) are
// deleted from the outbox already and forgotten. KEYS[4] keeps the ID of
// the last entry appended; when the stream's last entry is another (the
// stream was deleted or evicted) the reply says so. ARGV[4] is that ID as
// the caller remembers it, for when KEYS[4] went too.
//
// It returns {entries appended, records skipped, 1 if the last entry had
// vanished else 0}.
var appendMany = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {-1, 0, 0}
end
local last = redis.call('GET', KEYS[4])
if not last then last = ARGV[4] end
local vanished = 0
if last ~= '' then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #top == 0 or top[1][1] ~= last then vanished = 1 end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[3])
local n, skipped, id = 0, 0, nil
for i = 5, #ARGV, 7 do
  if redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    skipped = skipped + 1
  else
    for oid, user, sku, qty in string.gmatch(ARGV[i+6], '(-?%d+):(-?%d+):(-?%d+):(-?%d+)') do
      if ARGV[i+5] == '' then
        id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
          'order_id', oid, 'user_id', user, 'sku', sku, 'qty', qty,
          'from', ARGV[i+1], 'to', ARGV[i+2], 'at', ARGV[i+3], 'source', ARGV[i+4])
      else
        id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
          'order_id', oid, 'user_id', user, 'sku', sku, 'qty', qty,
          'from', ARGV[i+1], 'to', ARGV[i+2], 'at', ARGV[i+3], 'source', ARGV[i+4], 'deadline', ARGV[i+5])
      end
      n = n + 1
    end
    redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i])
  end
end
if id then
  redis.call('SET', KEYS[4], id)
end
return {n, skipped, vanished, id or ''}`)

// entriesPerCall bounds, roughly, the entries of one appendMany call.
const entriesPerCall = 2000

// round appends the changes of up to Batch outbox records to the stream, in
// calls of up to about 2,000 entries, then deletes the records. It returns
// how many records it read.
func (r *Relay) round(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if len(r.unDeleted) > 0 {
		// Appended already: delete them before reading, or they would be
		// read again (and skipped by the script, at a cost).
		if err := r.outbox.DeleteChanges(ctx, r.unDeleted); err != nil {
			return 0, err
		}
		r.forget(ctx, r.unDeleted)
		r.unDeleted = nil
	}
	cs, err := r.outbox.PendingChanges(ctx, r.cfg.Batch)
	if err != nil || len(cs) == 0 {
		return 0, err
	}
	head := []any{r.cfg.MaxLen, r.token, cs[0].Seq, ""} // cs are in seq order
	var seqs []int64
	args := slices.Clone(head)
	entries, skipped := 0, 0
	var list []byte
	call := func() error {
		if len(args) == len(head) {
			return nil
		}
		args[3] = r.lastID
		res, err := appendMany.Run(ctx, r.rdb, []string{r.cfg.Stream, r.cfg.LeaseKey, r.record, r.lastKey}, args...).Slice()
		args = args[:len(head)]
		want := entries
		entries = 0
		if err != nil {
			return fmt.Errorf("append to %s: %w", r.cfg.Stream, err)
		}
		n, _ := res[0].(int64)
		if n < 0 {
			return errFenced
		}
		s, _ := res[1].(int64)
		skipped += int(s)
		if v, _ := res[2].(int64); v == 1 {
			r.log.Error("the transitions stream lost entries it had: its last entry, appended by orderd, is gone " +
				"(the stream was deleted, or evicted: set maxmemory-policy to noeviction or a volatile-* policy)")
			if r.cfg.OnVanished != nil {
				r.cfg.OnVanished()
			}
		}
		if id, _ := res[3].(string); id != "" {
			r.lastID = id
		}
		if s == 0 && int(n) != want {
			return fmt.Errorf("append to %s: appended %d entries of %d", r.cfg.Stream, n, want)
		}
		return nil
	}
	for i, c := range cs {
		if i > 0 && c.Seq == cs[i-1].Seq && c.To == cs[i-1].To && c.At.Equal(cs[i-1].At) && c.Source == cs[i-1].Source &&
			c.Deadline.Equal(cs[i-1].Deadline) {
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
			deadline := ""
			if !c.Deadline.IsZero() {
				deadline = c.Deadline.UTC().Format(timeLayout)
			}
			args = append(args, c.Seq, string(c.From), string(c.To), c.At.UTC().Format(timeLayout), c.Source, deadline)
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
	if skipped > 0 {
		r.log.Info("outbox records appended to the stream already (by a relay that stopped before deleting them): not appended again",
			zap.Int("records", skipped))
	}
	if r.cfg.OnRelay != nil {
		r.cfg.OnRelay(len(cs))
	}
	if err := r.outbox.DeleteChanges(ctx, seqs); err != nil {
		r.unDeleted = seqs
		return len(seqs), err
	}
	r.forget(ctx, seqs)
	return len(seqs), nil
}

// forget removes from the record the seqs of records deleted from the
// outbox: they cannot be read again. (Left behind, a database whose seqs
// start over, restored or new, would find its records taken for appended.
// Those below the outbox's smallest seq go at the next append anyway.)
func (r *Relay) forget(ctx context.Context, seqs []int64) {
	members := make([]any, len(seqs))
	for i, s := range seqs {
		members[i] = s
	}
	if err := r.rdb.ZRem(ctx, r.record, members...).Err(); err != nil {
		r.log.Debug("relayed records not forgotten yet", zap.Error(err))
	}
}
