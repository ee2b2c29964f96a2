package expiry

import (
	"log/slog"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// maxLoggedKey bounds the bytes of a key written to a log line: keys come
// from anyone who can write to Redis, and one key may be megabytes long.
const maxLoggedKey = 128

// KeyAttr returns a log attribute "key" holding key cut to its first 128
// bytes (at a rune boundary), and "key_bytes", the full length, when it was
// cut: a key comes from whoever writes to Redis, and may be megabytes long.
func KeyAttr(key string) slog.Attr {
	if len(key) <= maxLoggedKey {
		return slog.String("key", key)
	}
	cut := maxLoggedKey
	for cut > 0 && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return slog.Group("", slog.String("key", key[:cut]), slog.Int("key_bytes", len(key)))
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
