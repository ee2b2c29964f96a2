package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/internal/sqlretry"
	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
	"github.com/orderd/orderd/order/sqlstore"
)

// dbRetries counts the database transactions run again, by reason. It is
// the process's: serve's and listen's registries export it.
var dbRetries = func() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "orderd_db_retries_total",
		Help: "Database transactions run again, by reason: deadlock (error 1213: a deadlock, or on a Galera cluster a conflict with a commit on another node), lock_wait (1205), connection (lost, or its node out of the cluster).",
	}, []string{"reason"})
	for _, r := range []string{sqlretry.Deadlock, sqlretry.LockWait, sqlretry.Connection} {
		c.WithLabelValues(r)
	}
	return c
}()

func countDBRetry(reason string) { dbRetries.WithLabelValues(reason).Inc() }

// daemonMetrics are the Prometheus metrics of `orderd listen`.
type daemonMetrics struct {
	reg      *prometheus.Registry
	lateness *prometheus.HistogramVec
	rescued  *prometheus.CounterVec
	sweeps   *prometheus.CounterVec
	batches  *prometheus.HistogramVec
	moved    *prometheus.CounterVec
	rebuilt  prometheus.Counter
	noop     *prometheus.CounterVec
}

func newDaemonMetrics() *daemonMetrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &daemonMetrics{
		reg: reg,
		lateness: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "orderd_transition_lateness_seconds",
			Help:    "Time from an order's deadline to the commit of its transition.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"to", "source"}),
		rescued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orderd_sweep_rescued_total",
			Help: "Orders the sweep moved because no event had: lost or late events.",
		}, []string{"to"}),
		sweeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orderd_sweeps_total", Help: "Sweeps run, by result.",
		}, []string{"result"}),
		batches: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "orderd_batch_size",
			Help:    "Timers per transaction applied from expiry events, by timer.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}, []string{"timer"}),
		moved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orderd_timers_moved_total",
			Help: "Records moved by each timer, by how they came: an expiry event or reaped timer (event), or the sweep.",
		}, []string{"timer", "source"}),
		rebuilt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "orderd_stock_counters_rebuilt_total",
			Help: "Redis stock counters rebuilt from the database because a give-back was lost.",
		}),
	}
	m.noop = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "orderd_transitions_unchanged_total",
		Help: "Records an expiry event or a reaped timer brought to a transaction that left them as they were (moved already, paid meanwhile, or not due): work done twice. By timer.",
	}, []string{"timer"})
	reg.MustRegister(m.lateness, m.rescued, m.sweeps, m.batches, m.moved, m.rebuilt, m.noop, dbRetries)
	// Every known series from the start, at 0: a rate over a series that
	// appears only with its first event hides that first event from alerts.
	for _, to := range []order.Status{order.Expired, order.Completed} {
		m.rescued.WithLabelValues(string(to))
		for _, source := range []string{"event", "sweep"} {
			m.lateness.WithLabelValues(string(to), source)
		}
	}
	m.sweeps.WithLabelValues("ok")
	m.sweeps.WithLabelValues("error")
	return m
}

func (m *daemonMetrics) onTransition(t order.Transition) {
	m.lateness.WithLabelValues(string(t.To), t.Source).Observe(t.Lateness.Seconds())
	if t.Source == "sweep" {
		m.rescued.WithLabelValues(string(t.To)).Inc()
	}
}

func (m *daemonMetrics) onSweep(_ int, err error) {
	if err != nil {
		m.sweeps.WithLabelValues("error").Inc()
		return
	}
	m.sweeps.WithLabelValues("ok").Inc()
}

// lastSweepKey is where a listener records the outcome of its last sweep,
// beside the due index, for orderd status and the console.
func lastSweepKey(index string) string { return index + ":sweep:last" }

// recordSweeps returns an OnSweep for the daemon that counts each sweep and
// records the last one's outcome in Redis (when, moved, error, by whom, as
// id() names it once the listener exists). The record is written apart, one
// at a time, and skipped while the last is still under way: a sweep must
// not wait for it (while Redis is away the database lease's sweeps run every
// quarter --sweep-interval, and Redis takes nothing).
func (m *daemonMetrics) recordSweeps(rdb redis.UniversalClient, index string, id func() string) func(int, error) {
	var writing atomic.Bool
	return func(moved int, err error) {
		m.onSweep(moved, err)
		if !writing.CompareAndSwap(false, true) {
			return
		}
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		at := time.Now().UTC().Format(time.RFC3339Nano)
		go func() {
			defer writing.Store(false)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = rdb.HSet(ctx, lastSweepKey(index), "at", at, "moved", moved, "error", msg, "by", id()).Err() // for people to read: a miss costs nothing
		}()
	}
}

// timers creates every series of the timers named, at 0.
func (m *daemonMetrics) timers(names ...string) {
	for _, name := range names {
		m.batches.WithLabelValues(name)
		m.noop.WithLabelValues(name)
		for _, source := range []string{"event", "sweep"} {
			m.moved.WithLabelValues(name, source)
		}
	}
}

func (m *daemonMetrics) onBatch(timer string, size, moved int) {
	m.batches.WithLabelValues(timer).Observe(float64(size))
	m.noop.WithLabelValues(timer).Add(float64(size - moved))
	m.moved.WithLabelValues(timer, "event").Add(float64(moved))
}

func (m *daemonMetrics) onSwept(timer string, moved int) {
	m.moved.WithLabelValues(timer, "sweep").Add(float64(moved))
}

func (m *daemonMetrics) onStockRebuilt(n int) { m.rebuilt.Add(float64(n)) }

// watchListener exports the listener's counters.
func (m *daemonMetrics) watchListener(l *expiry.Listener) {
	counter := func(name, help string, f func(expiry.Stats) uint64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(l.Stats())) }))
	}
	counter("orderd_events_received_total", "Expired-key events read from Redis.", func(s expiry.Stats) uint64 { return s.Received })
	counter("orderd_events_handled_total", "Events handled without error.", func(s expiry.Stats) uint64 { return s.Handled })
	counter("orderd_events_failed_total", "Events whose handler failed (the sweep retries them).", func(s expiry.Stats) uint64 { return s.Failed })
	counter("orderd_events_ignored_total", "Events for keys that are not orderd's.", func(s expiry.Stats) uint64 { return s.Ignored })
	counter("orderd_events_malformed_total", "Events for orderd's keys with a malformed order id (logged at most once a second).", func(s expiry.Stats) uint64 { return s.Malformed })
	counter("orderd_events_unknown_order_total", "Events for order ids that no order has (a key written for an order that does not exist; logged at most once a second).", func(s expiry.Stats) uint64 { return s.NoRecord })
	counter("orderd_events_dropped_total", "Events dropped because the queue stayed full.", func(s expiry.Stats) uint64 { return s.Dropped })
	counter("orderd_subscriptions_total", "(Re)subscriptions to Redis; each one runs a catch-up sweep.", func(s expiry.Stats) uint64 { return s.Subscriptions })
	counter("orderd_reaped_total", "Due timers the reaper removed from the index: expired (each handed to its handler) or left without a TTL.", func(s expiry.Stats) uint64 { return s.Reaped })
	counter("orderd_events_skipped_total", "Events for keys whose shard another listener holds: that one handles them.", func(s expiry.Stats) uint64 { return s.Skipped })
	counter("orderd_events_repeated_total", "Events for timers handled already (by this listener's reaper, or by the shard's last holder).", func(s expiry.Stats) uint64 { return s.Repeated })
	counter("orderd_events_parked_total", "Events put in the due index for the next holder of their shard (released, or its holder died).", func(s expiry.Stats) uint64 { return s.Parked })
	counter("orderd_timers_retried_total", "Timers whose handling failed, set due again in the due index after a delay.", func(s expiry.Stats) uint64 { return s.Retried })
	counter("orderd_timers_dead_total", "Timers whose handling failed every attempt, moved to the dead set (orderd status lists them).", func(s expiry.Stats) uint64 { return s.Dead })
	counter("orderd_lease_takeovers_total", "Leases (shards of the due index, the sweep) this listener took: at its start, on a rebalance, or from a listener that left or died.", func(s expiry.Stats) uint64 { return s.Takeovers })
	gauge := func(name, help string, f func(expiry.Stats) float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 { return f(l.Stats()) }))
	}
	gauge("orderd_shards_held", "Shards of the due index this listener holds: it reaps them and handles their keys' events.", func(s expiry.Stats) float64 { return float64(s.Shards) })
	gauge("orderd_sweep_held", "1 while this listener holds the sweep lease: it runs the periodic sweep and the stock check.", func(s expiry.Stats) float64 { return boolFloat(s.Sweeps) })
	gauge("orderd_listeners", "Live listeners sharing the due index, this one included, as last seen.", func(s expiry.Stats) float64 { return float64(s.Listeners) })
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "orderd_listener_info", Help: "1, labelled with this listener's id (what its leases hold).",
		ConstLabels: prometheus.Labels{"id": l.ID()}})
	info.Set(1)
	m.reg.MustRegister(info)
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orderd_queue_depth", Help: "Events read but not yet handled.",
	}, func() float64 { return float64(l.Stats().QueueDepth) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orderd_handlers_in_flight", Help: "Handler calls running now.",
	}, func() float64 { return float64(l.Stats().InFlight) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orderd_notify_enabled",
		Help: "1 when Redis publishes expired-key events (as last checked), 0 when it does not: orders then wait for the sweep.",
	}, func() float64 { return boolFloat(l.Health().Notify == nil) }))
	m.reg.MustRegister(evictionGauge(func() bool { return l.Health().Eviction != nil }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orderd_subscribed", Help: "1 while Redis has confirmed the subscription to expired-key events.",
	}, func() float64 { return boolFloat(l.Health().Subscribed) }))
}

// evictionGauge exports whether Redis may evict keys without a TTL.
func evictionGauge(unsafe func() bool) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "orderd_redis_eviction_unsafe",
		Help: "1 when Redis's maxmemory-policy (allkeys-*) may evict keys without a TTL (the due index, leases, the transitions stream, stock counters), as last checked.",
	}, func() float64 { return boolFloat(unsafe()) })
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serveOps serves /metrics and /healthz on addr until ctx ends. It returns
// once the listening socket is open, or with the error that kept it closed.
func serveOps(ctx context.Context, addr string, reg *prometheus.Registry, health func(context.Context) httpapi.Problems, log *zap.Logger) (wait func(), err error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /healthz", httpapi.HealthHandler(health))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", zap.Error(err))
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving /metrics and /healthz", zap.String("addr", ln.Addr().String()))
	return func() { <-done }, nil
}

// dbRead is a read of the database for gauges, made at most every 10 s
// (Prometheus may scrape far more often) and kept meanwhile.
type dbRead[T any] struct {
	what string // for the log line when the read fails
	read func(ctx context.Context, now time.Time) (T, error)
	log  *zap.Logger

	mu   sync.Mutex
	at   time.Time
	last T
	ok   bool
}

// get returns the last read, reading again when it is 10 s old; ok is false
// until a read has succeeded (no sample rather than a false 0).
func (r *dbRead[T]) get(now time.Time) (last T, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.at) >= 10*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := r.read(ctx, now)
		cancel()
		if err != nil {
			r.log.Warn(r.what+" not read", zap.Error(err))
		} else {
			r.last, r.at, r.ok = v, now, true
		}
	}
	return r.last, r.ok
}

// ordersCollector exports what the database holds about the orders that wait
// for a deadline, read at most every 10 s (two index range counts per
// status), so that dashboards and alerts see overdue orders whatever the
// daemon's own counters say.
type ordersCollector struct {
	waiting, overdue, oldest *prometheus.Desc
	read                     dbRead[map[order.Status]sqlstore.Waiting]
}

func newOrdersCollector(store *sqlstore.Store, log *zap.Logger) *ordersCollector {
	return &ordersCollector{
		read:    dbRead[map[order.Status]sqlstore.Waiting]{what: "order gauges", read: store.Waiting, log: log},
		waiting: prometheus.NewDesc("orderd_orders_waiting", "Orders waiting for a deadline: pending (pay) or shipped (confirm).", []string{"status"}, nil),
		overdue: prometheus.NewDesc("orderd_orders_overdue", "Orders whose deadline has passed and that still wait: the sweep takes them within the sweep interval.", []string{"status"}, nil),
		oldest:  prometheus.NewDesc("orderd_orders_oldest_overdue_seconds", "Age of the oldest overdue deadline (0 when none is overdue).", []string{"status"}, nil),
	}
}

func (c *ordersCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.waiting
	ch <- c.overdue
	ch <- c.oldest
}

func (c *ordersCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	last, ok := c.read.get(now)
	if !ok {
		return
	}
	for _, st := range []order.Status{order.Pending, order.Shipped} {
		w := last[st]
		age := 0.0
		if !w.Oldest.IsZero() {
			age = now.Sub(w.Oldest).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(w.Count), string(st))
		ch <- prometheus.MustNewConstMetric(c.overdue, prometheus.GaugeValue, float64(w.Overdue), string(st))
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, string(st))
	}
}
