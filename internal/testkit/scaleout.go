package testkit

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the master name of the test Sentinel set.
const SentinelMaster = "orderd"

// ClusterAddrs are the nodes of the test Redis Cluster
// (ORDERD_TEST_CLUSTER, comma-separated host:port).
func ClusterAddrs() []string { return addrs("ORDERD_TEST_CLUSTER", "127.0.0.1:17001") }

// SentinelAddrs are the sentinels of the test Sentinel set
// (ORDERD_TEST_SENTINEL, comma-separated host:port).
func SentinelAddrs() []string { return addrs("ORDERD_TEST_SENTINEL", "127.0.0.1:17103") }

func addrs(env, def string) []string {
	v := os.Getenv(env)
	if v == "" {
		v = def
	}
	return strings.Split(v, ",")
}

// ClusterURL is the --redis-url of the test cluster.
func ClusterURL() string {
	a := ClusterAddrs()
	u := "redis+cluster://" + a[0]
	for i, x := range a[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + x
	}
	return u
}

// SentinelURL is the --redis-url of the test Sentinel set, database db.
func SentinelURL(db int) string {
	a := SentinelAddrs()
	u := "redis+sentinel://" + a[0] + "/" + strconv.Itoa(db) + "?master_name=" + SentinelMaster
	for _, x := range a[1:] {
		u += "&addr=" + x
	}
	return u
}

// Cluster returns a client of the test cluster, once this test holds the
// cluster alone (tests of other packages fail nodes over), with every key
// of prefix removed at the start and the end.
func Cluster(tb testing.TB, prefix string) *redis.ClusterClient {
	tb.Helper()
	lock(tb, "cluster")
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: ClusterAddrs(), PoolSize: 64})
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil {
		tb.Fatalf("no Redis Cluster at %v (set ORDERD_TEST_CLUSTER or run contrib/dev/test.sh): %v", ClusterAddrs(), err)
	}
	WaitClusterOK(tb, c)
	clean := func() {
		_ = c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			for _, match := range []string{prefix + "*", "{" + prefix + "*"} { // keys hash-tagged whole too
				iter := n.Scan(ctx, 0, match, 1000).Iterator()
				for iter.Next(ctx) {
					n.Del(ctx, iter.Val())
				}
			}
			return nil
		})
	}
	clean()
	tb.Cleanup(func() { clean(); c.Close() })
	return c
}

// WaitClusterOK waits until every node of the cluster says cluster_state:ok,
// and every replica is in sync with its master.
func WaitClusterOK(tb testing.TB, c *redis.ClusterClient) {
	tb.Helper()
	ctx := context.Background()
	WaitFor(tb, 60*time.Second, "cluster_state:ok on every node and replicas in sync", func() bool {
		for _, a := range ClusterAddrs() {
			n := redis.NewClient(&redis.Options{Addr: a, MaxRetries: -1})
			info, err := n.ClusterInfo(ctx).Result()
			repl, rerr := n.Info(ctx, "replication").Result()
			n.Close()
			if err != nil || rerr != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
			if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				return false
			}
		}
		c.ReloadState(ctx)
		return true
	})
}

// Sentinel returns a failover client of the test Sentinel set (database db)
// and its options, once this test holds the set alone, and waits until the
// sentinels agree on a master with a replica in sync.
func Sentinel(tb testing.TB, db int) (*redis.Client, *redis.FailoverOptions) {
	tb.Helper()
	lock(tb, "sentinel")
	opt := &redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: SentinelAddrs(), DB: db, PoolSize: 64}
	c := redis.NewFailoverClient(opt)
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil {
		tb.Fatalf("no Sentinel set at %v (set ORDERD_TEST_SENTINEL or run contrib/dev/test.sh): %v", SentinelAddrs(), err)
	}
	WaitSentinelSettled(tb)
	if err := c.FlushDB(ctx).Err(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c, opt
}

// SentinelMasterAddr returns where the sentinels say the master is.
func SentinelMasterAddr(tb testing.TB) string {
	tb.Helper()
	s := redis.NewSentinelClient(&redis.Options{Addr: SentinelAddrs()[0]})
	defer s.Close()
	a, err := s.GetMasterAddrByName(context.Background(), SentinelMaster).Result()
	if err != nil {
		tb.Fatal(err)
	}
	return a[0] + ":" + a[1]
}

// WaitSentinelSettled waits until every sentinel names the same master, whose
// replica is in sync: a failover may start.
func WaitSentinelSettled(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	WaitFor(tb, 60*time.Second, "the sentinels agreeing on a master with a replica in sync", func() bool {
		var master string
		for _, a := range SentinelAddrs() {
			s := redis.NewSentinelClient(&redis.Options{Addr: a, MaxRetries: -1})
			m, err := s.GetMasterAddrByName(ctx, SentinelMaster).Result()
			replicas, rerr := s.Replicas(ctx, SentinelMaster).Result()
			s.Close()
			if err != nil || rerr != nil || len(replicas) == 0 || (master != "" && master != m[0]+":"+m[1]) {
				return false
			}
			master = m[0] + ":" + m[1]
			for _, r := range replicas {
				if r["flags"] != "slave" || r["master-link-status"] != "ok" {
					return false
				}
			}
		}
		n := redis.NewClient(&redis.Options{Addr: master, MaxRetries: -1})
		defer n.Close()
		role, err := n.Do(ctx, "ROLE").Slice()
		return err == nil && len(role) > 0 && role[0] == "master"
	})
}

// KillNode kills the redis-server at addr (SIGKILL: no goodbye to its
// peers) and returns a function that starts it again from its config file,
// as contrib/dev/services.sh wrote it; the test's end restarts it anyway.
func KillNode(tb testing.TB, addr string) (restart func()) {
	tb.Helper()
	ctx := context.Background()
	n := redis.NewClient(&redis.Options{Addr: addr})
	defer n.Close()
	info, err := n.Info(ctx, "server").Result()
	if err != nil {
		tb.Fatal(err)
	}
	dir, err := n.ConfigGet(ctx, "dir").Result()
	if err != nil {
		tb.Fatal(err)
	}
	var pid int
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, _ = strconv.Atoi(v)
		}
	}
	if pid == 0 {
		tb.Fatalf("no process_id in INFO of %s", addr)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		tb.Fatal(err)
	}
	conf := filepath.Join(dir["dir"], "redis.conf")
	started := false
	restart = func() {
		if started {
			return
		}
		started = true
		if out, err := exec.Command("redis-server", conf).CombinedOutput(); err != nil {
			tb.Errorf("restart %s: %v %s", addr, err, out)
		}
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		defer c.Close()
		WaitFor(tb, 10*time.Second, "the node back", func() bool { return c.Ping(ctx).Err() == nil })
	}
	tb.Cleanup(restart)
	return restart
}

// lock holds an exclusive lock named name for the rest of the test, across
// processes (every package's tests run in a process of their own).
func lock(tb testing.TB, name string) {
	tb.Helper()
	path := filepath.Join(os.TempDir(), "orderd-test-"+name+"-"+strings.ReplaceAll(strings.Join(addrs("ORDERD_TEST_"+strings.ToUpper(name), ""), "_"), ":", "-")+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() })
}
