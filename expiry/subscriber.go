package expiry

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// subscriber is the part of a Listener that holds a subscription to the
// expired-key channel on every master of its topology. On Cluster and behind
// Sentinel it re-reads the masters every interval: a subscription to a node
// that is no longer a master is closed (a demoted master stays connected and
// silent), and one is opened on each new master, whose confirmation calls
// onSubscribed (the moment for a catch-up sweep: events were missed).
type subscriber struct {
	topo         topology
	channel      string   // the expired-key channel
	also         []string // more channels to hear on the same subscription
	interval     time.Duration
	log          *slog.Logger
	onMessage    func(*redis.Message)
	onSubscribed func(addr string)

	mu      sync.Mutex
	subs    map[string]*nodeSub // by the node's address
	readers sync.WaitGroup
	errLog  sometimes
}

type nodeSub struct {
	ps        *redis.PubSub
	confirmed atomic.Bool
}

// run subscribes and follows the masters until ctx ends, then closes every
// subscription and returns once no reader can deliver a message any more.
func (s *subscriber) run(ctx context.Context) {
	s.follow(ctx)
	if s.topo.follows() {
		t := time.NewTicker(s.interval)
		defer t.Stop()
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case <-t.C:
				s.follow(ctx)
			}
		}
	} else {
		<-ctx.Done()
	}
	s.mu.Lock()
	for addr, sub := range s.subs {
		_ = sub.ps.Close()
		delete(s.subs, addr)
	}
	s.mu.Unlock()
	s.readers.Wait()
}

// follow reads the masters and moves the subscriptions to them.
func (s *subscriber) follow(ctx context.Context) {
	masters, err := s.topo.masters(ctx)
	if err != nil {
		if ok, suppressed := s.errLog.allow(time.Now()); ok && ctx.Err() == nil {
			s.log.Warn("cannot read which nodes are masters; subscriptions stay as they are",
				"error", err, "suppressed", suppressed)
		}
		return
	}
	s.mu.Lock()
	for addr, sub := range s.subs {
		if _, ok := masters[addr]; !ok {
			_ = sub.ps.Close()
			delete(s.subs, addr)
			s.log.Info("unsubscribed from a node that is no longer a master", "node", addr)
		}
	}
	for addr := range s.subs {
		delete(masters, addr) // subscribed already
	}
	s.mu.Unlock()
	// Subscribe outside the lock: dialling a node that is down takes a while,
	// and a health check must not wait for it.
	for addr, c := range masters {
		sub := &nodeSub{ps: c.Subscribe(ctx, append([]string{s.channel}, s.also...)...)}
		msgs := sub.ps.ChannelWithSubscriptions(redis.WithChannelSize(1000))
		s.mu.Lock()
		s.subs[addr] = sub
		s.mu.Unlock()
		s.readers.Go(func() {
			for m := range msgs {
				switch m := m.(type) {
				case *redis.Subscription:
					if m.Kind == "subscribe" && m.Channel == s.channel {
						sub.confirmed.Store(true)
						s.onSubscribed(addr)
					}
				case *redis.Message:
					s.onMessage(m)
				}
			}
		})
	}
}

// subscribed reports whether every master's subscription is confirmed.
func (s *subscriber) subscribed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.subs) == 0 {
		return false
	}
	for _, sub := range s.subs {
		if !sub.confirmed.Load() {
			return false
		}
	}
	return true
}
