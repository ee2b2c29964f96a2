// Command consumer is a shop's Go program reading orderd's transitions
// stream with a consumer group: it prints every transition of an order
// (created, paid, cancelled, expired, shipped, completed) as a JSON line,
// once, and acknowledges it.
//
//	go run ./contrib/examples/consumer --redis-url redis://127.0.0.1:6379/0 --group shop
//
// Several consumers with one --group share the entries; each group sees them
// all. Delivery is at least once, so a transition may arrive twice (after a
// failure in orderd, or when a consumer dies before its XACK): the consumer
// deduplicates by order id and the status moved to (and the new deadline, for
// an entry that moved one). A real program does that in its own database (a
// unique key on order id + status + deadline) in the transaction
// that reacts to the transition, and acknowledges after it commits.
//
// --until ORDER_ID:STATUS exits 0 once that transition arrived (and 1 when
// --timeout passes first), for scripts and tests.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/transitions"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

type options struct {
	redisURL, prefix, group, consumer, from, until string
	timeout                                        time.Duration
}

func run() error {
	host, _ := os.Hostname()
	var o options
	flag.StringVar(&o.redisURL, "redis-url", "redis://127.0.0.1:6379/0", "the Redis orderd writes to")
	flag.StringVar(&o.prefix, "key-prefix", "", "orderd's --key-prefix: the stream is <prefix>orderd:transitions")
	flag.StringVar(&o.group, "group", "shop", "consumer group")
	flag.StringVar(&o.consumer, "consumer", host+":"+strconv.Itoa(os.Getpid()), "this consumer's name in the group")
	flag.StringVar(&o.from, "from", "$", "where a new group starts: $ (what comes from now on) or 0 (the whole stream)")
	flag.StringVar(&o.until, "until", "", "ORDER_ID:STATUS: exit 0 once this transition arrived")
	flag.DurationVar(&o.timeout, "timeout", 0, "with --until: exit 1 if it has not arrived by then (0: wait for ever)")
	flag.Parse()
	opts, err := redis.ParseURL(o.redisURL)
	if err != nil {
		return usageError{fmt.Errorf("--redis-url: %v", err)}
	}
	var untilID int64
	var untilTo order.Status
	if o.until != "" {
		id, to, ok := strings.Cut(o.until, ":")
		if untilID, err = strconv.ParseInt(id, 10, 64); !ok || err != nil {
			return usageError{fmt.Errorf("--until %q: want ORDER_ID:STATUS, as in 42:expired", o.until)}
		}
		untilTo = order.Status(to)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	stream := order.Keys{Prefix: o.prefix}.Transitions()

	// MKSTREAM: the stream may not exist before orderd's first transition.
	// An existing group resumes where it left off.
	if err := rdb.XGroupCreateMkStream(ctx, stream, o.group, o.from).Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return err
	}
	fmt.Fprintf(os.Stderr, "reading %s as %s/%s\n", stream, o.group, o.consumer)

	seen := map[string]bool{}
	enc := json.NewEncoder(os.Stdout)
	start := "0" // first what this consumer was given but did not acknowledge
	for {
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: o.group, Consumer: o.consumer, Streams: []string{stream, start}, Count: 100, Block: time.Second,
		}).Result()
		switch {
		case ctx.Err() != nil:
			if o.until != "" && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%s did not arrive within %v", o.until, o.timeout)
			}
			return nil
		case errors.Is(err, redis.Nil): // nothing new within the block
			continue
		case err != nil:
			return err
		}
		msgs := res[0].Messages
		if start == "0" && len(msgs) == 0 {
			start = ">"
			continue
		}
		for _, m := range msgs {
			t, bad := transitions.Decode(m.Values)
			if bad != nil { // not orderd's: acknowledge it, or it comes back for ever
				fmt.Fprintf(os.Stderr, "entry %s skipped: %v\n", m.ID, bad)
			} else if k := fmt.Sprint(t.OrderID, ":", t.To, ":", t.Deadline.UnixMilli()); !seen[k] {
				seen[k] = true
				// Here the shop reacts: updates its copy of the order,
				// mails the buyer, clears a sold-out flag…
				out := map[string]any{"entry": m.ID, "order_id": t.OrderID, "user_id": t.UserID,
					"sku": t.SKU, "qty": t.Qty, "from": t.From, "to": t.To, "at": t.At, "source": t.Source}
				if !t.Deadline.IsZero() { // an admin moved the order's deadline
					out["deadline"] = t.Deadline
				}
				if err := enc.Encode(out); err != nil {
					return err
				}
			}
			if err := rdb.XAck(ctx, stream, o.group, m.ID).Err(); err != nil {
				return err
			}
			if bad == nil && o.until != "" && t.OrderID == untilID && t.To == untilTo {
				return nil
			}
		}
	}
}
