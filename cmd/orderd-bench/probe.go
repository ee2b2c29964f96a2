package main

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// A probe measures what the machine gives any program while a scenario runs:
// how long Redis takes to answer a PING, and how late a goroutine that sleeps
// wakes up, every 10 ms each (every 1 ms, it slowed the scenario measurably). Lateness cannot be smaller than a few of the first (a timer
// costs round trips) plus the second, whatever orderd does; the report prints
// both beside the scenario's lateness, so a tail can be told from the host's.

// probeEvery is the pause of a probe's loops.
const probeEvery = 10 * time.Millisecond

// probeResult is what a probe measured, in milliseconds.
type probeResult struct {
	PingP50ms float64 `json:"p50_ms"`
	PingP99ms float64 `json:"p99_ms"`
	PingMaxMs float64 `json:"max_ms"`
	WakeP99ms float64 `json:"wake_late_p99_ms"`
	WakeMaxMs float64 `json:"wake_late_max_ms"`
}

// startProbe pings Redis and sleeps, each every probeEvery, until the
// returned function is first called; it returns what was measured.
func startProbe(ctx context.Context, rdb redis.UniversalClient) func() probeResult {
	ctx, cancel := context.WithCancel(ctx)
	pings, wakes := make(chan []time.Duration, 1), make(chan []time.Duration, 1)
	go func() {
		var ds []time.Duration
		for ctx.Err() == nil {
			t := time.Now()
			if rdb.Ping(ctx).Err() == nil {
				ds = append(ds, time.Since(t))
			}
			time.Sleep(probeEvery)
		}
		pings <- ds
	}()
	go func() {
		var ds []time.Duration
		for ctx.Err() == nil {
			want := time.Now().Add(probeEvery)
			time.Sleep(probeEvery)
			ds = append(ds, time.Since(want))
		}
		wakes <- ds
	}()
	return sync.OnceValue(func() probeResult {
		cancel()
		p, w := <-pings, <-wakes
		return probeResult{PingP50ms: quantileMs(p, .5), PingP99ms: quantileMs(p, .99), PingMaxMs: quantileMs(p, 1),
			WakeP99ms: quantileMs(w, .99), WakeMaxMs: quantileMs(w, 1)}
	})
}

// quantileMs is the q quantile of ds in milliseconds (0 when ds is empty).
func quantileMs(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[int(float64(len(ds)-1)*q)]) / float64(time.Millisecond)
}
