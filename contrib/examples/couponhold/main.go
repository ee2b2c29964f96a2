// Command couponhold is an app built on orderd's expiry library that has
// nothing to do with orders: a shop hands out coupon codes from a pool, and
// a code a buyer holds in the cart goes back to the pool when the hold
// expires. It shows what the library promises an app, with several listener
// processes sharing the work.
//
//	couponhold listen --redis-url redis://127.0.0.1:6379/0 &   # run three of these
//	couponhold hold --redis-url redis://127.0.0.1:6379/0 --code SUMMER-1 --for 10m
//	couponhold dead --redis-url redis://127.0.0.1:6379/0       # holds that failed MaxAttempts times
//	couponhold rearm --redis-url redis://127.0.0.1:6379/0 --code SUMMER-1
//
// A hold is the key "coupon:hold:<code>" with a TTL. `hold` sets it through
// the expiry.Scheduler (a due index beside the key, so it is released on
// time however many keys Redis holds); a key set with a plain
// `SET coupon:hold:<code> 1 EX 600` by any other program is released too.
// Releasing a code adds it to the set "{coupon:pool}:available" and counts
// the release in the hash "{coupon:pool}:released" (code → releases), so
// that a release that happened twice shows.
//
// --redis-url also takes "redis+cluster://host:port?addr=host:port&addr=…"
// for a Redis Cluster. --reject PREFIX makes the release of codes starting
// with PREFIX fail (a stand-in for a pool service that is down), to watch
// retries and the dead set.
//
// What the library promises, and what this app still does itself:
//   - A hold is released once while listeners stop cleanly (SIGTERM, a
//     rolling restart, a listener joining): the listener that handled it
//     hands its notes to the next holder of the shard.
//   - After a listener is killed (kill -9), a hold it was releasing may be
//     released again by the next holder: at least once. The release is
//     idempotent here (SADD); a real app makes it so (a conditional
//     update).
//   - A hold whose key expired while its shard's holder was dying is
//     released by the next holder: a live listener parks it.
//   - A release that fails is retried from Redis (it survives restarts),
//     and parked in the dead set after --max-attempts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
)

const prefix = "coupon:"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: couponhold listen|hold|dead|rearm [flags]")
		os.Exit(2)
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	url := fs.String("redis-url", "redis://127.0.0.1:6379/0", "Redis URL (redis://… or redis+cluster://…)")
	id := fs.String("id", "", "this listener's name among those sharing the work (default host:pid:random)")
	reject := fs.String("reject", "", "fail the release of codes starting with this prefix")
	maxAttempts := fs.Int("max-attempts", 10, "attempts at a failing release before it is parked in the dead set")
	retryDelay := fs.Duration("retry-delay", time.Second, "pause after a failed release before the next attempt")
	code := fs.String("code", "", "the coupon code")
	hold := fs.Duration("for", 10*time.Minute, "how long the hold lasts")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	rdb, err := connect(*url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "--redis-url:", err)
		os.Exit(2)
	}
	defer rdb.Close()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: prefix})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case "listen":
		err = listen(ctx, rdb, sched, *id, *reject, *maxAttempts, *retryDelay)
	case "hold":
		if *code == "" {
			fmt.Fprintln(os.Stderr, "--code is required")
			os.Exit(2)
		}
		err = sched.Schedule(ctx, prefix+"hold:"+*code, time.Now().Add(*hold))
	case "dead":
		var dead []expiry.TimerInfo
		dead, err = sched.Dead(ctx, 0)
		for _, t := range dead {
			fmt.Printf("%s\tattempts=%d\tdied=%s\terror=%q\n", strings.TrimPrefix(t.Key, prefix+"hold:"),
				t.Attempts, t.Deadline.Format(time.RFC3339), t.LastError)
		}
	case "rearm":
		err = sched.Rearm(ctx, prefix+"hold:"+*code)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q: listen, hold, dead or rearm\n", cmd)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "couponhold:", err)
		os.Exit(1)
	}
}

// connect returns a client for url: redis://… or, for a Cluster,
// redis+cluster://host:port?addr=host:port&addr=….
func connect(url string) (redis.UniversalClient, error) {
	if rest, ok := strings.CutPrefix(url, "redis+cluster://"); ok {
		o, err := redis.ParseClusterURL("redis://" + rest)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(o), nil
	}
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(o), nil
}

func listen(ctx context.Context, rdb redis.UniversalClient, sched *expiry.Scheduler, id, reject string, maxAttempts int, retryDelay time.Duration) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	mux := expiry.NewServeMux()
	mux.Use(expiry.Recover(log))
	mux.HandleFunc("hold:", func(ctx context.Context, ev expiry.Event) error {
		code := strings.TrimPrefix(ev.Key, "hold:")
		if code == "" {
			return expiry.ErrMalformedKey
		}
		if reject != "" && strings.HasPrefix(code, reject) {
			return errors.New("the coupon pool refused the code")
		}
		_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.SAdd(ctx, "{"+prefix+"pool}:available", code)
			p.HIncrBy(ctx, "{"+prefix+"pool}:released", code, 1)
			return nil
		})
		if err == nil {
			log.Info("released", "code", code, "due", ev.Deadline, "attempt", ev.Attempt)
		}
		return err
	})
	l := expiry.NewListener(rdb, mux, expiry.ListenerConfig{
		ID:          id,
		Scheduler:   sched,
		Notify:      expiry.NotifyEnable,
		MaxAttempts: maxAttempts,
		RetryDelay:  func(int) time.Duration { return retryDelay },
		Logger:      log,
	})
	return l.Run(ctx)
}
