package stock

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// CacheSoldOut makes Reserve remember, for ttl, each SKU that Redis found
// empty, and answer SoldOut for it without asking Redis: in a flash sale,
// the buyers who come after the last unit cost this process no round trip.
// Units coming back (a Release to an empty counter, a Set) are announced on
// the channel "<prefix>stock:restocked"; run WatchRestocks to forget a SKU's
// flag as soon as they do. The ttl bounds how long a missed announcement
// keeps a SKU wrongly sold out here. Call it before the Counter is used.
func (c *Counter) CacheSoldOut(ttl time.Duration) {
	c.flags = &soldOutFlags{ttl: ttl, until: map[int64]time.Time{}}
}

// restockChannel is where give-backs to empty counters are announced, with
// the SKU as the payload.
func (c *Counter) restockChannel() string { return c.prefix + "stock:restocked" }

// WatchRestocks clears the sold-out flag of every SKU announced as
// restocked, until ctx ends. After each (re)subscription it clears every
// flag: announcements may have been missed meanwhile. onSubscribed, when not
// nil, is called after each subscription is confirmed. Without CacheSoldOut
// it returns at once.
func (c *Counter) WatchRestocks(ctx context.Context, onSubscribed func()) {
	if c.flags == nil {
		return
	}
	ps := c.client.Subscribe(ctx, c.restockChannel())
	defer ps.Close()
	msgs := ps.ChannelWithSubscriptions()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					c.flags.clear()
					if onSubscribed != nil {
						onSubscribed()
					}
				}
			case *redis.Message:
				if sku, err := strconv.ParseInt(m.Payload, 10, 64); err == nil {
					c.flags.forget(sku)
				}
			}
		}
	}
}

// SoldOutCached reports whether Reserve answers SoldOut for sku from memory now.
func (c *Counter) SoldOutCached(sku int64) bool { return c.flags.has(sku) }

// soldOutFlags are the SKUs found empty, each until its flag lapses.
type soldOutFlags struct {
	ttl   time.Duration
	mu    sync.RWMutex
	until map[int64]time.Time
}

func (f *soldOutFlags) has(sku int64) bool {
	if f == nil {
		return false
	}
	f.mu.RLock()
	until, ok := f.until[sku]
	f.mu.RUnlock()
	return ok && time.Now().Before(until)
}

func (f *soldOutFlags) set(sku int64) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.until[sku] = time.Now().Add(f.ttl)
	f.mu.Unlock()
}

func (f *soldOutFlags) forget(sku int64) {
	f.mu.Lock()
	delete(f.until, sku)
	f.mu.Unlock()
}

func (f *soldOutFlags) clear() {
	f.mu.Lock()
	clear(f.until)
	f.mu.Unlock()
}
