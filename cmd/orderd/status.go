package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/orderd/orderd/expiry"
	"github.com/orderd/orderd/order"
)

type statusOptions struct {
	*globalOptions
	JSON bool
	Next int
}

func newStatusCmd(g *globalOptions) *cobra.Command {
	o := &statusOptions{globalOptions: g}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what is pending, overdue and due next; timers in Redis; live listeners",
		Long: `Show what orderd is doing: orders by status, overdue orders and the oldest's
age, the next deadlines, the timers in the Redis due index per shard, whether
Redis publishes expired-key events (on every node), the live listeners and the
shards they hold, the transitions stream and its outbox, and the schema
version.

Exit 0 when all is well, 1 when something needs attention (orders overdue by
more than --sweep-interval, expired-key events off, no listener running while
orders wait for a deadline, a transition waiting in the outbox for over a
minute), so that it can serve as a check in scripts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Next < 0 {
				return usageErrorf("--next must not be negative, not %d", o.Next)
			}
			if o.config != nil && len(o.config.timers) > 0 {
				return runtimeError(runStatusOwnTables(cmd.Context(), o, cmd.OutOrStdout()))
			}
			return runtimeError(runStatus(cmd.Context(), o, cmd.OutOrStdout()))
		},
	}
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON (for scripts) instead of a table")
	cmd.Flags().IntVar(&o.Next, "next", 5, "how many of the next deadlines to show")
	addConfigFlag(cmd, g)
	return cmd
}

// statusReport is what `orderd status` prints; its JSON form is for scripts.
type statusReport struct {
	At     time.Time    `json:"at"`
	Redis  string       `json:"redis"`
	Schema schemaStatus `json:"schema"`
	redisState
	Orders   map[string]int64 `json:"orders"`
	Overdue  []overdueStatus  `json:"overdue"`
	Next     []nextDeadline   `json:"next_deadlines"`
	Stream   streamStatus     `json:"transitions_stream"`
	Problems []string         `json:"problems"`
	Healthy  bool             `json:"healthy"`
}

// redisState is what status reads from Redis, whatever the timers: events,
// eviction, the due index and the listeners.
type redisState struct {
	Notify   notifyStatus `json:"expired_events"`
	Eviction string       `json:"eviction"` // "safe", or what is wrong with maxmemory-policy
	Index    indexStatus  `json:"due_index"`
}

// streamStatus is the transitions stream and its outbox.
type streamStatus struct {
	Name          string  `json:"name"`
	On            bool    `json:"on"` // --transitions-maxlen above 0
	Entries       int64   `json:"entries"`
	Relay         string  `json:"relay"` // the holder of the relay lease, if any
	Backlog       int64   `json:"backlog"`
	OldestSeconds float64 `json:"backlog_oldest_age_seconds"`
}

// stuckBacklog is how long a transition may wait in the outbox before
// status says so (the relay appends within milliseconds while it runs).
const stuckBacklog = time.Minute

type schemaStatus struct {
	Version int64 `json:"version"`
	Latest  int64 `json:"latest"`
}

type notifyStatus struct {
	On     *bool  `json:"on"` // null when Redis does not let us read the setting
	Detail string `json:"detail,omitempty"`
}

type overdueStatus struct {
	Status        string     `json:"status"`
	Count         int64      `json:"count"`
	Oldest        *time.Time `json:"oldest_deadline,omitempty"`
	OldestSeconds float64    `json:"oldest_age_seconds"`
}

type nextDeadline struct {
	ID     int64     `json:"id"`
	Status string    `json:"status"`
	At     time.Time `json:"deadline"`
}

type indexStatus struct {
	Name      string           `json:"name"`
	Timers    int64            `json:"timers"`
	Overdue   int64            `json:"overdue"`
	Shards    []shardStatus    `json:"shards"`
	Listeners []listenerStatus `json:"listeners"`
	Sweeper   string           `json:"sweeper"`
	LastSweep *lastSweep       `json:"last_sweep"` // null before the first`
	Retries   int64            `json:"retries"`
	Dead      []deadTimer      `json:"dead"`
}

type shardStatus struct {
	Name    string `json:"name"`
	Timers  int64  `json:"timers"`
	Overdue int64  `json:"overdue"`
	Holder  string `json:"holder"`
	Retries int64  `json:"retries"`
	Dead    int64  `json:"dead"`
}

// lastSweep is the outcome of the last sweep a listener ran.
type lastSweep struct {
	At    time.Time `json:"at"`
	Moved int64     `json:"moved"`
	Error string    `json:"error,omitempty"`
	By    string    `json:"by"`
}

// deadTimer is a timer whose handling failed every attempt.
type deadTimer struct {
	Key       string    `json:"key"`
	Attempts  int       `json:"attempts"`
	Died      time.Time `json:"died"`
	LastError string    `json:"last_error"`
}

type listenerStatus struct {
	ID     string   `json:"id"`
	Shards []string `json:"shards"`
	Sweeps bool     `json:"sweeps"`
}

func runStatus(ctx context.Context, o *statusOptions, out io.Writer) error {
	d, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer d.close()
	r, err := buildStatus(ctx, o, d)
	if err != nil {
		return err
	}
	return o.report(out, r, r.Problems, func() { r.print(out, r.At) })
}

// buildStatus reads what `orderd status` reports (and the console shows).
func buildStatus(ctx context.Context, o *statusOptions, d *deps) (statusReport, error) {
	var err error
	now := time.Now()
	r := statusReport{At: now.UTC().Truncate(time.Millisecond), Redis: o.redis.String(), Orders: map[string]int64{},
		Overdue: []overdueStatus{}, Next: []nextDeadline{}, Problems: []string{}}

	if r.Schema.Version, r.Schema.Latest, err = d.store.SchemaVersion(ctx); err != nil {
		return r, err
	}
	ov, err := d.store.Overview(ctx, now, o.Next)
	if err != nil {
		return r, err
	}
	for _, st := range []order.Status{order.Pending, order.Paid, order.Shipped, order.Completed, order.Cancelled, order.Expired} {
		r.Orders[string(st)] = ov.Counts[st]
	}
	for _, st := range []order.Status{order.Pending, order.Shipped} {
		od := overdueStatus{Status: string(st), Count: ov.Overdue[st]}
		if oldest, ok := ov.OldestOverdue[st]; ok {
			od.Oldest = &oldest
			od.OldestSeconds = now.Sub(oldest).Seconds()
			if age := now.Sub(oldest); age > o.SweepInterval {
				r.Problems = append(r.Problems, fmt.Sprintf("%d %s order(s) overdue, the oldest by %v: more than --sweep-interval (%v); is `orderd listen` running?",
					od.Count, st, age.Round(time.Second), o.SweepInterval))
			}
		}
		r.Overdue = append(r.Overdue, od)
	}
	for _, n := range ov.Next {
		r.Next = append(r.Next, nextDeadline{ID: n.ID, Status: string(n.Status), At: n.At})
	}

	var problems []string
	if r.redisState, problems, err = readRedisState(ctx, d.rdb, d.sched); err != nil {
		return r, err
	}
	r.Problems = append(r.Problems, problems...)
	if waiting := ov.Counts[order.Pending] + ov.Counts[order.Shipped]; len(r.Index.Listeners) == 0 && waiting > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("no `orderd listen` is running, and %d order(s) wait for a deadline", waiting))
	}
	keys := o.keys()
	r.Stream = streamStatus{Name: keys.Transitions(), On: o.TransitionsMaxLen > 0}
	if r.Stream.Entries, err = d.rdb.XLen(ctx, keys.Transitions()).Result(); err != nil {
		return r, fmt.Errorf("read the transitions stream: %w", err)
	}
	if r.Stream.Relay, err = d.rdb.Get(ctx, keys.TransitionsRelay()).Result(); err != nil && !errors.Is(err, redis.Nil) {
		return r, fmt.Errorf("read the transitions relay's lease: %w", err)
	}
	r.Stream.Relay, _, _ = strings.Cut(r.Stream.Relay, "#") // the relay's id, without its lease's token
	backlog, oldest, err := d.store.ChangeBacklog(ctx)
	if err != nil {
		return r, err
	}
	r.Stream.Backlog = backlog
	if !oldest.IsZero() {
		r.Stream.OldestSeconds = max(0, now.Sub(oldest).Seconds())
		if age := now.Sub(oldest); age > stuckBacklog {
			r.Problems = append(r.Problems, fmt.Sprintf("%d transition(s) wait in the outbox, the oldest for %v: no relay appends them to %s (is Redis reachable, and an `orderd serve` or `listen` running with the stream on?)",
				backlog, age.Round(time.Second), keys.Transitions()))
		}
	}
	r.Healthy = len(r.Problems) == 0
	return r, nil
}

// report writes r as JSON (--json) or with print, and returns an error
// naming the problems when there are any (exit 1).
func (o *statusOptions) report(out io.Writer, r any, problems []string, print func()) error {
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		print()
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d problem(s) need attention: %s", len(problems), strings.Join(problems, "; "))
	}
	return nil
}

// readRedisState reads the expired-key events' setting, eviction and the due
// index of sched, and says what needs attention.
func readRedisState(ctx context.Context, rdb redis.UniversalClient, sched *expiry.Scheduler) (st redisState, problems []string, err error) {
	switch err := expiry.CheckNotify(ctx, rdb); {
	case err == nil:
		on := true
		st.Notify.On = &on
	case errors.Is(err, expiry.ErrNotifyDisabled):
		off := false
		st.Notify.On, st.Notify.Detail = &off, err.Error()
		problems = append(problems, "Redis does not publish expired-key events: "+err.Error())
	case errors.Is(err, expiry.ErrConfigUnavailable):
		st.Notify.Detail = "unknown: " + err.Error()
	default:
		return st, nil, fmt.Errorf("read notify-keyspace-events: %w", err)
	}

	switch err := expiry.CheckEviction(ctx, rdb); {
	case err == nil:
		st.Eviction = "safe"
	case errors.Is(err, expiry.ErrEvictionUnsafe):
		st.Eviction = err.Error()
		problems = append(problems, "Redis may evict keys without a TTL: "+err.Error())
	case errors.Is(err, expiry.ErrConfigUnavailable):
		st.Eviction = "unknown: " + err.Error()
	default:
		return st, nil, fmt.Errorf("read maxmemory-policy: %w", err)
	}

	idx, err := sched.Inspect(ctx)
	if err != nil {
		return st, nil, err
	}
	st.Index = indexStatus{Name: sched.Index(), Shards: []shardStatus{}, Listeners: []listenerStatus{}, Sweeper: idx.Sweeper, Dead: []deadTimer{}}
	st.Index.Timers, st.Index.Overdue = idx.Timers()
	for _, sh := range idx.Shards {
		st.Index.Shards = append(st.Index.Shards, shardStatus(sh))
		st.Index.Retries += sh.Retries
	}
	if n := idx.Dead(); n > 0 {
		dead, err := sched.Dead(ctx, 20)
		if err != nil {
			return st, nil, fmt.Errorf("read the dead timers: %w", err)
		}
		for _, t := range dead {
			st.Index.Dead = append(st.Index.Dead, deadTimer{Key: t.Key, Attempts: t.Attempts, Died: t.Deadline, LastError: t.LastError})
		}
		problems = append(problems, fmt.Sprintf("%d timer(s) failed every attempt and wait in the dead set: fix the cause, then re-arm them", n))
	}
	for _, l := range idx.Listeners {
		st.Index.Listeners = append(st.Index.Listeners, listenerStatus{ID: l.ID, Shards: append([]string{}, l.Shards...), Sweeps: l.Sweeps})
	}
	last, err := rdb.HGetAll(ctx, lastSweepKey(sched.Index())).Result()
	if err != nil {
		return st, nil, fmt.Errorf("read the last sweep: %w", err)
	}
	if at, err := time.Parse(time.RFC3339Nano, last["at"]); err == nil {
		moved, _ := strconv.ParseInt(last["moved"], 10, 64)
		st.Index.LastSweep = &lastSweep{At: at, Moved: moved, Error: last["error"], By: last["by"]}
	}
	return st, problems, nil
}

// print writes the report as tables for a terminal.
func (r *statusReport) print(w io.Writer, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "redis\t%s\n", r.Redis)
	schema := "up to date"
	if r.Schema.Version < r.Schema.Latest {
		schema = fmt.Sprintf("%d migration(s) to apply: run `orderd migrate`", r.Schema.Latest-r.Schema.Version)
	}
	fmt.Fprintf(tw, "schema\tversion %d (%s)\n", r.Schema.Version, schema)
	r.redisState.printEvents(tw)
	var counts []string
	for _, st := range []string{"pending", "paid", "shipped", "completed", "cancelled", "expired"} {
		counts = append(counts, fmt.Sprintf("%s %d", st, r.Orders[st]))
	}
	fmt.Fprintf(tw, "orders\t%s\n", strings.Join(counts, ", "))
	for _, o := range r.Overdue {
		line := fmt.Sprintf("%d", o.Count)
		if o.Oldest != nil {
			line += fmt.Sprintf(", the oldest by %v", time.Duration(o.OldestSeconds*float64(time.Second)).Round(time.Millisecond))
		}
		fmt.Fprintf(tw, "overdue %s\t%s\n", o.Status, line)
	}
	r.redisState.printIndex(tw)
	stream := fmt.Sprintf("%s: %d entries", r.Stream.Name, r.Stream.Entries)
	if !r.Stream.On {
		stream += " (off: --transitions-maxlen 0)"
	}
	if r.Stream.Relay != "" {
		stream += ", relayed by " + r.Stream.Relay
	}
	fmt.Fprintf(tw, "transitions stream\t%s\n", stream)
	backlog := fmt.Sprintf("%d waiting", r.Stream.Backlog)
	if r.Stream.Backlog > 0 {
		backlog += fmt.Sprintf(", the oldest for %v", time.Duration(r.Stream.OldestSeconds*float64(time.Second)).Round(time.Millisecond))
	}
	fmt.Fprintf(tw, "outbox\t%s\n", backlog)
	tw.Flush()

	if len(r.Next) > 0 {
		fmt.Fprintln(w, "\nnext deadlines:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  order\tstatus\tdeadline\tin")
		for _, n := range r.Next {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%v\n", n.ID, n.Status, n.At.UTC().Format(time.RFC3339Nano), n.At.Sub(now).Round(time.Millisecond))
		}
		tw.Flush()
	}
	r.redisState.printTables(w)
	printProblems(w, r.Problems)
}

// printLines writes the lines of the table about Redis.
func (r *redisState) printLines(tw io.Writer) {
	r.printEvents(tw)
	r.printIndex(tw)
}

func (r *redisState) printEvents(tw io.Writer) {
	events := "unknown (" + r.Notify.Detail + ")"
	if r.Notify.On != nil && *r.Notify.On {
		events = "on (every node)"
	} else if r.Notify.On != nil {
		events = "OFF: " + r.Notify.Detail
	}
	fmt.Fprintf(tw, "expired-key events\t%s\n", events)
	fmt.Fprintf(tw, "eviction\t%s\n", r.Eviction)
}

func (r *redisState) printIndex(tw io.Writer) {
	fmt.Fprintf(tw, "due index\t%s: %d timer(s), %d overdue, in %d shards\n", r.Index.Name, r.Index.Timers, r.Index.Overdue, len(r.Index.Shards))
	fmt.Fprintf(tw, "failing timers\t%d retrying, %d dead\n", r.Index.Retries, len(r.Index.Dead))
	fmt.Fprintf(tw, "listeners\t%d live\n", len(r.Index.Listeners))
	if ls := r.Index.LastSweep; ls != nil {
		outcome := fmt.Sprintf("moved %d", ls.Moved)
		if ls.Error != "" {
			outcome = "FAILED: " + ls.Error
		}
		fmt.Fprintf(tw, "last sweep\t%s by %s, %v ago: %s\n", ls.At.Format(time.RFC3339), ls.By, time.Since(ls.At).Round(time.Second), outcome)
	}
}

// printTables writes the listeners, the shards and the dead timers.
func (r *redisState) printTables(w io.Writer) {
	if len(r.Index.Listeners) > 0 {
		fmt.Fprintln(w, "\nlisteners:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  id\tshards\tsweep")
		for _, l := range r.Index.Listeners {
			fmt.Fprintf(tw, "  %s\t%d\t%s\n", l.ID, len(l.Shards), yes(l.Sweeps))
		}
		tw.Flush()
	}
	fmt.Fprintln(w, "\nshards:")
	tw2 := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw2, "  shard\ttimers\toverdue\tholder")
	for _, s := range r.Index.Shards {
		holder := s.Holder
		if holder == "" {
			holder = "-"
		}
		fmt.Fprintf(tw2, "  %s\t%d\t%d\t%s\n", s.Name, s.Timers, s.Overdue, holder)
	}
	tw2.Flush()
	if len(r.Index.Dead) > 0 {
		fmt.Fprintln(w, "\ndead timers:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  key\tattempts\tdied\tlast error")
		for _, t := range r.Index.Dead {
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\n", t.Key, t.Attempts, t.Died.UTC().Format(time.RFC3339), t.LastError)
		}
		tw.Flush()
	}
}

// printProblems writes what needs attention, if anything.
func printProblems(w io.Writer, problems []string) {
	if len(problems) > 0 {
		fmt.Fprintln(w, "\nneeds attention:")
		for _, p := range problems {
			fmt.Fprintln(w, "  - "+p)
		}
	}
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return ""
}
