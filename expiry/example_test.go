package expiry_test

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/testkit"
)

// Print the ids of orders whose pay timeout expires.
func ExampleListener() {
	rdb := redis.NewClient(&redis.Options{Addr: testkit.RedisAddr(), DB: 2})
	// Give up after a while: without a Redis, go-redis would try for ever.
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()

	mux := expiry.NewServeMux()
	mux.HandleFunc("order_pay:", func(ctx context.Context, ev expiry.Event) error {
		fmt.Println("unpaid order", strings.TrimPrefix(ev.Key, "order_pay:"))
		stop()
		return nil
	})
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{
		OnSubscribe: func(ctx context.Context) {
			rdb.Set(ctx, "order_pay:42", "1", 50*time.Millisecond)
		},
	})
	if err := l.Run(ctx); err != nil {
		fmt.Println(err)
	}
	// Output: unpaid order 42
}

func ExampleServeMux() {
	mux := expiry.NewServeMux()
	mux.HandleFunc("order_", func(_ context.Context, ev expiry.Event) error {
		fmt.Println("some order key:", ev.Key)
		return nil
	})
	mux.HandleFunc("order_confirm:", func(_ context.Context, ev expiry.Event) error {
		fmt.Println("confirm receipt:", ev.Key)
		return nil
	})
	ctx := context.Background()
	mux.HandleExpired(ctx, expiry.Event{Key: "order_confirm:7"})
	mux.HandleExpired(ctx, expiry.Event{Key: "order_refund:7"})
	fmt.Println(mux.HandleExpired(ctx, expiry.Event{Key: "cart:7"}))
	// Output:
	// confirm receipt: order_confirm:7
	// some order key: order_refund:7
	// expiry: no handler for key "cart:7"
}

// On Redis Cluster the listener subscribes on every master and follows
// failovers; the scheduler's shards spread over the masters.
func ExampleListener_cluster() {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}})
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: "shop:due"})
	mux := expiry.NewServeMux()
	mux.HandleFunc("order_pay:", func(ctx context.Context, ev expiry.Event) error { return nil })
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{Scheduler: sched})
	_ = l.Run(context.Background())
}

// Behind Sentinel, give the listener the failover options too, so that its
// subscription follows the master.
func ExampleListener_sentinel() {
	fo := &redis.FailoverOptions{MasterName: "shop", SentinelAddrs: []string{"127.0.0.1:26379"}}
	mux := expiry.NewServeMux()
	l := expiry.NewListener(redis.NewFailoverClient(fo), mux, expiry.ListenerConfig{Sentinel: fo})
	_ = l.Run(context.Background())
}

// Several listeners of one application, in as many processes, share the work
// of its Scheduler: each reaps its share of the due index's shards and
// handles their keys' events. Give each a unique ID (the default is the
// host name, the process id and a random part) and make the handler
// idempotent: leases save work, they do not make it correct.
func ExampleListener_replicas() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: "shop:"}) // index "shop:expiry:due"
	mux := expiry.NewServeMux()
	mux.HandleFunc("order_pay:", func(ctx context.Context, ev expiry.Event) error { return nil })
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{
		Scheduler: sched, // KeyPrefix "shop:" comes from it
		LeaseTTL:  5 * time.Second,
		OnShards: func(held []string, sweeps bool) {
			log.Printf("reaping %d shards; periodic sweep here: %v", len(held), sweeps)
		},
		Interval:   30 * time.Second,
		OnInterval: func(ctx context.Context) { /* sweep: on one listener at a time */ },
	})
	_ = l.Run(context.Background())
}
