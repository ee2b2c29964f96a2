package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// redisTarget is a parsed --redis-url: one server, a Cluster (seed nodes) or
// a master behind Sentinel.
type redisTarget struct {
	single   *redis.Options
	cluster  *redis.ClusterOptions
	sentinel *redis.FailoverOptions
}

// parseRedisURL reads the three forms of --redis-url: redis[s]://host:port/db,
// redis[s]+cluster://host:port[?addr=host:port…] and
// redis[s]+sentinel://host:port[/db]?master_name=NAME[&addr=host:port…],
// with the query parameters go-redis's ParseURL, ParseClusterURL and
// ParseFailoverURL accept.
func parseRedisURL(raw string) (redisTarget, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return redisTarget{}, fmt.Errorf("want redis://host:port/db, redis+cluster://host:port or redis+sentinel://host:port?master_name=NAME")
	}
	base, kind, _ := strings.Cut(scheme, "+")
	if base != "redis" && base != "rediss" && base != "unix" {
		return redisTarget{}, fmt.Errorf("unknown scheme %q: use redis, rediss, redis+cluster, rediss+cluster, redis+sentinel or rediss+sentinel", scheme)
	}
	plain := base + "://" + rest
	switch {
	case kind == "":
		o, err := redis.ParseURL(plain)
		if err != nil {
			return redisTarget{}, err
		}
		o.PoolSize = max(o.PoolSize, 64)
		return redisTarget{single: o}, nil
	case kind == "cluster" && base != "unix":
		o, err := redis.ParseClusterURL(plain)
		if err != nil {
			return redisTarget{}, err
		}
		o.PoolSize = max(o.PoolSize, 64)
		return redisTarget{cluster: o}, nil
	case kind == "sentinel" && base != "unix":
		o, err := redis.ParseFailoverURL(plain)
		if err != nil {
			return redisTarget{}, err
		}
		if o.MasterName == "" {
			return redisTarget{}, fmt.Errorf("a sentinel URL needs ?master_name=NAME")
		}
		o.PoolSize = max(o.PoolSize, 64)
		return redisTarget{sentinel: o}, nil
	default:
		return redisTarget{}, fmt.Errorf("unknown scheme %q", scheme)
	}
}

// client returns a new client for the target.
func (t redisTarget) client() redis.UniversalClient {
	switch {
	case t.cluster != nil:
		return redis.NewClusterClient(t.cluster)
	case t.sentinel != nil:
		return redis.NewFailoverClient(t.sentinel)
	default:
		return redis.NewClient(t.single)
	}
}

// db is the Redis database number (0 on Cluster).
func (t redisTarget) db() int {
	switch {
	case t.cluster != nil:
		return 0
	case t.sentinel != nil:
		return t.sentinel.DB
	default:
		return t.single.DB
	}
}

// String says where the target is, for messages and logs.
func (t redisTarget) String() string {
	switch {
	case t.cluster != nil:
		return "cluster " + strings.Join(t.cluster.Addrs, ",")
	case t.sentinel != nil:
		return "master " + t.sentinel.MasterName + " via sentinels " + strings.Join(t.sentinel.SentinelAddrs, ",")
	default:
		return t.single.Addr
	}
}

// eachMaster runs f on every master of client (the client itself when it
// is not a cluster's): for commands that act on one node, as SCAN.
func eachMaster(ctx context.Context, client redis.UniversalClient, f func(context.Context, redis.UniversalClient) error) error {
	if c, ok := client.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return f(ctx, n) })
	}
	return f(ctx, client)
}
