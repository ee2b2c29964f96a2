package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/orderd/orderd/expiry"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/daemon"
	"github.com/orderd/orderd/order/sqlstore"
	"github.com/orderd/orderd/order/transitions"
)

type demoOptions struct {
	*globalOptions
	Shoppers        int
	Stock           int64
	SetNotifyConfig bool
}

func newDemoCmd(g *globalOptions) *cobra.Command {
	o := &demoOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "A self-contained tour: a flash sale, payments, expiries and automatic confirmations",
		Long: `Run the whole story in one process against the configured Redis and a fresh
embedded SQLite database (or --db when given): a flash sale of a few hundred
shoppers, some payments and shipments, then unpaid orders expiring with their
stock coming back and shipped orders confirmed automatically, with short
timeouts. Exits 0 when every order reached the state it should.

Keys are written under a prefix of their own and removed at the end; nothing
else in Redis is touched.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			if !f.Changed("pay-timeout") && os.Getenv("ORDERD_PAY_TIMEOUT") == "" {
				o.PayTimeout = 3 * time.Second
			}
			if !f.Changed("confirm-timeout") && os.Getenv("ORDERD_CONFIRM_TIMEOUT") == "" {
				o.ConfirmTimeout = 5 * time.Second
			}
			if !f.Changed("sweep-interval") && os.Getenv("ORDERD_SWEEP_INTERVAL") == "" {
				o.SweepInterval = 2 * time.Second
			}
			if !f.Changed("log-level") && os.Getenv("ORDERD_LOG_LEVEL") == "" {
				log, err := newLogger(o.LogFormat, "warn")
				if err != nil {
					return err
				}
				o.log = log
			}
			if !f.Changed("db") && os.Getenv("ORDERD_DB") == "" {
				dir, err := os.MkdirTemp("", "orderd-demo-")
				if err != nil {
					return runtimeError(err)
				}
				defer os.RemoveAll(dir)
				o.DB = "sqlite:" + filepath.Join(dir, "demo.db")
			}
			return runtimeError(runDemo(cmd.Context(), cmd.OutOrStdout(), o))
		},
	}
	cmd.Flags().IntVar(&o.Shoppers, "shoppers", 300, "shoppers in the flash sale")
	cmd.Flags().Int64Var(&o.Stock, "stock", 100, "units on sale (one per shopper)")
	cmd.Flags().BoolVar(&o.SetNotifyConfig, "set-notify-config", false, "turn on expired-key events (notify-keyspace-events) if they are off")
	return cmd
}

// The demo's plan for the orders the sale creates, in this order.
const (
	demoPaidShare    = 60 // % of orders paid
	demoShippedShare = 50 // % of paid orders shipped
	demoConfirmShare = 30 // % of shipped orders confirmed by their buyer
)

func runDemo(ctx context.Context, out io.Writer, o *demoOptions) error {
	if o.Shoppers <= 0 || o.Stock <= 0 {
		return usageErrorf("--shoppers and --stock must be positive")
	}
	store, err := sqlstore.Open(ctx, o.DB)
	if err != nil {
		return fmt.Errorf("database (--db): %w", err)
	}
	if _, err := store.Migrate(ctx); err != nil {
		store.Close()
		return err
	}
	store.Close()

	// A prefix of the run's own: the demo shares Redis with nobody's keys.
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	o.KeyPrefix += "orderd-demo-" + hex.EncodeToString(suffix) + ":"
	d, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer d.close()
	defer func() { // remove the run's keys
		_ = eachMaster(context.WithoutCancel(ctx), d.rdb, func(ctx context.Context, node redis.UniversalClient) error {
			iter := node.Scan(ctx, 0, o.KeyPrefix+"*", 1000).Iterator()
			for iter.Next(ctx) {
				node.Del(ctx, iter.Val())
			}
			return iter.Err()
		})
	}()
	if err := checkNotify(ctx, &listenOptions{globalOptions: o.globalOptions, SetNotifyConfig: o.SetNotifyConfig}, d); err != nil {
		return err
	}

	var mu sync.Mutex // guards created, the counters of the sale, and stats
	stats := &demoStats{}
	cfg := o.serviceConfig(stats.add)
	svc := order.NewService(d.store, d.counter, d.sched, cfg)
	l := daemon.New(svc, d.rdb, daemon.Config{SweepInterval: o.SweepInterval, Logger: o.log,
		Listener: expiry.ListenerConfig{Scheduler: d.sched, Sentinel: o.redis.sentinel}})
	_, stopRelay := o.startRelay(d, l.ID(), prometheus.NewRegistry())
	defer stopRelay()
	lctx, stopListener := context.WithCancel(ctx)
	ldone := make(chan error, 1)
	go func() { ldone <- l.Run(lctx) }()
	defer func() { stopListener(); <-ldone }()

	fmt.Fprintf(out, "orderd demo: Redis %s db %d, database %s\n", o.redis, o.redis.db(), o.DB)
	fmt.Fprintf(out, "pay timeout %v, confirm timeout %v, sweep every %v\n\n", o.PayTimeout, o.ConfirmTimeout, o.SweepInterval)

	const skuID = 1
	if _, err := svc.PutSKU(ctx, order.SKU{SKU: skuID, Name: "Limited sneaker", PriceCents: 12900, Available: o.Stock, LimitPerUser: 1}); err != nil {
		return err
	}
	// 1. The flash sale: every shopper at once, a fifth of them clicking twice.
	start := time.Now()
	var created []order.Order
	var soldOut, limited, failed int
	var wg sync.WaitGroup
	for u := 1; u <= o.Shoppers; u++ {
		clicks := 1
		if u%5 == 0 {
			clicks = 2
		}
		for range clicks {
			wg.Go(func() {
				ord, err := svc.Create(ctx, int64(u), skuID, 1)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					created = append(created, ord)
				case errors.Is(err, order.ErrSoldOut):
					soldOut++
				case errors.Is(err, order.ErrLimitExceeded):
					limited++
				default:
					failed++
					o.log.Error("order failed", zap.Error(err))
				}
			})
		}
	}
	wg.Wait()
	if failed > 0 {
		return fmt.Errorf("%d orders failed in the flash sale", failed)
	}
	slices.SortFunc(created, func(a, b order.Order) int { return int(a.ID - b.ID) })
	fmt.Fprintf(out, "flash sale: %d shoppers, %d orders in %v (%d turned away sold out, %d second clicks refused)\n",
		o.Shoppers, len(created), time.Since(start).Round(time.Millisecond), soldOut, limited)

	// 2. Some pay, some of those are shipped, some of those confirmed by hand.
	want := map[int64]order.Status{}
	nPaid := len(created) * demoPaidShare / 100
	nShipped := nPaid * demoShippedShare / 100
	nConfirmed := nShipped * demoConfirmShare / 100
	for i, ord := range created {
		want[ord.ID] = order.Expired
		if i >= nPaid {
			continue
		}
		if _, err := svc.Pay(ctx, ord.UserID, ord.ID); err != nil {
			return fmt.Errorf("pay order %d: %w", ord.ID, err)
		}
		want[ord.ID] = order.Paid
		if i >= nShipped {
			continue
		}
		if _, err := svc.Ship(ctx, ord.ID); err != nil {
			return fmt.Errorf("ship order %d: %w", ord.ID, err)
		}
		want[ord.ID] = order.Completed
		if i < nConfirmed {
			if _, err := svc.Confirm(ctx, ord.UserID, ord.ID); err != nil {
				return fmt.Errorf("confirm order %d: %w", ord.ID, err)
			}
		}
	}
	fmt.Fprintf(out, "paid %d, shipped %d, confirmed by the buyer %d; %d left unpaid, %d shipped waiting for confirmation\n\n",
		nPaid, nShipped, nConfirmed, len(created)-nPaid, nShipped-nConfirmed)

	// 3. Watch the daemon expire and confirm on time.
	counts := func() (map[order.Status]int, bool, error) {
		got := map[order.Status]int{}
		done := true
		for _, ord := range created {
			cur, err := d.store.Get(ctx, ord.ID)
			if err != nil {
				return nil, false, err
			}
			got[cur.Status]++
			if cur.Status != want[ord.ID] {
				done = false
			}
		}
		return got, done, nil
	}
	limit := time.Now().Add(max(o.PayTimeout, o.ConfirmTimeout) + o.SweepInterval + 30*time.Second)
	var got map[order.Status]int
	for {
		var done bool
		if got, done, err = counts(); err != nil {
			return err
		}
		k, err := d.store.GetSKU(ctx, skuID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "t+%5.1fs  pending %3d  paid %3d  shipped %3d  completed %3d  expired %3d  available %3d\n",
			time.Since(start).Seconds(), got[order.Pending], got[order.Paid], got[order.Shipped],
			got[order.Completed], got[order.Expired], k.Available)
		if done || time.Now().After(limit) || ctx.Err() != nil {
			break
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return demoSummary(out, svc, d, o, skuID, created, want, got, stats)
}

// demoStats collects the lateness of every transition made by a deadline.
type demoStats struct {
	mu       sync.Mutex
	lateness []time.Duration
	rescued  int
}

func (s *demoStats) add(t order.Transition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lateness = append(s.lateness, t.Lateness)
	if t.Source == "sweep" {
		s.rescued++
	}
}

func demoSummary(out io.Writer, svc *order.Service, d *deps, o *demoOptions, skuID int64, created []order.Order,
	want map[int64]order.Status, got map[order.Status]int, stats *demoStats) error {
	ctx := context.Background()
	k, err := svc.GetSKU(ctx, skuID)
	if err != nil {
		return err
	}
	counter, _, _ := d.counter.Available(ctx, skuID)
	expected := map[order.Status]int{}
	for _, s := range want {
		expected[s]++
	}
	var wrong []string
	for _, ord := range created {
		cur, err := d.store.Get(ctx, ord.ID)
		if err != nil {
			return err
		}
		if cur.Status != want[ord.ID] {
			wrong = append(wrong, fmt.Sprintf("order %d is %s, want %s", ord.ID, cur.Status, want[ord.ID]))
		}
	}
	live := int64(len(created) - expected[order.Expired])
	wantAvail := o.Stock - live

	fmt.Fprintln(out, "\nsummary")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "orders by status\twant\tgot\t")
	for _, s := range []order.Status{order.Pending, order.Paid, order.Shipped, order.Completed, order.Expired, order.Cancelled} {
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", s, expected[s], got[s])
	}
	streamWrong := false
	if o.TransitionsMaxLen > 0 {
		inStream, err := demoStreamCounts(ctx, d, o.keys().Transitions())
		if err != nil {
			return err
		}
		nPaid := int(expected[order.Paid] + expected[order.Completed])
		for _, r := range []struct {
			to   order.Status
			want int
		}{
			{order.Pending, len(created)}, {order.Paid, nPaid}, {order.Shipped, expected[order.Completed]},
			{order.Completed, expected[order.Completed]}, {order.Expired, expected[order.Expired]},
		} {
			label := "transitions stream: to " + string(r.to)
			if r.to == order.Pending {
				label = "transitions stream: created"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t\n", label, r.want, inStream[r.to])
			streamWrong = streamWrong || inStream[r.to] != r.want
		}
	}
	fmt.Fprintf(tw, "stock before the sale\t%d\t%d\t\n", o.Stock, o.Stock)
	fmt.Fprintf(tw, "stock after (database)\t%d\t%d\t\n", wantAvail, k.Available)
	fmt.Fprintf(tw, "stock after (Redis counter)\t%d\t%d\t\n", wantAvail, counter)
	tw.Flush()

	stats.mu.Lock()
	lat, rescued := slices.Clone(stats.lateness), stats.rescued
	stats.mu.Unlock()
	slices.Sort(lat)
	if len(lat) > 0 {
		q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
		fmt.Fprintf(out, "\nlateness, deadline → committed, of %d expiries and automatic confirmations:\n", len(lat))
		fmt.Fprintf(out, "  min %v  p50 %v  p99 %v  max %v  (rescued by a sweep: %d)\n",
			lat[0].Round(time.Millisecond), q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond),
			lat[len(lat)-1].Round(time.Millisecond), rescued)
	}
	if len(wrong) > 0 || k.Available != wantAvail || counter != wantAvail || streamWrong {
		for _, w := range wrong {
			fmt.Fprintln(out, "  ", w)
		}
		return errors.New("demo: some orders did not reach the state they should")
	}
	fmt.Fprintln(out, "\nevery order reached the state it should.")
	return nil
}

// demoStreamCounts waits (up to 10 s) until the outbox is relayed, then
// counts the transitions stream's entries by the status moved to, each
// order's transition once.
func demoStreamCounts(ctx context.Context, d *deps, stream string) (map[order.Status]int, error) {
	for limit := time.Now().Add(10 * time.Second); ; {
		n, _, err := d.store.ChangeBacklog(ctx)
		if err != nil {
			return nil, err
		}
		if n == 0 || time.Now().After(limit) {
			break
		}
		time.Sleep(50 * time.Millisecond) // a program waiting for another, not a test
	}
	seen := map[string]bool{}
	out := map[order.Status]int{}
	for start := "-"; ; {
		msgs, err := d.rdb.XRangeN(ctx, stream, start, "+", 1000).Result()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			c, err := transitions.Decode(m.Values)
			if err != nil {
				return nil, err
			}
			if k := fmt.Sprint(c.OrderID, c.To); !seen[k] {
				seen[k] = true
				out[c.To]++
			}
		}
		if len(msgs) < 1000 {
			return out, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}
