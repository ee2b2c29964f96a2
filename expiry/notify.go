package expiry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrNotifyDisabled is wrapped by the error CheckNotify returns when Redis is
// not set to publish expired-key events.
var ErrNotifyDisabled = errors.New("expiry: Redis does not publish expired-key events")

// ErrConfigUnavailable is wrapped by the error CheckNotify and EnableNotify
// return when Redis refuses CONFIG (as many managed services do).
var ErrConfigUnavailable = errors.New("expiry: CONFIG is not available on this Redis")

const notifyHelp = `set notify-keyspace-events to include "E" and "x" (e.g. "Ex"): ` +
	`in redis.conf "notify-keyspace-events Ex", at run time "redis-cli CONFIG SET notify-keyspace-events Ex", ` +
	`or on a managed Redis in its parameter group or configuration page`

// NotifyEnabled reports whether a notify-keyspace-events value makes Redis
// publish keyevent notifications for expired keys.
func NotifyEnabled(flags string) bool {
	return strings.ContainsRune(flags, 'E') &&
		(strings.ContainsRune(flags, 'x') || strings.ContainsRune(flags, 'A'))
}

// CheckNotify reads notify-keyspace-events on every node the client talks
// to (on Redis Cluster every master and replica: the setting is per node, and
// a replica may be promoted) and returns an error that says what to set, and
// how, unless expired-key events are on everywhere.
func CheckNotify(ctx context.Context, client redis.UniversalClient) error {
	nodes, err := clientNodes(ctx, client)
	if err != nil {
		return err
	}
	return checkNotify(ctx, nodes)
}

// EnableNotify adds "Ex" to notify-keyspace-events on every node, keeping the
// flags already set. Call it only when the operator asked for it.
func EnableNotify(ctx context.Context, client redis.UniversalClient) error {
	nodes, err := clientNodes(ctx, client)
	if err != nil {
		return err
	}
	return enableNotify(ctx, nodes)
}

func checkNotify(ctx context.Context, nodes []*redis.Client) error {
	return eachNode(ctx, nodes, func(ctx context.Context, c *redis.Client) error {
		flags, err := notifyFlags(ctx, c)
		if err != nil {
			return err
		}
		if !NotifyEnabled(flags) {
			return fmt.Errorf("%w on %s (notify-keyspace-events is %q); %s",
				ErrNotifyDisabled, c.Options().Addr, flags, notifyHelp)
		}
		return nil
	})
}

func enableNotify(ctx context.Context, nodes []*redis.Client) error {
	return eachNode(ctx, nodes, func(ctx context.Context, c *redis.Client) error {
		flags, err := notifyFlags(ctx, c)
		if err != nil {
			return err
		}
		if NotifyEnabled(flags) {
			return nil
		}
		for _, f := range "Ex" {
			if !strings.ContainsRune(flags, f) {
				flags += string(f)
			}
		}
		if err := c.ConfigSet(ctx, "notify-keyspace-events", flags).Err(); err != nil {
			return configError(c, err)
		}
		return nil
	})
}

// eachNode runs f on every node and joins the errors.
func eachNode(ctx context.Context, nodes []*redis.Client, f func(context.Context, *redis.Client) error) error {
	var errs []error
	for _, c := range nodes {
		if err := f(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func notifyFlags(ctx context.Context, c *redis.Client) (string, error) {
	res, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return "", configError(c, err)
	}
	flags, ok := res["notify-keyspace-events"]
	if !ok {
		return "", fmt.Errorf("%w on %s: CONFIG GET notify-keyspace-events returned nothing; %s",
			ErrConfigUnavailable, c.Options().Addr, notifyHelp)
	}
	return flags, nil
}

func configError(c *redis.Client, err error) error {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return fmt.Errorf("expiry: read notify-keyspace-events on %s: %w", c.Options().Addr, err)
	}
	return fmt.Errorf("%w on %s (%v); make sure expired-key events are on: %s",
		ErrConfigUnavailable, c.Options().Addr, err, notifyHelp)
}

// clientNodes returns a client for every node of client: itself, or on Redis
// Cluster each master and replica.
func clientNodes(ctx context.Context, client redis.UniversalClient) ([]*redis.Client, error) {
	switch c := client.(type) {
	case *redis.Client:
		return []*redis.Client{c}, nil
	case *redis.ClusterClient:
		return clusterTopology{c}.nodes(ctx)
	default:
		return nil, fmt.Errorf("expiry: unsupported client type %T", client)
	}
}
