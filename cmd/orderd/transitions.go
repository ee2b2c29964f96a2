package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/order/transitions"
)

// startRelay runs, when the transitions stream is on (--transitions-maxlen
// above 0), a relay of the outbox to the stream under the id given (empty:
// one of its own), with its metrics in reg. It returns a function that wakes
// the relay after a commit and one that stops it (relaying what the outbox
// still holds first) and waits for it. Every serve and listen runs one; the
// lease lets one relay at a time.
func (o *globalOptions) startRelay(d *deps, id string, reg *prometheus.Registry) (wake, stop func()) {
	if o.TransitionsMaxLen == 0 {
		return func() {}, func() {}
	}
	relayed := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "orderd_transitions_relayed_total",
		Help: "Transitions this process appended to the transitions stream.",
	})
	held := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "orderd_transitions_relay_held",
		Help: "1 while this process holds the relay lease: it appends the outbox to the transitions stream.",
	})
	lost := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "orderd_transitions_stream_lost_total",
		Help: "Times the relay found the transitions stream's last entry gone (the stream deleted, or evicted by maxmemory-policy).",
	})
	reg.MustRegister(relayed, held, lost, newBacklogCollector(d.store, o.log))
	keys := o.keys()
	r := transitions.NewRelay(d.store, d.rdb, transitions.Config{
		Stream:     keys.Transitions(),
		LeaseKey:   keys.TransitionsRelay(),
		MaxLen:     o.TransitionsMaxLen,
		ID:         id,
		Logger:     o.log,
		OnRelay:    func(n int) { relayed.Add(float64(n)) },
		OnLease:    func(h bool) { held.Set(boolFloat(h)) },
		OnVanished: lost.Inc,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	return r.Wake, func() { cancel(); <-done }
}

// backlogCollector exports the outbox's backlog (changes committed, not yet
// in the stream), read at most every 10 s.
type backlogCollector struct {
	size, age *prometheus.Desc
	read      dbRead[backlog]
}

type backlog struct {
	n      int64
	oldest time.Time
}

func newBacklogCollector(store *sqlstore.Store, log *zap.Logger) *backlogCollector {
	return &backlogCollector{
		read: dbRead[backlog]{what: "outbox backlog", log: log, read: func(ctx context.Context, _ time.Time) (backlog, error) {
			n, oldest, err := store.ChangeBacklog(ctx)
			return backlog{n, oldest}, err
		}},
		size: prometheus.NewDesc("orderd_transitions_backlog", "Transitions committed but not yet appended to the transitions stream (the outbox).", nil, nil),
		age:  prometheus.NewDesc("orderd_transitions_backlog_oldest_seconds", "Age of the oldest transition waiting in the outbox (0 when none waits).", nil, nil),
	}
}

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.age
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	b, ok := c.read.get(now)
	if !ok {
		return
	}
	age := 0.0
	if !b.oldest.IsZero() {
		age = max(0, now.Sub(b.oldest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(b.n))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
}
