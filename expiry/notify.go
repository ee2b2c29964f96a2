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

// CheckNotify reads notify-keyspace-events on every master the client talks
// to and returns an error that says what to set, and how, unless expired-key
// events are on.
func CheckNotify(ctx context.Context, client redis.UniversalClient) error {
	return forEachMaster(ctx, client, func(ctx context.Context, c *redis.Client) error {
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

// EnableNotify adds "Ex" to notify-keyspace-events on every master, keeping the
// flags already set. Call it only when the operator asked for it.
func EnableNotify(ctx context.Context, client redis.UniversalClient) error {
	return forEachMaster(ctx, client, func(ctx context.Context, c *redis.Client) error {
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

func forEachMaster(ctx context.Context, client redis.UniversalClient, f func(context.Context, *redis.Client) error) error {
	switch c := client.(type) {
	case *redis.Client:
		return f(ctx, c)
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, f)
	default:
		return fmt.Errorf("expiry: unsupported client type %T", client)
	}
}
