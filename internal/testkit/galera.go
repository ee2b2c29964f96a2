package testkit

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// GaleraNodes are the client addresses (host:port) of the three nodes of the
// test Galera cluster (ORDERD_TEST_GALERA, started by contrib/dev/test.sh).
// The test fails when they are not set: it does not skip.
func GaleraNodes(tb testing.TB) []string {
	tb.Helper()
	v := os.Getenv("ORDERD_TEST_GALERA")
	if v == "" || os.Getenv("ORDERD_TEST_GALERA_DIR") == "" {
		tb.Fatal("no Galera cluster: set ORDERD_TEST_GALERA and ORDERD_TEST_GALERA_DIR, or run contrib/dev/test.sh")
	}
	nodes := strings.Split(v, ",")
	if len(nodes) != 3 {
		tb.Fatalf("ORDERD_TEST_GALERA lists %d nodes, want 3", len(nodes))
	}
	return nodes
}

// galeraDir is the directory of node n (1-3): its mysql.pid and start.sh.
func galeraDir(n int) string {
	return filepath.Join(os.Getenv("ORDERD_TEST_GALERA_DIR"), "n"+strconv.Itoa(n))
}

// GaleraNode opens a database/sql handle on node n (1-3) alone, as the test
// user, on database db ("" for none); closed at the test's end.
func GaleraNode(tb testing.TB, n int, db string) *sql.DB {
	tb.Helper()
	h := openNode(tb, n, db)
	tb.Cleanup(func() { h.Close() })
	return h
}

func openNode(tb testing.TB, n int, db string) *sql.DB {
	tb.Helper()
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = "orderd", "orderd", "tcp", GaleraNodes(tb)[n-1], db
	cfg.Timeout = 2 * time.Second
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return sql.OpenDB(c)
}

// GaleraState is node n's wsrep_local_state_comment (Synced, Donor/Desynced,
// Joining, …), or the error of asking it.
func GaleraState(tb testing.TB, n int) (string, error) {
	tb.Helper()
	h := openNode(tb, n, "")
	defer h.Close()
	var name, v string
	err := h.QueryRow(`SHOW STATUS LIKE 'wsrep_local_state_comment'`).Scan(&name, &v)
	return v, err
}

// GaleraClusterSize is wsrep_cluster_size as node n sees it.
func GaleraClusterSize(tb testing.TB, n int) (int, error) {
	tb.Helper()
	h := openNode(tb, n, "")
	defer h.Close()
	var name string
	var v int
	err := h.QueryRow(`SHOW STATUS LIKE 'wsrep_cluster_size'`).Scan(&name, &v)
	return v, err
}

// GaleraKill kills node n (1-3) with SIGKILL and waits until it is gone.
func GaleraKill(tb testing.TB, n int) {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(galeraDir(n), "mysql.pid"))
	if err != nil {
		tb.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatalf("galera node %d: pid file: %v", n, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		tb.Fatalf("kill galera node %d (pid %d): %v", n, pid, err)
	}
	WaitFor(tb, 10*time.Second, fmt.Sprintf("galera node %d gone", n), func() bool {
		return syscall.Kill(pid, 0) != nil
	})
}

// GaleraStart starts node n again (it joins the cluster by IST or SST) and
// waits until it is synced. A node left down makes the tests after fail,
// so the test's end starts it too if it is still down.
func GaleraStart(tb testing.TB, n int) time.Duration {
	tb.Helper()
	start := time.Now()
	cmd := exec.Command("bash", filepath.Join(galeraDir(n), "start.sh"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // the node outlives the test; services.sh stops it
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go cmd.Wait() //nolint:errcheck // reaped; its exit is the node's own
	WaitFor(tb, 120*time.Second, fmt.Sprintf("galera node %d synced again", n), func() bool {
		s, err := GaleraState(tb, n)
		return err == nil && s == "Synced"
	})
	return time.Since(start)
}
