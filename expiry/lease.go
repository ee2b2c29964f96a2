package expiry

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Lease is a key in Redis that one holder at a time holds: the holder's
// name is its value. Listeners hold the shards of a due index by leases (see
// "Several listeners" in the package documentation); a program that needs one
// process at a time for some work of its own can use the same primitive.
//
// With a TTL the lease lapses unless renewed (Take by its holder renews it);
// without one it stays until released or taken from a holder known to be gone.
type Lease struct {
	Key string
	TTL time.Duration // 0: no TTL
}

// takeLease takes the lease KEYS[1] for ARGV[1] when it is held by ARGV[2]
// ("" for free: a holder known to be gone), or renews it when ARGV[1] holds
// it; with a TTL of ARGV[3] ms ("0": none). It returns 2 when taken, 1 when
// renewed, 0 when another holds it. When KEYS[2] is given (a handover record),
// it returns its members besides: what the last holder handed over.
var takeLease = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
local n = 0
if v == ARGV[1] then
  n = 1
elseif (v == false and ARGV[2] == '') or v == ARGV[2] then
  n = 2
else
  return {0}
end
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
elseif n == 2 then
  redis.call('SET', KEYS[1], ARGV[1])
end
if n == 2 and KEYS[2] then
  return {n, redis.call('ZRANGE', KEYS[2], 0, -1)}
end
return {n}`)

// releaseLease deletes the lease KEYS[1] if ARGV[1] holds it, and returns 1
// if it did. With KEYS[2] (a handover record) it adds ARGV[4..] to it, scored
// ARGV[2] (Unix ms), drops members older than ARGV[3] ms and expires the
// record after ARGV[3] ms.
var releaseLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if KEYS[2] and #ARGV > 3 then
  for i = 4, #ARGV, 500 do
    local args = {}
    for j = i, math.min(i + 499, #ARGV) do
      args[#args + 1] = ARGV[2]
      args[#args + 1] = ARGV[j]
    end
    redis.call('ZADD', KEYS[2], unpack(args))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[2]) - tonumber(ARGV[3])))
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1`)

// Take takes the lease for holder when it is free, or renews it (its TTL
// starts again) when holder holds it. It reports whether holder holds it now.
func (l Lease) Take(ctx context.Context, c redis.Scripter, holder string) (bool, error) {
	n, _, err := l.take(ctx, c, holder, "", "")
	return n > 0, err
}

// Release gives the lease up if holder holds it, and reports whether it did.
func (l Lease) Release(ctx context.Context, c redis.Scripter, holder string) (bool, error) {
	n, err := releaseLease.Run(ctx, c, []string{l.Key}, holder).Int()
	if err != nil {
		return false, fmt.Errorf("expiry: release lease %s: %w", l.Key, err)
	}
	return n == 1, nil
}

// take runs takeLease (see there): from is the holder it may be taken from
// ("" for free); record, when not "", is the handover record to read.
func (l Lease) take(ctx context.Context, c redis.Scripter, holder, from, record string) (int, []string, error) {
	keys := []string{l.Key}
	if record != "" {
		keys = append(keys, record)
	}
	v, err := takeLease.Run(ctx, c, keys, holder, from, strconv.FormatInt(l.TTL.Milliseconds(), 10)).Slice()
	if err != nil {
		return 0, nil, fmt.Errorf("expiry: take lease %s: %w", l.Key, err)
	}
	return parseTake(v)
}

func parseTake(v []any) (int, []string, error) {
	if len(v) == 0 {
		return 0, nil, fmt.Errorf("expiry: take lease: empty reply")
	}
	n, _ := v[0].(int64)
	var rec []string
	if len(v) > 1 {
		ms, _ := v[1].([]any)
		for _, m := range ms {
			if s, ok := m.(string); ok {
				rec = append(rec, s)
			}
		}
	}
	return int(n), rec, nil
}

// defaultID names a listener by its host and process, and a random part
// for two listeners in one process.
func defaultID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), rand.Text()[:6])
}
