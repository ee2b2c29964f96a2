package expiry

import (
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// maxLoggedKey bounds the bytes of a key written to a log line: keys come
// from anyone who can write to Redis, and one key may be megabytes long.
const maxLoggedKey = 128

// KeyField returns a zap field that logs key as "key", cut to its first
// 128 bytes (at a rune boundary), adding "key_bytes", the full length, when it
// was cut.
func KeyField(key string) zap.Field { return zap.Inline(loggedKey(key)) }

type loggedKey string

func (k loggedKey) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if len(k) <= maxLoggedKey {
		enc.AddString("key", string(k))
		return nil
	}
	cut := maxLoggedKey
	for cut > 0 && !utf8.RuneStart(k[cut]) {
		cut--
	}
	enc.AddString("key", string(k[:cut]))
	enc.AddInt("key_bytes", len(k))
	return nil
}

// sometimes lets one call a period through and counts the others, so a flood
// of bad input costs one log line a period, not one per key.
type sometimes struct {
	period     time.Duration
	next       atomic.Int64 // Unix nanoseconds before which calls are suppressed
	suppressed atomic.Uint64
}

// allow reports whether to log now, and how many calls were suppressed since
// the last allowed one.
func (s *sometimes) allow(now time.Time) (ok bool, suppressed uint64) {
	next := s.next.Load()
	if now.UnixNano() < next || !s.next.CompareAndSwap(next, now.Add(s.period).UnixNano()) {
		s.suppressed.Add(1)
		return false, 0
	}
	return true, s.suppressed.Swap(0)
}
