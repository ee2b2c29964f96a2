// Package stock keeps a Redis pre-deduction counter per SKU, used to turn
// buyers away fast in a flash sale. The database holds the truth: a counter
// that is wrong or gone costs speed, never an oversold unit.
package stock

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Result is what Reserve decided.
type Result int

// Results of Reserve.
const (
	Reserved      Result = iota // taken from the counter and recorded for the user
	SoldOut                     // the counter has fewer units than asked for
	LimitExceeded               // the user would hold more than the SKU's limit
	Unknown                     // no counter for this SKU in Redis (never set, or flushed)
)

func (r Result) String() string {
	switch r {
	case Reserved:
		return "reserved"
	case SoldOut:
		return "sold_out"
	case LimitExceeded:
		return "limit_exceeded"
	case Unknown:
		return "unknown"
	}
	return "Result(" + strconv.Itoa(int(r)) + ")"
}

// Counter is the Redis side of stock: for each SKU a hash
// "<prefix>stock:{<sku>}" with fields available, limit and seq, and a hash
// "<prefix>stock:{<sku>}:buyers" of units held per user. The hash tag keeps
// both in one Redis Cluster slot. seq counts the changes (a Reserve that took
// units, a Release, a Set), so a reader can tell a counter that nothing moved
// from one that is busy.
type Counter struct {
	client redis.UniversalClient
	prefix string
	flags  *soldOutFlags // nil unless CacheSoldOut was called
}

// NewCounter returns a Counter whose keys start with prefix.
func NewCounter(client redis.UniversalClient, prefix string) *Counter {
	return &Counter{client: client, prefix: prefix}
}

func (c *Counter) keys(sku int64) []string {
	k := c.prefix + "stock:{" + strconv.FormatInt(sku, 10) + "}"
	return []string{k, k + ":buyers"}
}

var reserveScript = redis.NewScript(`
local avail = redis.call('HGET', KEYS[1], 'available')
if not avail then return 3 end
local qty = tonumber(ARGV[2])
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or '0')
if limit > 0 then
  local had = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
  if had + qty > limit then return 2 end
end
if tonumber(avail) < qty then
  if tonumber(avail) <= 0 then return 4 end
  return 1
end
redis.call('HINCRBY', KEYS[1], 'available', -qty)
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
return 0`)

// releaseScript gives units back to one SKU: ARGV[1] is the total, ARGV[2]
// the restock channel, ARGV[3] the SKU, then pairs of user and units. A
// counter that was empty announces that it is not any more, so that the
// processes that cached it as sold out sell again.
var releaseScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  local now = redis.call('HINCRBY', KEYS[1], 'available', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  if now - tonumber(ARGV[1]) <= 0 and now > 0 then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
  end
end
for i = 4, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[2], ARGV[i], -tonumber(ARGV[i+1])) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 0`)

// Reserve atomically checks and takes qty units of sku for user. With
// CacheSoldOut, a SKU that Redis found empty answers SoldOut from memory.
func (c *Counter) Reserve(ctx context.Context, sku, user, qty int64) (Result, error) {
	if c.flags.has(sku) {
		return SoldOut, nil
	}
	n, err := reserveScript.Run(ctx, c.client, c.keys(sku), user, qty).Int()
	if err != nil {
		return Unknown, fmt.Errorf("stock: reserve sku %d: %w", sku, err)
	}
	if n == 4 { // empty: remember it
		c.flags.set(sku)
		return SoldOut, nil
	}
	return Result(n), nil
}

// Hold is qty units of a SKU held by a user: what Release gives back.
type Hold struct {
	SKU, User, Qty int64
}

// Release gives holds back to their counters: one script call per SKU, all in
// one round trip. A counter that is gone stays gone (the next Set, or the
// resync a Reserve triggers, rebuilds it).
func (c *Counter) Release(ctx context.Context, holds ...Hold) error {
	if len(holds) == 0 {
		return nil
	}
	bySKU := map[int64][]any{}
	var skus []int64
	for _, h := range holds {
		args, ok := bySKU[h.SKU]
		if !ok {
			skus = append(skus, h.SKU)
			args = []any{int64(0), c.restockChannel(), h.SKU}
		}
		args[0] = args[0].(int64) + h.Qty
		bySKU[h.SKU] = append(args, h.User, h.Qty)
	}
	_, err := c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, sku := range skus {
			// EVAL: a pipeline cannot fall back from EVALSHA.
			releaseScript.Eval(ctx, p, c.keys(sku), bySKU[sku]...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("stock: release: %w", err)
	}
	return nil
}

// setScript replaces a counter: ARGV[1] is the seq the caller read ("" to
// replace whatever is there), ARGV[2] available, ARGV[3] the limit, then pairs
// of user and units held. It returns 0 when the seq no longer matched.
var setScript = redis.NewScript(`
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= seq then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'available', ARGV[2], 'limit', ARGV[3], 'seq', seq + 1)
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1])
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1`)

// Set replaces the counter of sku: available units, the per-user limit (0 for
// none) and the units each user holds in live orders, atomically.
func (c *Counter) Set(ctx context.Context, sku, available, limit int64, held map[int64]int64) error {
	_, err := c.set(ctx, sku, "", available, limit, held)
	return err
}

// SetIf replaces the counter of sku as Set does, but only if its seq is still
// seq (as State read it): nothing reserved or released in between. It reports
// whether it replaced the counter.
func (c *Counter) SetIf(ctx context.Context, sku, seq, available, limit int64, held map[int64]int64) (bool, error) {
	return c.set(ctx, sku, strconv.FormatInt(seq, 10), available, limit, held)
}

func (c *Counter) set(ctx context.Context, sku int64, seq string, available, limit int64, held map[int64]int64) (bool, error) {
	args := make([]any, 0, 5+2*len(held))
	args = append(args, seq, available, limit, c.restockChannel(), sku)
	for u, q := range held {
		if q > 0 {
			args = append(args, u, q)
		}
	}
	n, err := setScript.Run(ctx, c.client, c.keys(sku), args...).Int()
	if err != nil {
		return false, fmt.Errorf("stock: set sku %d: %w", sku, err)
	}
	return n == 1, nil
}

// State is a SKU's counter as Redis holds it.
type State struct {
	Available int64
	Seq       int64 // changes so far
	OK        bool  // false when Redis has no counter for the SKU
}

// States reads the counters of skus in one round trip.
func (c *Counter) States(ctx context.Context, skus ...int64) ([]State, error) {
	cmds := make([]*redis.SliceCmd, len(skus))
	_, err := c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sku := range skus {
			cmds[i] = p.HMGet(ctx, c.keys(sku)[0], "available", "seq")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stock: read %d counters: %w", len(skus), err)
	}
	out := make([]State, len(skus))
	for i, cmd := range cmds {
		v := cmd.Val()
		a, ok := v[0].(string)
		if !ok {
			continue
		}
		out[i].OK = true
		out[i].Available, _ = strconv.ParseInt(a, 10, 64)
		if q, ok := v[1].(string); ok {
			out[i].Seq, _ = strconv.ParseInt(q, 10, 64)
		}
	}
	return out, nil
}

// Available returns the counter's available units, or ok false when there is
// no counter for sku.
func (c *Counter) Available(ctx context.Context, sku int64) (n int64, ok bool, err error) {
	n, err = c.client.HGet(ctx, c.keys(sku)[0], "available").Int64()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("stock: read sku %d: %w", sku, err)
	}
	return n, true, nil
}
