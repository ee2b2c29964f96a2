package expiry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// A handler that fails (an error other than ErrHandlerNotFound,
// ErrMalformedKey and ErrNoRecord) does not lose its timer: with a
// Scheduler, the listener puts it back in the due index, due after
// RetryDelay, and counts the attempt beside the shard ("<Index>:{n}:attempts",
// with the last error in "<Index>:{n}:errors"). It lives in Redis, so it
// survives a restart and moves with its shard; the reaper hands it over
// again (Event.Attempt counts the failures before). After MaxAttempts it is
// dead: moved to "<Index>:{n}:dead", listed by Scheduler.Dead and counted by
// Inspect, until Scheduler.Rearm sets it due again.

// Names of the keys beside a shard that keep its failing timers.
func attemptsKey(shard string) string { return shard + ":attempts" }
func errorsKey(shard string) string   { return shard + ":errors" }
func deadKey(shard string) string     { return shard + ":dead" }

// Defaults of the retries.
const (
	defaultMaxAttempts = 10
	maxRetryDelay      = 10 * time.Minute
	maxErrorBytes      = 1024
)

// defaultRetryDelay waits 1 s after the first failure and twice as long
// after each one more, up to 10 minutes.
func defaultRetryDelay(failures int) time.Duration {
	if failures > 10 {
		return maxRetryDelay
	}
	return min(time.Second<<(failures-1), maxRetryDelay)
}

// failTimer counts a failed attempt of ARGV[1] (KEYS: the shard, its
// attempts, its errors, its dead set), keeps the error ARGV[5], and sets it
// due at ARGV[2] (Unix ms) again, or moves it to the dead set (scored ARGV[3])
// when the attempts reach ARGV[4]. It returns the attempts and 1 when dead.
var failTimer = redis.NewScript(`
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
if n >= tonumber(ARGV[4]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
  return {n, 1}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {n, 0}`)

// rearmTimer moves ARGV[1] from the dead set back to the shard, due at
// ARGV[2], with its attempts at 0; it returns 0 when it was not dead.
var rearmTimer = redis.NewScript(`
if redis.call('ZREM', KEYS[4], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], 0)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1`)

func (s *Scheduler) failureKeys(key string) (int, []string) {
	i := s.shardOf(key)
	sh := s.shards[i]
	return i, []string{sh, attemptsKey(sh), errorsKey(sh), deadKey(sh)}
}

// retryLater records a failed attempt of ev's timer and sets it due again
// after delay, or parks it in the dead set after maxAttempts. It reports
// whether the timer is dead.
func (s *Scheduler) retryLater(ctx context.Context, ev Event, cause error, delay time.Duration, maxAttempts int) (attempts int, dead bool, err error) {
	i, keys := s.failureKeys(ev.RawKey)
	now := time.Now()
	due := now.Add(delay).UnixMilli()
	msg := cause.Error()
	if len(msg) > maxErrorBytes {
		msg = msg[:maxErrorBytes]
	}
	var c *redis.Cmd
	_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		c = failTimer.Eval(ctx, p, keys, ev.RawKey, due, now.UnixMilli(), maxAttempts, msg)
		if m := wakeMessage([]shardWake{{i, due}}); m != "" {
			p.Publish(ctx, wakeChannel(s.index), m)
		}
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("expiry: retry %q later: %w", ev.RawKey, err)
	}
	v, _ := c.Int64Slice()
	if len(v) == 2 {
		return int(v[0]), v[1] == 1, nil
	}
	return 0, false, nil
}

// succeeded forgets the failed attempts of a timer that was handled at last.
func (s *Scheduler) succeeded(ctx context.Context, rawKey string) error {
	_, keys := s.failureKeys(rawKey)
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, keys[1], rawKey)
		p.HDel(ctx, keys[2], rawKey)
		return nil
	})
	return err
}

// ErrNotDead is returned by Rearm for a key that is not in the dead set.
var ErrNotDead = errors.New("expiry: timer is not dead")

// Rearm sets a dead timer (one whose handler failed MaxAttempts times) due
// now, with its attempts counted from zero again: the holder of its shard
// hands it to the handler at once. It returns ErrNotDead when key is not
// dead.
func (s *Scheduler) Rearm(ctx context.Context, key string) error {
	i, keys := s.failureKeys(key)
	now := time.Now().UnixMilli()
	var c *redis.Cmd
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		c = rearmTimer.Eval(ctx, p, keys, key, now)
		p.Publish(ctx, wakeChannel(s.index), formatWakes([]shardWake{{i, now}}))
		return nil
	})
	if err != nil {
		return fmt.Errorf("expiry: rearm %q: %w", key, err)
	}
	if n, _ := c.Int(); n == 0 {
		return fmt.Errorf("%w: %q", ErrNotDead, key)
	}
	return nil
}

// TimerInfo is one timer of a due index, as Scheduler.Timers and
// Scheduler.Dead read it.
type TimerInfo struct {
	Key       string    // the full key, prefix included
	Shard     string    // the shard's sorted set
	Deadline  time.Time // when it is due (for a dead one: when it died)
	Attempts  int       // failed attempts so far
	LastError string    // the error of the last failed attempt
	Dead      bool      // it failed MaxAttempts times; Rearm sets it due again
}

// Timers lists the timers of shard n (0 ≤ n < Shards) due between from and
// to (zero times: no bound), earliest first, at most limit of them (0: 100),
// with their failed attempts and last error.
func (s *Scheduler) Timers(ctx context.Context, n int, from, to time.Time, limit int) ([]TimerInfo, error) {
	if n < 0 || n >= len(s.shards) {
		return nil, fmt.Errorf("expiry: no shard %d (the index has %d)", n, len(s.shards))
	}
	return s.list(ctx, s.shards[n], s.shards[n], from, to, limit, false)
}

// Dead lists the dead timers of every shard, at most limit per shard (0:
// 100), with their attempts and last error.
func (s *Scheduler) Dead(ctx context.Context, limit int) ([]TimerInfo, error) {
	var out []TimerInfo
	for _, sh := range s.shards {
		ts, err := s.list(ctx, sh, deadKey(sh), time.Time{}, time.Time{}, limit, true)
		if err != nil {
			return out, err
		}
		out = append(out, ts...)
	}
	return out, nil
}

func (s *Scheduler) list(ctx context.Context, shard, set string, from, to time.Time, limit int, dead bool) ([]TimerInfo, error) {
	if limit <= 0 {
		limit = 100
	}
	lo, hi := "-inf", "+inf"
	if !from.IsZero() {
		lo = strconv.FormatInt(from.UnixMilli(), 10)
	}
	if !to.IsZero() {
		hi = strconv.FormatInt(to.UnixMilli(), 10)
	}
	zs, err := s.client.ZRangeByScoreWithScores(ctx, set, &redis.ZRangeBy{Min: lo, Max: hi, Count: int64(limit)}).Result()
	if err != nil || len(zs) == 0 {
		return nil, err
	}
	fields := make([]string, len(zs))
	for i, z := range zs {
		fields[i], _ = z.Member.(string)
	}
	var att, errs *redis.SliceCmd
	if _, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		att = p.HMGet(ctx, attemptsKey(shard), fields...)
		errs = p.HMGet(ctx, errorsKey(shard), fields...)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("expiry: list %s: %w", set, err)
	}
	out := make([]TimerInfo, len(zs))
	for i, z := range zs {
		out[i] = TimerInfo{Key: fields[i], Shard: shard, Deadline: time.UnixMilli(int64(z.Score)), Dead: dead}
		if a, ok := att.Val()[i].(string); ok {
			out[i].Attempts, _ = strconv.Atoi(a)
		}
		if e, ok := errs.Val()[i].(string); ok {
			out[i].LastError = e
		}
	}
	return out, nil
}

// Lookup returns the timer of key (the full key, prefix included) as its
// shard of the due index holds it: its deadline, failed attempts and last
// error, or dead. ok is false when the index holds no timer of key (never
// scheduled, handled already, or written without the Scheduler).
func (s *Scheduler) Lookup(ctx context.Context, key string) (info TimerInfo, ok bool, err error) {
	shard := s.shards[s.shardOf(key)]
	var due, dead *redis.FloatCmd
	var att, last *redis.StringCmd
	_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		due = p.ZScore(ctx, shard, key)
		dead = p.ZScore(ctx, deadKey(shard), key)
		att = p.HGet(ctx, attemptsKey(shard), key)
		last = p.HGet(ctx, errorsKey(shard), key)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return TimerInfo{}, false, fmt.Errorf("expiry: look up %s: %w", key, err)
	}
	info = TimerInfo{Key: key, Shard: shard, LastError: last.Val()}
	info.Attempts, _ = strconv.Atoi(att.Val())
	switch {
	case due.Err() == nil:
		info.Deadline = time.UnixMilli(int64(due.Val()))
	case dead.Err() == nil:
		info.Deadline, info.Dead = time.UnixMilli(int64(dead.Val())), true
	default:
		return TimerInfo{}, false, nil
	}
	return info, true, nil
}
