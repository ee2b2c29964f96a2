package expiry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrEvictionUnsafe is wrapped by the error CheckEviction returns when Redis
// may evict keys that have no TTL.
var ErrEvictionUnsafe = errors.New("expiry: Redis may evict keys that have no TTL")

const evictionHelp = `set maxmemory-policy to noeviction or a volatile-* policy (volatile-lru, volatile-lfu, volatile-ttl, volatile-random): ` +
	`in redis.conf "maxmemory-policy noeviction", at run time "redis-cli CONFIG SET maxmemory-policy noeviction", ` +
	`or on a managed Redis in its parameter group or configuration page`

// EvictionSafe reports whether a maxmemory-policy value keeps the keys that
// have no TTL: the due index, the leases, and whatever else an app keeps
// without one (a stream, a counter). The allkeys-* policies evict any key
// once maxmemory is reached, and evict them silently.
func EvictionSafe(policy string) bool { return !strings.HasPrefix(policy, "allkeys-") }

// CheckEviction reads maxmemory-policy on every node the client talks to (on
// Redis Cluster every master and replica) and returns an error wrapping
// ErrEvictionUnsafe, saying what to set, when a node may evict keys that
// have no TTL. A Redis that refuses CONFIG gives an error wrapping
// ErrConfigUnavailable.
func CheckEviction(ctx context.Context, client redis.UniversalClient) error {
	nodes, err := clientNodes(ctx, client)
	if err != nil {
		return err
	}
	return checkEviction(ctx, nodes)
}

func checkEviction(ctx context.Context, nodes []*redis.Client) error {
	return eachNode(ctx, nodes, func(ctx context.Context, c *redis.Client) error {
		res, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
		if err != nil {
			var rerr redis.Error
			if errors.As(err, &rerr) {
				return fmt.Errorf("%w on %s (%v): make sure maxmemory-policy keeps keys without a TTL: %s",
					ErrConfigUnavailable, c.Options().Addr, err, evictionHelp)
			}
			return fmt.Errorf("expiry: read maxmemory-policy on %s: %w", c.Options().Addr, err)
		}
		if policy, ok := res["maxmemory-policy"]; ok && !EvictionSafe(policy) {
			return fmt.Errorf("%w on %s (maxmemory-policy is %q: the due index, the leases and any key without a TTL go first when memory runs short); %s",
				ErrEvictionUnsafe, c.Options().Addr, policy, evictionHelp)
		}
		return nil
	})
}
