package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/orderd/orderd/order"
	"github.com/orderd/orderd/order/httpapi"
)

type ordersOptions struct {
	*globalOptions
	JSON bool
	By   time.Duration
	To   string
}

func newOrdersCmd(g *globalOptions) *cobra.Command {
	o := &ordersOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "orders show|extend|expire ID",
		Short: "One order: show it, move its deadline, expire it now",
		Long: `Act on one order for a person on the box, talking to the database and Redis
directly (the flags of serve and listen: --db, --redis-url, --key-prefix).

  orderd orders show ID                     its row, its deadline and its timer in Redis
  orderd orders extend ID --by 10m          move its deadline 10 minutes later
  orderd orders extend ID --to TIME         move its deadline to TIME (RFC 3339)
  orderd orders expire ID                   expire a pending order now, stock back

extend moves the pay deadline of a pending order or the confirm deadline of a
shipped one, and its timer with it; a time past means now. Exit 1 when the
order does not exist or is in a status that does not allow it.`,
	}
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Print an order: its row, its deadline, and its timer's key and due-index entry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd, args[0], o.show)
		},
	}
	show.Flags().BoolVar(&o.JSON, "json", false, "print JSON (for scripts)")
	extend := &cobra.Command{
		Use:   "extend ID --by DURATION | --to TIME",
		Short: "Move the deadline of a pending order (pay) or a shipped one (confirm), and its timer",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (o.By == 0) == (o.To == "") {
				return usageErrorf("give one of --by (a duration, e.g. 10m) and --to (an RFC 3339 time)")
			}
			if o.To != "" {
				if _, err := time.Parse(time.RFC3339Nano, o.To); err != nil {
					return usageErrorf("--to %q: not an RFC 3339 time (e.g. 2026-12-02T10:15:00Z)", o.To)
				}
			}
			return o.run(cmd, args[0], o.extend)
		},
	}
	extend.Flags().DurationVar(&o.By, "by", 0, "move the deadline this much later (negative: earlier)")
	extend.Flags().StringVar(&o.To, "to", "", "move the deadline to this time (RFC 3339); a time past means now")
	extend.Flags().BoolVar(&o.JSON, "json", false, "print JSON (for scripts)")
	expire := &cobra.Command{
		Use:   "expire ID",
		Short: "Expire a pending order now, as its timer would (stock back)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd, args[0], o.expire)
		},
	}
	expire.Flags().BoolVar(&o.JSON, "json", false, "print JSON (for scripts)")
	cmd.AddCommand(show, extend, expire)
	return cmd
}

// run parses the order id, opens the database and Redis, runs f and prints
// the order as it is then.
func (o *ordersOptions) run(cmd *cobra.Command, arg string, f func(context.Context, *order.Service, int64) error) error {
	id, err := strconv.ParseInt(arg, 10, 64)
	if err != nil || id <= 0 {
		return usageErrorf("order id %q: a positive integer", arg)
	}
	ctx := cmd.Context()
	d, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer d.close()
	cfg := o.serviceConfig(nil)
	cfg.GiveBacks = d.giveBacks
	svc := order.NewService(d.store, d.counter, d.sched, cfg)
	if err := f(ctx, svc, id); err != nil {
		var oe *order.Error
		if errors.As(err, &oe) && (oe.Code == order.CodeNotFound || oe.Code == order.CodeInvalidTransition) {
			return runtimeError(errors.New(oe.Message))
		}
		return runtimeError(err)
	}
	if d.giveBacks.Pending() > 0 {
		// A give-back Redis did not take at once is retried here, for a few
		// seconds: the stock check of a running listener mends what is left.
		stop := d.startGiveBacks()
		for end := time.Now().Add(3 * time.Second); d.giveBacks.Pending() > 0 && time.Now().Before(end); {
			time.Sleep(50 * time.Millisecond)
		}
		stop()
	}
	view, err := o.view(ctx, svc, d, id)
	if err != nil {
		return runtimeError(err)
	}
	return view.print(cmd.OutOrStdout(), o.JSON)
}

func (o *ordersOptions) show(context.Context, *order.Service, int64) error { return nil }

func (o *ordersOptions) extend(ctx context.Context, svc *order.Service, id int64) error {
	cur, err := svc.Get(ctx, 0, true, id)
	if err != nil {
		return err
	}
	_, deadline, ok := cur.Timer()
	if !ok {
		return &order.Error{Code: order.CodeInvalidTransition, Status: cur.Status,
			Message: fmt.Sprintf("order %d is %s: only a pending order (pay) or a shipped one (confirm) has a deadline to move", id, cur.Status)}
	}
	to := deadline.Add(o.By)
	if o.To != "" {
		to, _ = time.Parse(time.RFC3339Nano, o.To) // checked already
	}
	_, err = svc.MoveDeadline(ctx, id, cur.Status, to)
	return err
}

func (o *ordersOptions) expire(ctx context.Context, svc *order.Service, id int64) error {
	_, err := svc.ExpireNow(ctx, id)
	return err
}

// orderView is what `orderd orders` prints: the order, and its timer as
// Redis holds it.
type orderView struct {
	Order    json.RawMessage `json:"order"`    // as the HTTP API gives it
	Deadline *time.Time      `json:"deadline"` // the one its status waits on, if any
	Timer    *timerView      `json:"timer"`    // for a pending or shipped order
	order    order.Order
}

type timerView struct {
	Key string `json:"key"`
	// TTL is the key's time to live, in ms: -2 when the key does not exist,
	// -1 when it has no TTL.
	TTLMillis int64 `json:"ttl_ms"`
	// Index is the key's due-index entry, if any.
	Index *indexView `json:"due_index"`
}

type indexView struct {
	Shard     string    `json:"shard"`
	Deadline  time.Time `json:"deadline"`
	Attempts  int       `json:"attempts"`
	LastError string    `json:"last_error,omitempty"`
	Dead      bool      `json:"dead"`
}

func (o *ordersOptions) view(ctx context.Context, svc *order.Service, d *deps, id int64) (orderView, error) {
	ord, err := svc.Get(ctx, 0, true, id)
	if err != nil {
		return orderView{}, err
	}
	raw, err := httpapi.MarshalOrder(ord)
	if err != nil {
		return orderView{}, err
	}
	v := orderView{Order: raw, order: ord}
	key, deadline, ok := ord.Timer()
	if !ok {
		return v, nil
	}
	key = o.keys().Prefix + key
	v.Deadline = &deadline
	t := &timerView{Key: key}
	ttl, err := d.rdb.PTTL(ctx, key).Result()
	if err != nil {
		return v, fmt.Errorf("redis: the TTL of %s: %w", key, err)
	}
	t.TTLMillis = ttl.Milliseconds()
	if ttl < 0 {
		t.TTLMillis = int64(ttl / time.Nanosecond) // go-redis: -1 ns no TTL, -2 ns no key
	}
	info, ok, err := d.sched.Lookup(ctx, key)
	if err != nil {
		return v, err
	}
	if ok {
		t.Index = &indexView{Shard: info.Shard, Deadline: info.Deadline.UTC(), Attempts: info.Attempts, LastError: info.LastError, Dead: info.Dead}
	}
	v.Timer = t
	return v, nil
}

func (v orderView) print(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	o := v.order
	ts := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	fmt.Fprintf(tw, "order\t%d\n", o.ID)
	fmt.Fprintf(tw, "status\t%s\n", o.Status)
	fmt.Fprintf(tw, "user\t%d\n", o.UserID)
	fmt.Fprintf(tw, "sku × qty\t%d × %d (%d cents)\n", o.SKU, o.Qty, o.AmountCents)
	fmt.Fprintf(tw, "created\t%s\n", ts(&o.CreatedAt))
	fmt.Fprintf(tw, "pay deadline\t%s\n", ts(&o.PayDeadline))
	fmt.Fprintf(tw, "paid\t%s\n", ts(o.PaidAt))
	fmt.Fprintf(tw, "cancelled/expired\t%s\n", ts(o.CancelledAt))
	fmt.Fprintf(tw, "shipped\t%s\n", ts(o.ShippedAt))
	fmt.Fprintf(tw, "confirm deadline\t%s\n", ts(o.ConfirmDeadline))
	fmt.Fprintf(tw, "completed\t%s (auto: %v)\n", ts(o.CompletedAt), o.AutoConfirmed)
	if v.Deadline != nil {
		left := time.Until(*v.Deadline).Round(time.Millisecond)
		fmt.Fprintf(tw, "due in\t%v\n", left)
	}
	if t := v.Timer; t != nil {
		switch t.TTLMillis {
		case -2:
			fmt.Fprintf(tw, "timer key\t%s: not set (the sweep acts at the deadline)\n", t.Key)
		case -1:
			fmt.Fprintf(tw, "timer key\t%s: set without a TTL\n", t.Key)
		default:
			fmt.Fprintf(tw, "timer key\t%s: TTL %v\n", t.Key, time.Duration(t.TTLMillis)*time.Millisecond)
		}
		switch ix := t.Index; {
		case ix == nil:
			fmt.Fprintf(tw, "due index\tno entry\n")
		case ix.Dead:
			fmt.Fprintf(tw, "due index\tDEAD in %s after %d attempts: %s\n", ix.Shard, ix.Attempts, ix.LastError)
		default:
			fmt.Fprintf(tw, "due index\t%s in %s (%d failed attempts)\n", ts(&ix.Deadline), ix.Shard, ix.Attempts)
		}
	}
	return tw.Flush()
}
