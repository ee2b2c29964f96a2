package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order/daemon"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/sqltimer"
)

// runOwnTables is orderd listen with the timers of a configuration file: it
// runs them against the shop's own database (--db), with the engine the
// built-in timers run on, and creates nothing there.
func runOwnTables(ctx context.Context, o *listenOptions) error {
	cf := o.config
	if err := o.checkSizes(); err != nil {
		return err
	}
	d, own, err := openOwnTables(ctx, o.globalOptions, true)
	if err != nil {
		return err
	}
	defer d.close()
	var timers []daemon.Timer
	maxAttempts := defaultWebhookAttempts // the listener's bound (its default), or a webhook's if higher
	for _, ot := range own {
		batch := orDefault(ot.cfg.BatchMax, o.BatchMax)
		w := ot.cfg.Webhook
		if w == nil {
			timers = append(timers, daemon.SQLTimer(ot.t, ot.cfg.Key, batch))
			continue
		}
		wc := daemon.WebhookConfig{Name: ot.cfg.Name, Prefix: ot.cfg.Key, URL: w.URL, Secret: []byte(w.Secret),
			Timeout: w.Timeout, MaxAttempts: w.MaxAttempts, BatchMax: batch}
		if ot.t.Sweeps() {
			wc.Overdue = ot.t.Overdue
		}
		timers = append(timers, daemon.WebhookTimer(wc))
		maxAttempts = max(maxAttempts, orDefault(w.MaxAttempts, defaultWebhookAttempts))
	}
	rdb, store := d.rdb, d.store
	if err := checkNotify(ctx, o, d); err != nil {
		return err
	}
	keys := o.keys()
	sched := d.sched
	m := newDaemonMetrics()
	var l *daemon.Daemon
	listenerID := func() string {
		if l == nil {
			return ""
		}
		return l.ID()
	}
	l = daemon.NewTimers(rdb, keys.Prefix, timers, daemon.Config{
		SweepInterval: o.SweepInterval,
		Batch:         daemon.BatchConfig{Max: o.BatchMax, OnBatch: m.onBatch},
		Logger:        o.log,
		OnSweep:       m.recordSweeps(rdb, sched.Index(), listenerID),
		OnSwept:       m.onSwept,
		PingDB:        store.Ping,
		Listener: expiry.ListenerConfig{
			Scheduler:    sched,
			Notify:       o.notifyMode(),
			Sentinel:     o.redis.sentinel,
			Workers:      o.Workers,
			ReapInterval: o.reapInterval(),
			MaxAttempts:  maxAttempts,
		},
	}, nil)
	m.watchListener(l.Listener)
	m.timers(timerNames(timers)...)
	wait, err := o.serveOps(ctx, m, d, l.Listener)
	if err != nil {
		return err
	}
	o.log.Info("orderd listen starting on your own tables", zap.String("config", cf.path), zap.Strings("timers", timerNames(timers)),
		zap.Stringer("redis", o.redis), zap.Int("redis_db", o.redis.db()), zap.String("key_prefix", o.KeyPrefix),
		zap.Duration("sweep_interval", o.SweepInterval))
	err = l.Run(ctx)
	wait()
	if err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	s := l.Stats()
	o.log.Info("orderd listen stopped", zap.Uint64("received", s.Received), zap.Uint64("handled", s.Handled),
		zap.Uint64("failed", s.Failed), zap.Uint64("dropped", s.Dropped))
	return nil
}

// defaultWebhookAttempts is a webhook timer's max_attempts when unset.
const defaultWebhookAttempts = 10

// orDefault returns a when it is set (positive), else b.
func orDefault(a, b int) int {
	if a > 0 {
		return a
	}
	return b
}

func timerNames(timers []daemon.Timer) []string {
	names := make([]string, len(timers))
	for i, t := range timers {
		names[i] = t.Name()
	}
	return names
}

// ownTimer is a timer of the configuration file, compiled.
type ownTimer struct {
	cfg timerConfig
	t   *sqltimer.Timer
}

// openOwnTables connects to Redis and to the shop's database (--db, sessions
// bounded as for listen; its schema is the shop's: nothing is checked or
// created) and compiles the file's timers (of a webhook timer, its sweep
// only); with check, the database
// prepares each statement (exit 2 naming the file, the timer and the
// statement it rejects).
func openOwnTables(ctx context.Context, g *globalOptions, check bool) (*deps, []ownTimer, error) {
	cf := g.config
	rdb := g.redis.client()
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := rdb.Ping(pingCtx).Err()
	cancel()
	if err != nil {
		rdb.Close()
		if redisRefuses(err) {
			return nil, nil, usageErrorf("--redis-url: Redis at %s refuses the settings: %v", g.redis, err)
		}
		return nil, nil, runtimeError(fmt.Errorf("redis at %s does not answer (--redis-url): %w", g.redis, err))
	}
	store, err := sqlstore.OpenWith(ctx, g.DB, serverSessions) // sessions only: the shop's schema is its own
	if err != nil {
		rdb.Close()
		if sqlstore.IsConfigError(err) {
			return nil, nil, usageErrorf("--db: %v", err)
		}
		return nil, nil, runtimeError(fmt.Errorf("database (--db): %w", err))
	}
	keys := g.keys()
	d := &deps{rdb: rdb, store: store, sched: expiry.NewScheduler(rdb, expiry.SchedulerConfig{KeyPrefix: keys.Prefix, Index: keys.DueIndex()})}
	var own []ownTimer
	for _, tc := range cf.timers {
		var t *sqltimer.Timer
		if tc.Webhook != nil { // the shop's app moves the records: only the sweep is SQL
			t, err = sqltimer.NewSweep(store.DB().DB, tc.Name, tc.Sweep)
		} else {
			ids := sqltimer.IntIDs
			if tc.ID == "string" {
				ids = sqltimer.StringIDs
			}
			t, err = sqltimer.New(store.DB().DB, sqltimer.Config{Name: tc.Name, IDs: ids, Claim: tc.Claim, Apply: tc.Apply, Sweep: tc.Sweep, Deadline: tc.Deadline,
				OnRetry: countDBRetry})
		}
		if err == nil && check {
			err = t.Check(ctx)
		}
		if err != nil {
			d.close()
			return nil, nil, usageErrorf("config %s: %v", cf.path, err)
		}
		own = append(own, ownTimer{cfg: tc, t: t})
	}
	return d, own, nil
}

// ownTablesReport is what `orderd status --config FILE` prints when the file
// lists timers: each timer's overdue records (its sweep query), and what
// Redis holds (events, the due index, listeners, dead timers).
type ownTablesReport struct {
	At     time.Time `json:"at"`
	Redis  string    `json:"redis"`
	Config string    `json:"config"`
	redisState
	Timers   []timerStatus `json:"timers"`
	Problems []string      `json:"problems"`
	Healthy  bool          `json:"healthy"`
}

type timerStatus struct {
	Name string `json:"name"`
	Key  string `json:"key"`
	// Overdue counts the records its sweep query returns, up to
	// overdueLimit (OverdueAtLeast: there may be more); -1 for a timer
	// without a sweep query.
	Overdue        int  `json:"overdue"`
	OverdueAtLeast bool `json:"overdue_at_least"`
}

// overdueLimit bounds the records status counts per timer (its sweep
// query's :limit).
const overdueLimit = 10000

// runStatusOwnTables is orderd status for a file with timers. The shop's
// sweep query says which records are overdue, not since when: status flags
// overdue records when no listener runs, not their age.
func runStatusOwnTables(ctx context.Context, o *statusOptions, out io.Writer) error {
	d, own, err := openOwnTables(ctx, o.globalOptions, false)
	if err != nil {
		return err
	}
	defer d.close()
	r, err := buildOwnTablesReport(ctx, o, d, own)
	if err != nil {
		return err
	}
	return o.report(out, r, r.Problems, func() { r.print(out) })
}

// buildOwnTablesReport reads what `orderd status --config FILE` reports
// (and the console shows) for a file with timers.
func buildOwnTablesReport(ctx context.Context, o *statusOptions, d *deps, own []ownTimer) (ownTablesReport, error) {
	var err error
	r := ownTablesReport{At: time.Now().UTC().Truncate(time.Millisecond), Redis: o.redis.String(), Config: o.config.path,
		Timers: []timerStatus{}, Problems: []string{}}
	overdue := 0
	for _, ot := range own {
		ts := timerStatus{Name: ot.cfg.Name, Key: ot.cfg.Key, Overdue: -1}
		if ot.t.Sweeps() {
			ids, err := ot.t.Overdue(ctx, overdueLimit)
			if err != nil {
				return r, err
			}
			ts.Overdue, ts.OverdueAtLeast = len(ids), len(ids) == overdueLimit
			overdue += len(ids)
		}
		r.Timers = append(r.Timers, ts)
	}
	var problems []string
	if r.redisState, problems, err = readRedisState(ctx, d.rdb, d.sched); err != nil {
		return r, err
	}
	r.Problems = append(r.Problems, problems...)
	if overdue > 0 && len(r.Index.Listeners) == 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("no `orderd listen` is running, and %d record(s) are overdue", overdue))
	}
	r.Healthy = len(r.Problems) == 0
	return r, nil
}

// print writes r for a person.
func (r ownTablesReport) print(out io.Writer) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "redis\t%s\n", r.Redis)
	fmt.Fprintf(tw, "config\t%s (timers on your own tables)\n", r.Config)
	r.redisState.printLines(tw)
	for _, ts := range r.Timers {
		n := fmt.Sprint(ts.Overdue)
		switch {
		case ts.Overdue < 0:
			n = "unknown (no sweep query)"
		case ts.OverdueAtLeast:
			n = "at least " + n
		}
		fmt.Fprintf(tw, "timer %s\t%s…: %s overdue\n", ts.Name, ts.Key, n)
	}
	tw.Flush()
	r.redisState.printTables(out)
	printProblems(out, r.Problems)
}
