package order

import (
	"strconv"
	"strings"
)

// Key prefixes of the two timers, before any --key-prefix.
const (
	PayKeyPrefix     = "order_pay:"
	ConfirmKeyPrefix = "order_confirm:"
)

// PayKey and ConfirmKey name an order's timers (without --key-prefix).
func PayKey(id int64) string     { return PayKeyPrefix + strconv.FormatInt(id, 10) }
func ConfirmKey(id int64) string { return ConfirmKeyPrefix + strconv.FormatInt(id, 10) }

// Keys names every Redis key orderd writes, all under one prefix (the
// --key-prefix): the timer keys, the due index, the stock counters and the
// transitions stream. It is the one place that builds them.
type Keys struct {
	// Prefix goes before every key (e.g. the prefix a Laravel app's Redis
	// connection and cache store put before theirs). It may be empty.
	Prefix string
}

// Pay and Confirm name an order's timer keys, prefix included.
func (k Keys) Pay(id int64) string     { return k.Prefix + PayKey(id) }
func (k Keys) Confirm(id int64) string { return k.Prefix + ConfirmKey(id) }

// DueIndex names the due index (expiry.SchedulerConfig.Index): its shards
// are "<DueIndex>:{n}".
func (k Keys) DueIndex() string { return k.Prefix + "orderd:due" }

// Stock is the prefix of the stock counters (stock.NewCounter): they are
// "<Stock>stock:{<sku>}" and "<Stock>stock:{<sku>}:buyers".
func (k Keys) Stock() string { return k.Prefix }

// Transitions names the stream of order transitions.
func (k Keys) Transitions() string { return k.Prefix + "orderd:transitions" }

// TransitionsRelay names the lease held by the one process that relays the
// outbox to the transitions stream. It shares the stream's hash slot (on
// Redis Cluster, the same node), so that the relay's script can check the
// lease where it appends.
func (k Keys) TransitionsRelay() string { return SameSlot(k.Transitions(), ":relay") }

// SameSlot returns key+suffix made to hash to key's Redis Cluster slot: a
// key with a hash tag ("{…}") keeps it; another is wrapped in one.
func SameSlot(key, suffix string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key + suffix
		}
	}
	return "{" + key + "}" + suffix
}
