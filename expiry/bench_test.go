package expiry_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/orderd/orderd/expiry"
)

// Micro-benchmarks of the hot path, for benchstat across commits:
//   go test -run '^$' -bench . -count 10 ./expiry ./order/daemon > new.txt

func BenchmarkNewEvent(b *testing.B) {
	ch := expiry.ExpiredChannel(0)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := expiry.NewEvent(ch, "shop:order_pay:123456789", "shop:", time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkServeMux(b *testing.B) {
	mux := expiry.NewServeMux()
	nop := func(context.Context, expiry.Event) error { return nil }
	for _, p := range []string{"order_pay:", "order_confirm:", "cart:", "session:", "order_"} {
		mux.HandleFunc(p, nop)
	}
	ev := expiry.Event{Key: "order_confirm:123456789"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := mux.HandleExpired(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReapRound is one reaper round over 1,000 due timers (of one
// shard): read them, touch their keys, take them out of the index. Per op:
// one timer.
func BenchmarkReapRound(b *testing.B) {
	rdb := setup(b)
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{Index: "bench:due", Shards: 1})
	ctx := context.Background()
	const n = 1000
	timers := make([]expiry.Timer, n)
	b.ReportAllocs()
	for i := 0; i < b.N; i += n {
		b.StopTimer()
		past := time.Now().Add(-time.Second)
		for j := range timers {
			timers[j] = expiry.Timer{Key: "bench:" + strconv.Itoa(i+j), Deadline: past}
		}
		if err := sched.ScheduleMany(ctx, timers...); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := sched.Reap(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
