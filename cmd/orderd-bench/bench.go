package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order/sqlstore"
)

const (
	benchDB   = "orderd_bench"
	skuID     = 1
	skuTotal  = 1_000_000_000
	dueIndex  = "orderd:due" // what `orderd listen` reaps with an empty --key-prefix
	insertRow = 1000         // rows per INSERT when seeding
	keysBatch = 10000        // keys per pipeline when seeding
)

// result is one scenario in one mode.
type result struct {
	Scenario   string  `json:"scenario"`
	Mode       string  `json:"mode"`
	Listeners  int     `json:"listeners"`
	Orders     int     `json:"orders"`
	Handled    int     `json:"handled"`
	NotHandled int     `json:"not_handled"`
	P50ms      float64 `json:"lateness_p50_ms"`
	P99ms      float64 `json:"lateness_p99_ms"`
	MaxMs      float64 `json:"lateness_max_ms"`
	LateOver1s int     `json:"late_over_1s"`
	// Burst: from the deadline to the last commit, and orders per second.
	ElapsedS  float64 `json:"elapsed_s,omitempty"`
	PerSecond float64 `json:"orders_per_s,omitempty"`
	RSSMB     float64 `json:"daemon_peak_rss_mb"`
	StockOK   bool    `json:"stock_conserved"`
	// IdleCommandsPerS is, in the idle scenario, the Redis commands per
	// second that an idle `orderd listen` sends (INFO stats'
	// total_commands_processed, which counts a script's inner calls too).
	IdleCommandsPerS float64 `json:"idle_commands_per_s,omitempty"`
	// From the daemon's /metrics at the end.
	MeanBatch  float64 `json:"mean_batch_size"`
	Dropped    float64 `json:"events_dropped"`
	Reconnects float64 `json:"reconnects"`
	Rescued    float64 `json:"rescued_by_sweep"`
	// Database transactions committed or rolled back from the end of the
	// seeding to the end (MariaDB's Com_commit + Com_rollback), the orders
	// moved by transactions that changed nothing, and the share of the
	// transitions made by the busiest listener.
	Transactions float64 `json:"transactions"`
	Unchanged    float64 `json:"transitions_unchanged"`
	BusiestPct   float64 `json:"busiest_listener_pct"`
	// CPU seconds used from the first deadline to the end: by the daemons,
	// by Redis, by the whole machine (the rest: the database, the benchmark
	// itself, the kernel).
	CPUDaemonS  float64 `json:"cpu_daemon_s"`
	CPURedisS   float64 `json:"cpu_redis_s"`
	CPUMachineS float64 `json:"cpu_machine_s"`
	// The transitions stream (orderd mode): its entries at the end, and the
	// seconds from the first deadline until the outbox was empty (every
	// transition in the stream); 0 when the stream is off.
	StreamEntries int64   `json:"stream_entries"`
	StreamS       float64 `json:"stream_caught_up_s,omitempty"`
	// Host is what the machine gave any program meanwhile (steady and
	// traffic): Redis's answer to a PING, a 10 ms sleep's lateness.
	Host *probeResult `json:"host,omitempty"`
}

type report struct {
	Machine   map[string]string `json:"machine"`
	Settings  map[string]string `json:"settings"`
	Results   []result          `json:"results"`
	StartedAt time.Time         `json:"started_at"`
}

func run(ctx context.Context, c config) (*report, error) {
	rdb, err := newRedis(c.redisURL)
	if err != nil {
		return nil, fmt.Errorf("--redis-url: %w", err)
	}
	defer rdb.Close()
	if err := expiry.EnableNotify(ctx, rdb); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	rep := &report{StartedAt: time.Now().UTC(), Machine: machine(ctx, rdb, c), Settings: map[string]string{
		"other_keys": strconv.Itoa(c.otherKeys), "rate_per_s": strconv.Itoa(c.rate),
		"duration": c.duration.String(), "burst": strconv.Itoa(c.burst), "naive_wait": c.naiveWait.String(),
	}}
	for _, sc := range c.scenarios {
		type run struct {
			mode      string
			listeners int
		}
		var runs []run
		switch sc {
		case "replicas": // the same burst, shared by one listener, then by several
			runs = []run{{"orderd", 1}, {"orderd", c.replicas}}
		case "traffic", "idle": // orderd's own API; an idle listener
			runs = []run{{"orderd", 1}}
		default:
			for _, mode := range c.modes {
				runs = append(runs, run{mode, 1})
			}
		}
		for _, x := range runs {
			fmt.Fprintf(os.Stderr, "== %s, %s ×%d\n", sc, x.mode, x.listeners)
			var r result
			var err error
			switch sc {
			case "traffic":
				r, err = runTraffic(ctx, c, rdb)
			case "idle":
				r, err = runIdle(ctx, c, rdb)
			default:
				r, err = runOne(ctx, c, rdb, sc, x.mode, x.listeners)
			}
			if err != nil {
				return rep, fmt.Errorf("%s/%s: %w", sc, x.mode, err)
			}
			rep.Results = append(rep.Results, r)
		}
	}
	flush(context.WithoutCancel(ctx), rdb)
	return rep, nil
}

// newRedis connects to --redis-url: redis://host:port/db, or
// redis+cluster://host:port[?addr=…] for a Redis Cluster.
func newRedis(raw string) (redis.UniversalClient, error) {
	if rest, ok := strings.CutPrefix(raw, "redis+cluster://"); ok {
		o, err := redis.ParseClusterURL("redis://" + rest)
		if err != nil {
			return nil, err
		}
		o.PoolSize = 32
		return redis.NewClusterClient(o), nil
	}
	o, err := redis.ParseURL(raw)
	if err != nil {
		return nil, err
	}
	o.PoolSize = 32
	return redis.NewClient(o), nil
}

// flush empties the database (every master's, on a cluster).
func flush(ctx context.Context, rdb redis.UniversalClient) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return n.FlushDB(ctx).Err() })
	}
	return rdb.FlushDB(ctx).Err()
}

func machine(ctx context.Context, rdb redis.UniversalClient, c config) map[string]string {
	m := map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "go": runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if line, _, ok := strings.Cut(string(b), "\n"); ok {
			m["memory"] = strings.Join(strings.Fields(line)[1:], " ")
		}
	}
	if info, err := rdb.Info(ctx, "server").Result(); err == nil {
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
				m["redis"] = v
			}
		}
	}
	if st, err := sqlstore.Open(ctx, c.mysqlBase+"/mysql"); err == nil {
		var v string
		if st.DB().GetContext(ctx, &v, "SELECT VERSION()") == nil {
			m["database"] = v
		}
		st.Close()
	}
	return m
}

func runOne(ctx context.Context, c config, rdb redis.UniversalClient, scenario, mode string, listeners int) (result, error) {
	res := result{Scenario: scenario, Mode: mode, Listeners: listeners}
	sh := shapeOf(mode)
	store, err := sh.fresh(ctx, c, rdb)
	if err != nil {
		return res, err
	}
	defer store.Close()
	sched := expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: sh.prefix, Index: sh.prefix + dueIndex})

	if scenario == "steady" {
		t0 := time.Now()
		if err := seedOtherKeys(ctx, rdb, sched, sh.prefix, c.otherKeys, sh.keysMode(mode)); err != nil {
			return res, err
		}
		fmt.Fprintf(os.Stderr, "   %d other timers set in %v\n", c.otherKeys, time.Since(t0).Round(time.Millisecond))
	}

	var ds []*daemon
	defer func() {
		for _, d := range ds {
			d.kill()
		}
	}()
	for range listeners {
		d, err := startDaemon(ctx, c, mode)
		if err != nil {
			return res, err
		}
		ds = append(ds, d)
	}

	// Deadlines: steady spreads them at --rate per second; burst puts them
	// all at one moment. Both start late enough for the seeding to finish.
	n := c.burst
	if scenario == "steady" {
		n = int(float64(c.rate) * c.duration.Seconds())
	}
	perOrder := 40 * time.Microsecond // the seeding's time
	if isAsynq(mode) {
		perOrder = 60 * time.Microsecond // a task is one Enqueue (1M: 31 s measured)
	}
	start := time.Now().Add(5*time.Second + time.Duration(n)*perOrder).Truncate(time.Millisecond)
	deadline := func(i int) time.Time {
		if scenario == "steady" {
			return start.Add(time.Duration(i) * time.Second / time.Duration(c.rate))
		}
		return start
	}
	t0 := time.Now()
	if err := sh.seedOrders(ctx, store, n, deadline); err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "   %d orders inserted in %v\n", n, time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	if err := seedOrderKeys(ctx, rdb, sched, store, sh, sh.keysMode(mode)); err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "   their keys set in %v; first deadline in %v\n", time.Since(t0).Round(time.Millisecond), time.Until(start).Round(time.Millisecond))
	if time.Now().After(start) {
		fmt.Fprintln(os.Stderr, "   warning: seeding ran past the first deadline; early orders count as late")
	}
	tx0, err := transactions(ctx, store)
	if err != nil {
		return res, err
	}
	pids := make([]int, len(ds))
	for i, d := range ds {
		pids[i] = d.cmd.Process.Pid
	}
	cpu0, cpuFrom := readCPU(ctx, rdb, pids), false // read again at the first deadline

	// Wait until every order is handled, or the mode's time is up.
	var probe func() probeResult
	if scenario == "steady" {
		probe = startProbe(ctx, rdb)
		defer probe()
	}
	last := deadline(n - 1)
	limit := last.Add(c.naiveWait)
	if mode == "orderd" || mode == "laravel" {
		limit = last.Add(max(c.naiveWait, 5*time.Minute))
	}
	// Cheap checks often, a count (a scan: it costs the database) rarely.
	for i := 0; ; i++ {
		if !cpuFrom && !time.Now().Before(start) {
			cpu0, cpuFrom = readCPU(ctx, rdb, pids), true
		}
		var any []int64
		if err := store.DB().SelectContext(ctx, &any, `SELECT id FROM orders WHERE status = `+sh.pending+` LIMIT 1`); err != nil {
			return res, err
		}
		if len(any) == 0 || time.Now().After(limit) {
			break
		}
		if time.Now().After(last) && i%20 == 0 {
			var pending int
			if err := store.DB().GetContext(ctx, &pending, `SELECT COUNT(*) FROM orders WHERE status = `+sh.pending); err != nil {
				return res, err
			}
			fmt.Fprintf(os.Stderr, "   %d pending, %v after the last deadline\n", pending, time.Since(last).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if probe != nil {
		h := probe()
		res.Host = &h
	}
	if mode == "orderd" {
		if res.StreamS, err = streamCaughtUp(ctx, store, start); err != nil {
			return res, err
		}
		if res.StreamEntries, err = rdb.XLen(ctx, transitionsStream).Result(); err != nil {
			return res, err
		}
		if res.StreamEntries == 0 {
			res.StreamS = 0 // the stream is off
		}
	}
	tx1, err := transactions(ctx, store)
	if err != nil {
		return res, err
	}
	res.Transactions = tx1 - tx0
	cpu := readCPU(ctx, rdb, pids).sub(cpu0)
	res.CPUDaemonS, res.CPURedisS, res.CPUMachineS = cpu.daemons, cpu.redis, cpu.machine
	var batches, batched, transitions, busiest float64
	for _, d := range ds {
		res.RSSMB = max(res.RSSMB, d.peakRSSMB())
		m, err := d.metrics()
		if err != nil {
			fmt.Fprintln(os.Stderr, "   metrics:", err)
			continue
		}
		batches += m["orderd_batch_size_count"]
		batched += m["orderd_batch_size_sum"]
		res.Dropped += m["orderd_events_dropped_total"]
		res.Reconnects += max(m["orderd_subscriptions_total"]-1, 0)
		res.Rescued += m["orderd_sweep_rescued_total"]
		res.Unchanged += m["orderd_transitions_unchanged_total"]
		moved := m["orderd_timers_moved_total"]
		transitions += moved
		busiest = max(busiest, moved)
	}
	if batches > 0 {
		res.MeanBatch = batched / batches
	}
	if transitions > 0 {
		res.BusiestPct = 100 * busiest / transitions
	}
	for _, d := range ds {
		if err := d.stop(); err != nil {
			return res, err
		}
	}
	return collect(ctx, store, res, n, start, sh.moved, sh.stock)
}

// transitionsStream is the transitions stream (no --key-prefix).
const transitionsStream = "orderd:transitions"

// streamCaughtUp waits (up to 5 minutes) until the outbox is empty, and
// returns the seconds from start until then.
func streamCaughtUp(ctx context.Context, store *sqlstore.Store, start time.Time) (float64, error) {
	limit := time.Now().Add(5 * time.Minute)
	for {
		var any []int64
		if err := store.DB().SelectContext(ctx, &any, `SELECT seq FROM transitions_outbox LIMIT 1`); err != nil {
			return 0, err
		}
		if len(any) == 0 {
			break
		}
		if time.Now().After(limit) {
			return 0, fmt.Errorf("the transitions outbox was not empty 5 minutes after the last order")
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return time.Since(start).Seconds(), nil
}

// collect reads the outcome from the database: moved returns each moved
// order's deadline and the time it moved (Unix ms, as pay_deadline and
// cancelled_at), stock the stock available plus that of the live orders.
func collect(ctx context.Context, store *sqlstore.Store, res result, n int, start time.Time, moved, stock string) (result, error) {
	var rows []struct {
		Deadline int64 `db:"pay_deadline"`
		At       int64 `db:"cancelled_at"`
	}
	if err := store.DB().SelectContext(ctx, &rows, moved); err != nil {
		return res, err
	}
	late := make([]int64, len(rows))
	var lastAt int64
	for i, r := range rows {
		late[i] = r.At - r.Deadline
		lastAt = max(lastAt, r.At)
		if late[i] > 1000 {
			res.LateOver1s++
		}
	}
	slices.Sort(late)
	res.Orders, res.Handled, res.NotHandled = n, len(rows), n-len(rows)
	if len(late) > 0 {
		q := func(p float64) float64 { return float64(late[min(len(late)-1, int(p*float64(len(late))))]) }
		res.P50ms, res.P99ms, res.MaxMs = q(0.5), q(0.99), float64(late[len(late)-1])
	}
	if res.Scenario != "steady" && res.Scenario != "traffic" && len(rows) > 0 {
		res.ElapsedS = float64(lastAt-start.UnixMilli()) / 1000
		res.PerSecond = float64(len(rows)) / max(res.ElapsedS, 0.001)
	}
	var total int64
	if err := store.DB().GetContext(ctx, &total, stock); err != nil {
		return res, err
	}
	res.StockOK = total == skuTotal
	return res, nil
}

// transactions reads how many transactions the database server committed or
// rolled back so far (it serves the benchmark alone).
func transactions(ctx context.Context, store *sqlstore.Store) (float64, error) {
	var rows []struct {
		Name  string  `db:"Variable_name"`
		Value float64 `db:"Value"`
	}
	if err := store.DB().SelectContext(ctx, &rows, `SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_commit', 'Com_rollback')`); err != nil {
		return 0, err
	}
	var n float64
	for _, r := range rows {
		n += r.Value
	}
	return n, nil
}

// fresh empties Redis and recreates the database for one run.
func fresh(ctx context.Context, c config, rdb redis.UniversalClient) (*sqlstore.Store, error) {
	if err := flush(ctx, rdb); err != nil {
		return nil, err
	}
	return freshDB(ctx, c.mysqlBase)
}

// freshDB drops and creates the benchmark's database and migrates it.
func freshDB(ctx context.Context, base string) (*sqlstore.Store, error) {
	admin, err := sqlstore.Open(ctx, base+"/mysql")
	if err != nil {
		return nil, fmt.Errorf("--mysql: %w", err)
	}
	for _, q := range []string{"DROP DATABASE IF EXISTS " + benchDB, "CREATE DATABASE " + benchDB} {
		if _, err := admin.DB().ExecContext(ctx, q); err != nil {
			admin.Close()
			return nil, err
		}
	}
	admin.Close()
	st, err := sqlstore.Open(ctx, base+"/"+benchDB)
	if err != nil {
		return nil, err
	}
	if _, err := st.Migrate(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// seedOtherKeys sets n keys with a 24 h TTL, as a shop's pending
// receipt confirmations are; orderd also keeps them in its due index.
func seedOtherKeys(ctx context.Context, rdb redis.UniversalClient, sched *expiry.Scheduler, prefix string, n int, mode string) error {
	deadline := time.Now().Add(24 * time.Hour)
	for i := 0; i < n; i += keysBatch {
		var timers []expiry.Timer
		for j := i; j < min(n, i+keysBatch); j++ {
			timers = append(timers, expiry.Timer{Key: prefix + "order_confirm:" + strconv.Itoa(100_000_000+j), Deadline: deadline.Add(time.Duration(j) * time.Millisecond)})
		}
		if err := setTimers(ctx, rdb, sched, timers, mode); err != nil {
			return err
		}
	}
	return nil
}

func setTimers(ctx context.Context, rdb redis.UniversalClient, sched *expiry.Scheduler, timers []expiry.Timer, mode string) error {
	if mode == "orderd" {
		return sched.ScheduleMany(ctx, timers...)
	}
	if isAsynq(mode) {
		return enqueueTimers(ctx, rdb, timers)
	}
	// The naive design: a plain key with a TTL, nothing else.
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, t := range timers {
			p.Set(ctx, t.Key, "1", max(time.Until(t.Deadline), time.Millisecond))
		}
		return nil
	})
	return err
}

// seedOrders inserts n pending orders straight into the database in bulk,
// and takes their stock.
func seedOrders(ctx context.Context, store *sqlstore.Store, n int, deadline func(int) time.Time) error {
	db := store.DB()
	if _, err := db.ExecContext(ctx, `INSERT INTO skus (sku, name, price_cents, available, limit_per_user) VALUES (?, 'bench', 100, ?, 0)`,
		skuID, skuTotal-n); err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	for i := 0; i < n; i += insertRow {
		m := min(n, i+insertRow) - i
		var sb strings.Builder
		sb.WriteString(`INSERT INTO orders (user_id, sku, qty, amount_cents, status, created_at, pay_deadline, auto_confirmed) VALUES `)
		args := make([]any, 0, 2*m)
		for j := range m {
			if j > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(`(?, 1, 1, 100, 'pending', ?, ?, 0)`)
			args = append(args, i+j+1, now)
			args = append(args, deadline(i+j).UnixMilli())
		}
		if _, err := db.ExecContext(ctx, sb.String(), args...); err != nil {
			return fmt.Errorf("seed orders: %w", err)
		}
	}
	return nil
}

// seedOrderKeys sets order_pay:<id> for every order, expiring at its deadline.
func seedOrderKeys(ctx context.Context, rdb redis.UniversalClient, sched *expiry.Scheduler, store *sqlstore.Store, sh shape, mode string) error {
	rows, err := store.DB().QueryContext(ctx, sh.deadlines)
	if err != nil {
		return err
	}
	defer rows.Close()
	var timers []expiry.Timer
	flush := func() error {
		err := setTimers(ctx, rdb, sched, timers, mode)
		timers = timers[:0]
		return err
	}
	for rows.Next() {
		var id, ms int64
		if err := rows.Scan(&id, &ms); err != nil {
			return err
		}
		timers = append(timers, expiry.Timer{Key: sh.prefix + "order_pay:" + strconv.FormatInt(id, 10), Deadline: time.UnixMilli(ms)})
		if len(timers) == keysBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return flush()
}

// daemon is `orderd listen` running under test.
type daemon struct {
	cmd         *exec.Cmd
	done        chan error
	subs        atomic.Bool
	metricsAddr atomic.Pointer[string]
}

var addrField = regexp.MustCompile(`"addr":"([^"]+)"`)

func startDaemon(ctx context.Context, c config, mode string) (*daemon, error) {
	args := []string{"listen", "--redis-url", c.redisURL, "--db", c.mysqlBase + "/" + benchDB,
		"--sweep-interval", "1h", "--metrics-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "info"}
	if mode == "laravel" { // the shop's tables, through the example's configuration file
		args = append([]string{"listen", "--config", filepath.Join(c.laravelDir, "orderd.yaml")}, args[5:]...)
	}
	args = append(args, c.extra...)
	cmd := exec.Command(c.orderd, args...)
	if mode == "laravel" {
		cmd.Env = append(os.Environ(), "SHOP_DB_URL="+c.mysqlBase+"/"+benchDB, "SHOP_REDIS_URL="+c.redisURL)
	}
	if mode != "orderd" && mode != "laravel" {
		// The usual design (naive.go) and the peer (asynq.go), run by this
		// program itself.
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cmd = exec.Command(self, "naive-listen", c.redisURL, c.mysqlBase+"/"+benchDB)
		if every, ok := asynqModes[mode]; ok {
			cmd = exec.Command(self, "asynq-listen", c.redisURL, c.mysqlBase+"/"+benchDB, every.String())
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, `"msg":"subscribed"`) {
				d.subs.Store(true)
			}
			if strings.Contains(line, `"msg":"serving /metrics and /healthz"`) {
				if m := addrField.FindStringSubmatch(line); m != nil {
					d.metricsAddr.Store(&m[1])
				}
			}
			if strings.Contains(line, `"level":"error"`) || strings.Contains(line, `"level":"warn"`) {
				fmt.Fprintln(os.Stderr, "   daemon:", line)
			}
		}
		d.done <- cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !d.subs.Load() {
		if time.Now().After(deadline) {
			d.kill()
			return nil, fmt.Errorf("orderd listen did not subscribe within 30 s")
		}
		select {
		case err := <-d.done:
			return nil, fmt.Errorf("orderd listen exited: %v", err)
		case <-ctx.Done():
			d.kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return d, nil
}

// peakRSSMB is the daemon's peak resident memory (VmHWM) so far.
func (d *daemon) peakRSSMB() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return kb / 1024
		}
	}
	return 0
}

// metrics reads the daemon's /metrics: each metric name with the sum over
// its labels.
func (d *daemon) metrics() (map[string]float64, error) {
	addr := d.metricsAddr.Load()
	if addr == nil {
		return nil, fmt.Errorf("no metrics address in the daemon's log")
	}
	resp, err := http.Get("http://" + *addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "{")
		if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
			out[name] += v
		}
	}
	return out, sc.Err()
}

func (d *daemon) stop() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			return fmt.Errorf("orderd listen: %v", err)
		}
		return nil
	case <-time.After(60 * time.Second):
		d.kill()
		return fmt.Errorf("orderd listen did not stop within 60 s of SIGTERM")
	}
}

func (d *daemon) kill() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Kill()
	}
}
