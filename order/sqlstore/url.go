package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// A URL is a parsed database URL: "sqlite:PATH", or
// "mysql://user:pass@host:port/dbname[?param=value…]" where host:port may
// be a comma-separated list of the nodes of a multi-primary cluster
// (MariaDB Galera): "mysql://user:pass@h1:3306,h2:3306,h3:3306/dbname".
// The query's parameters are session variables set on every connection
// (as go-sql-driver/mysql does with the parameters it does not know).
type URL struct {
	// Driver is "sqlite" or "mysql".
	Driver string
	// Nodes are the MySQL/MariaDB addresses (host:port), in the order a
	// new connection tries them.
	Nodes []string

	dsn  string          // sqlite
	cfgs []*mysql.Config // mysql: one per node
}

// ParseURL parses a database URL (see URL).
func ParseURL(raw string) (URL, error) {
	switch {
	case strings.HasPrefix(raw, "sqlite:"):
		path := strings.TrimPrefix(raw, "sqlite:")
		path = strings.TrimPrefix(path, "//")
		if path == "" {
			return URL{}, errors.New("sqlite URL needs a path, as in sqlite:orderd.db")
		}
		// One connection: SQLite writes one at a time anyway, and a single
		// connection never meets SQLITE_BUSY. WAL keeps readers of other
		// processes out of the writer's way.
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Set("_txlock", "immediate")
		return URL{Driver: "sqlite", dsn: "file:" + path + "?" + q.Encode()}, nil
	case strings.HasPrefix(raw, "mysql://"):
		return parseMySQL(raw)
	default:
		return URL{}, fmt.Errorf("unsupported database URL %q: use sqlite:PATH or mysql://user:pass@host:port/dbname", raw)
	}
}

const mysqlForm = "mysql URL needs a host and a database name, as in mysql://user:pass@127.0.0.1:3306/orderd " +
	"(or the nodes of a cluster: mysql://user:pass@h1:3306,h2:3306,h3:3306/orderd)"

func parseMySQL(raw string) (URL, error) {
	// net/url takes one host: the nodes are split off by hand, and the
	// rest (credentials, database, parameters) parsed around a stand-in.
	rest := strings.TrimPrefix(raw, "mysql://")
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hosts := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hosts = authority[:i+1], authority[i+1:]
	}
	u, err := url.Parse("mysql://" + userinfo + "node" + tail)
	if err != nil {
		return URL{}, fmt.Errorf("bad mysql URL: %v", err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	if hosts == "" || db == "" || strings.Contains(db, "/") {
		return URL{}, errors.New(mysqlForm)
	}
	out := URL{Driver: "mysql"}
	seen := map[string]bool{}
	for h := range strings.SplitSeq(hosts, ",") {
		addr, err := nodeAddr(h)
		if err != nil {
			return URL{}, fmt.Errorf("mysql URL: node %q: %v", h, err)
		}
		if seen[addr] {
			return URL{}, fmt.Errorf("mysql URL: node %s is listed twice", addr)
		}
		seen[addr] = true
		cfg := mysql.NewConfig()
		cfg.Net = "tcp"
		cfg.Addr = addr
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
		cfg.DBName = db
		cfg.InterpolateParams = true
		for k, v := range u.Query() {
			if cfg.Params == nil {
				cfg.Params = map[string]string{}
			}
			cfg.Params[k] = v[len(v)-1]
		}
		out.Nodes = append(out.Nodes, addr)
		out.cfgs = append(out.cfgs, cfg)
	}
	if len(out.cfgs) > 1 {
		for _, cfg := range out.cfgs {
			// A node that does not answer must not hold up the next for
			// the operating system's minutes.
			cfg.Timeout = nodeDialTimeout
		}
	}
	return out, nil
}

// nodeDialTimeout bounds a connection attempt to one node of several.
const nodeDialTimeout = 3 * time.Second

// nodeAddr returns h ("host", "host:port", "[v6]", "[v6]:port") as
// host:port, the port 3306 when none is given.
func nodeAddr(h string) (string, error) {
	if h == "" {
		return "", errors.New("empty")
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port: a name, an IPv4 address, or a bracketed IPv6 one.
		host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), "3306"
		if strings.ContainsAny(host, "[]") || (strings.Contains(host, ":") && !strings.HasPrefix(h, "[")) {
			return "", errors.New("not host or host:port")
		}
	}
	if host == "" || strings.ContainsAny(host, " /@") {
		return "", errors.New("no host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("bad port %q", port)
	}
	return net.JoinHostPort(host, port), nil
}

// withParams returns u with params set on every MySQL/MariaDB connection
// (session variables).
func (u URL) withParams(params map[string]string) URL {
	out := u
	out.cfgs = make([]*mysql.Config, len(u.cfgs))
	for i, cfg := range u.cfgs {
		c := cfg.Clone()
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		maps.Copy(c.Params, params)
		out.cfgs[i] = c
	}
	return out
}

// OpenDB returns a database/sql handle on u (no connection is made yet).
// With several nodes, each new connection goes to the first node, in u's
// order, that accepts it and, on a Galera node, is part of its cluster
// (wsrep_ready): a node that stops or leaves its cluster is passed over
// until it is back.
func (u URL) OpenDB() (*sql.DB, error) {
	switch u.Driver {
	case "sqlite":
		return sql.Open("sqlite", u.dsn)
	case "mysql":
		if len(u.cfgs) == 1 {
			c, err := mysql.NewConnector(u.cfgs[0])
			if err != nil {
				return nil, err
			}
			return sql.OpenDB(c), nil
		}
		n := &nodes{addrs: u.Nodes}
		for _, cfg := range u.cfgs {
			c, err := mysql.NewConnector(cfg)
			if err != nil {
				return nil, err
			}
			n.connectors = append(n.connectors, c)
		}
		return sql.OpenDB(n), nil
	}
	return nil, fmt.Errorf("sqlstore: no driver %q", u.Driver)
}

// nodes connects to the first of several nodes that takes work.
type nodes struct {
	addrs      []string
	connectors []driver.Connector
}

func (n *nodes) Driver() driver.Driver { return mysql.MySQLDriver{} }

func (n *nodes) Connect(ctx context.Context) (driver.Conn, error) {
	var errs []error
	for i, c := range n.connectors {
		conn, err := c.Connect(ctx)
		if err == nil {
			if err = ready(ctx, conn); err != nil {
				conn.Close()
			}
		}
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", n.addrs[i], err))
	}
	return nil, nodeErrors(errs)
}

// nodeErrors are the errors of every node of a connection attempt, on one
// line.
type nodeErrors []error

func (e nodeErrors) Error() string {
	parts := make([]string, len(e))
	for i, err := range e {
		parts[i] = err.Error()
	}
	return "no database node takes work: " + strings.Join(parts, "; ")
}

func (e nodeErrors) Unwrap() []error { return e }

// errNotReady is a Galera node that is not part of its cluster's primary
// component, or not synced yet (joining, donating by a blocking method).
var errNotReady = errors.New("the Galera node is not ready (wsrep_ready is OFF)")

// ready returns errNotReady when conn reaches a Galera node that cannot take
// work; a server that is not a Galera node (wsrep_on unknown or 0) is ready.
func ready(ctx context.Context, conn driver.Conn) error {
	q, ok := conn.(driver.QueryerContext)
	if !ok {
		return nil
	}
	first := func(query string, col int) (string, bool, error) {
		rows, err := q.QueryContext(ctx, query, nil)
		if err != nil {
			return "", false, err
		}
		defer rows.Close()
		vals := make([]driver.Value, len(rows.Columns()))
		if err := rows.Next(vals); err != nil {
			return "", false, nil // no row
		}
		if b, ok := vals[col].([]byte); ok {
			return string(b), true, nil
		}
		return fmt.Sprint(vals[col]), true, nil
	}
	on, _, err := first(`SELECT @@wsrep_on`, 0)
	if err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && me.Number == 1193 { // unknown variable: not MariaDB with wsrep
			return nil
		}
		return err
	}
	if on != "1" {
		return nil
	}
	v, _, err := first(`SHOW STATUS LIKE 'wsrep_ready'`, 1)
	if err != nil {
		return err
	}
	if v != "ON" {
		return errNotReady
	}
	return nil
}
