package stock

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// GiveBacks holds the give-backs that could not reach Redis (a Release that
// failed: Redis restarting, a connection cut) and applies them until they
// land, so that a counter is right again within moments of Redis answering,
// rather than at the next stock check. Each attempt uses a client of its
// own from Open: a client whose connections all failed keeps answering with
// its last dial error for up to a second after Redis is back (go-redis's
// dial breaker), a fresh one does not.
//
// They live in memory: a process that dies holding some leaves those
// counters to the daemon's stock check, which rebuilds a counter that
// disagrees with the database while idle.
type GiveBacks struct {
	// Prefix is the counters' key prefix (NewCounter's).
	Prefix string
	// Open returns a new client of the same Redis; GiveBacks closes it.
	Open func() redis.UniversalClient
	// Interval is the pause between attempts while some wait. If zero,
	// 100 ms is used.
	Interval time.Duration
	// Logger receives a line when give-backs wait and when they land. If
	// nil, nothing is logged.
	Logger *zap.Logger
	// OnLanded, if set, is told how many holds each attempt gave back.
	OnLanded func(n int)

	mu      sync.Mutex
	pending []Hold
	kick    chan struct{}
}

func (g *GiveBacks) init() {
	if g.kick == nil {
		g.kick = make(chan struct{}, 1)
	}
}

// Add keeps holds to be given back. It never blocks.
func (g *GiveBacks) Add(holds ...Hold) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.init()
	g.pending = append(g.pending, holds...)
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// Pending returns how many holds wait to be given back.
func (g *GiveBacks) Pending() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.pending)
}

// Run gives back what Add kept, every Interval while some wait, until ctx
// ends. It returns nil.
func (g *GiveBacks) Run(ctx context.Context) error {
	g.mu.Lock()
	g.init()
	kick := g.kick
	g.mu.Unlock()
	every := g.Interval
	if every <= 0 {
		every = 100 * time.Millisecond
	}
	log := g.Logger
	if log == nil {
		log = zap.NewNop()
	}
	t := time.NewTimer(every)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			if n := g.Pending(); n > 0 {
				log.Warn("stopping with stock give-backs that never reached Redis: the daemon's stock check mends those counters", zap.Int("holds", n))
			}
			return nil
		case <-kick:
		case <-t.C:
		}
		g.mu.Lock()
		holds := g.pending
		g.pending = nil
		g.mu.Unlock()
		if len(holds) == 0 {
			continue
		}
		if err := g.attempt(ctx, holds); err != nil {
			g.mu.Lock()
			g.pending = append(holds, g.pending...)
			g.mu.Unlock()
			if failures++; failures == 1 {
				log.Warn("stock counters not given back yet: retrying until Redis answers", zap.Int("holds", len(holds)), zap.Error(err))
			}
		} else {
			if failures > 0 {
				log.Info("stock given back to the counters after Redis answered again", zap.Int("holds", len(holds)), zap.Int("attempts", failures+1))
			}
			failures = 0
			if g.OnLanded != nil {
				g.OnLanded(len(holds))
			}
		}
		t.Reset(every)
	}
}

func (g *GiveBacks) attempt(ctx context.Context, holds []Hold) error {
	c := g.Open()
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return NewCounter(c, g.Prefix).Release(ctx, holds...)
}
