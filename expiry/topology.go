package expiry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/redis/go-redis/v9"
)

// topology tells a Listener which Redis nodes publish the expired-key events
// of its keys (the masters: Redis publishes an event only on the node that
// owns the key) and which nodes to check for notify-keyspace-events (every
// node, replicas too: the setting is per node, and a replica may be promoted).
type topology interface {
	// masters returns a client for each master now, by address.
	masters(ctx context.Context) (map[string]*redis.Client, error)
	// nodes returns a client for every node, masters and replicas.
	nodes(ctx context.Context) ([]*redis.Client, error)
	// follows reports whether the masters can change (Cluster, Sentinel),
	// so that the listener re-reads them every TopologyInterval.
	follows() bool
	close()
}

func newTopology(client redis.UniversalClient, sentinel *redis.FailoverOptions) (topology, error) {
	switch c := client.(type) {
	case *redis.ClusterClient:
		return clusterTopology{c}, nil
	case *redis.Client:
		if sentinel != nil {
			return newSentinelTopology(sentinel), nil
		}
		return singleTopology{c}, nil
	default:
		return nil, fmt.Errorf("expiry: unsupported client type %T", client)
	}
}

// singleTopology is one Redis server: the client is its own subscription
// (go-redis resubscribes after a lost connection by itself).
type singleTopology struct{ c *redis.Client }

func (t singleTopology) masters(context.Context) (map[string]*redis.Client, error) {
	return map[string]*redis.Client{t.c.Options().Addr: t.c}, nil
}
func (t singleTopology) nodes(context.Context) ([]*redis.Client, error) {
	return []*redis.Client{t.c}, nil
}
func (singleTopology) follows() bool { return false }
func (singleTopology) close()        {}

// clusterTopology reads the cluster's masters and replicas afresh (CLUSTER
// SLOTS on some node) at every call.
type clusterTopology struct{ c *redis.ClusterClient }

func (t clusterTopology) masters(ctx context.Context) (map[string]*redis.Client, error) {
	var mu sync.Mutex
	out := map[string]*redis.Client{}
	err := t.c.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		out[n.Options().Addr] = n
		mu.Unlock()
		return nil
	})
	return out, err
}

func (t clusterTopology) nodes(ctx context.Context) ([]*redis.Client, error) {
	var mu sync.Mutex
	var out []*redis.Client
	err := t.c.ForEachShard(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		out = append(out, n)
		mu.Unlock()
		return nil
	})
	return out, err
}

func (clusterTopology) follows() bool { return true }
func (clusterTopology) close()        {}

// sentinelTopology asks the sentinels where the master and its replicas are,
// and keeps a client of its own for each such node.
type sentinelTopology struct {
	opt       *redis.FailoverOptions
	sentinels []*redis.SentinelClient

	mu      sync.Mutex
	clients map[string]*redis.Client // by address
}

func newSentinelTopology(opt *redis.FailoverOptions) *sentinelTopology {
	t := &sentinelTopology{opt: opt, clients: map[string]*redis.Client{}}
	for _, addr := range opt.SentinelAddrs {
		t.sentinels = append(t.sentinels, redis.NewSentinelClient(&redis.Options{
			Addr: addr, Username: opt.SentinelUsername, Password: opt.SentinelPassword,
			TLSConfig: opt.TLSConfig, DialTimeout: opt.DialTimeout, MaxRetries: -1,
		}))
	}
	return t
}

// client returns the topology's client for the node at addr.
func (t *sentinelTopology) client(addr string) *redis.Client {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.clients[addr]
	if !ok {
		o := t.opt
		c = redis.NewClient(&redis.Options{
			Addr: addr, Username: o.Username, Password: o.Password, DB: o.DB, Protocol: o.Protocol,
			TLSConfig: o.TLSConfig, DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
		})
		t.clients[addr] = c
	}
	return c
}

// ask runs f on the sentinels in turn until one answers.
func (t *sentinelTopology) ask(ctx context.Context, f func(*redis.SentinelClient) error) error {
	var errs []error
	for _, s := range t.sentinels {
		err := f(s)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("expiry: no sentinel told where master %q is: %w", t.opt.MasterName, errors.Join(errs...))
}

func (t *sentinelTopology) masters(ctx context.Context) (map[string]*redis.Client, error) {
	var addr string
	err := t.ask(ctx, func(s *redis.SentinelClient) error {
		a, err := s.GetMasterAddrByName(ctx, t.opt.MasterName).Result()
		if err == nil && len(a) == 2 {
			addr = net.JoinHostPort(a[0], a[1])
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return map[string]*redis.Client{addr: t.client(addr)}, nil
}

func (t *sentinelTopology) nodes(ctx context.Context) ([]*redis.Client, error) {
	m, err := t.masters(ctx)
	if err != nil {
		return nil, err
	}
	var out []*redis.Client
	for _, c := range m {
		out = append(out, c)
	}
	err = t.ask(ctx, func(s *redis.SentinelClient) error {
		replicas, err := s.Replicas(ctx, t.opt.MasterName).Result()
		for _, r := range replicas {
			if flags := r["flags"]; flags == "slave" || flags == "replica" { // up: not s_down, not disconnected
				out = append(out, t.client(net.JoinHostPort(r["ip"], r["port"])))
			}
		}
		return err
	})
	return out, err
}

func (*sentinelTopology) follows() bool { return true }

func (t *sentinelTopology) close() {
	for _, s := range t.sentinels {
		s.Close()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.clients {
		c.Close()
	}
}
