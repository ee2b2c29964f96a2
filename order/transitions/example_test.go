package transitions_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/transitions"
)

// A shop's program reads the transitions stream in a consumer group,
// reacts to each transition once (delivery is at least once: deduplicate by
// order id and status) and acknowledges it. contrib/examples/consumer is the
// whole program.
func ExampleDecode() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	stream := order.Keys{Prefix: ""}.Transitions() // orderd's --key-prefix
	err := rdb.XGroupCreateMkStream(ctx, stream, "shop", "$").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		panic(err)
	}
	for {
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: "shop", Consumer: "worker-1", Streams: []string{stream, ">"}, Count: 100, Block: 5 * time.Second,
		}).Result()
		if err != nil {
			continue // redis.Nil: nothing new
		}
		for _, m := range res[0].Messages {
			t, err := transitions.Decode(m.Values)
			if err == nil {
				fmt.Printf("order %d: %s → %s at %v (%s)\n", t.OrderID, t.From, t.To, t.At, t.Source)
			}
			rdb.XAck(ctx, stream, "shop", m.ID)
		}
	}
}
