// Command orderd-bench measures orderd on real Redis and MariaDB: how late
// orders are handled while a million other timers are pending (steady; and
// traffic, where `orderd serve` takes new orders over HTTP while others
// expire, as in a shop), and how fast a burst of orders sharing one deadline
// is closed (burst), for
// orderd as it ships and for the naive design (plain keyspace events, one
// transaction per order) side by side.
//
// It starts nothing but the daemon under test (`orderd listen`, so that its
// memory is its own) and uses — and empties — the Redis database of
// --redis-url and a database "orderd_bench" on the MariaDB of --mysql. Point it
// at private servers: contrib/dev/bench.sh starts them.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type config struct {
	redisURL  string
	mysqlBase string
	orderd    string
	jsonPath  string

	otherKeys int
	rate      int
	duration  time.Duration
	burst     int
	naiveWait time.Duration
	replicas  int // listeners of the replicas scenario, run against one
	modes     []string
	// laravelDir holds the Laravel example (schema.sql, orderd.yaml) that
	// mode laravel runs.
	laravelDir string
	scenarios  []string
	extra      []string // more flags for `orderd listen` in orderd mode
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "naive-listen" { // the naive mode's daemon: this program, run again
		if err := naiveListen(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "naive-listen:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 5 && os.Args[1] == "asynq-listen" { // the asynq modes' daemon
		if err := asynqListen(os.Args[2], os.Args[3], os.Args[4]); err != nil {
			fmt.Fprintln(os.Stderr, "asynq-listen:", err)
			os.Exit(1)
		}
		return
	}
	var c config
	var preset, modes, scenarios string
	flag.StringVar(&c.redisURL, "redis-url", "redis://127.0.0.1:16379/0", "Redis to use (its database is emptied)")
	flag.StringVar(&c.mysqlBase, "mysql", "mysql://orderd:orderd@127.0.0.1:13306", "MariaDB/MySQL URL without database name")
	flag.StringVar(&c.orderd, "orderd", "./orderd", "the orderd binary to run as the daemon")
	flag.StringVar(&c.jsonPath, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&preset, "preset", "full", "full (1M other timers, 1,000/s for 30 s, burst of 1M), quick (burst of 100k) or smoke (tiny, for CI)")
	flag.IntVar(&c.otherKeys, "other-keys", -1, "other pending TTL keys during steady (overrides the preset)")
	flag.IntVar(&c.rate, "rate", -1, "pay timeouts per second during steady (overrides the preset)")
	flag.DurationVar(&c.duration, "duration", -1, "length of steady (overrides the preset)")
	flag.IntVar(&c.burst, "burst", -1, "orders sharing one deadline in burst (overrides the preset)")
	flag.DurationVar(&c.naiveWait, "naive-wait", -1, "how long the naive mode may take after the last deadline before the rest count as not handled")
	flag.StringVar(&modes, "modes", "orderd,laravel,naive,asynq,asynq-100ms", "modes to run: orderd, laravel (orderd on a Laravel shop's own tables: the pay timeout as configured SQL, contrib/examples/laravel), naive (keyspace events, a transaction per order), asynq (the peer, its forwarder every 5 s) and asynq-100ms (every 100 ms)")
	flag.StringVar(&c.laravelDir, "laravel-dir", "contrib/examples/laravel", "the Laravel example that mode laravel runs (schema.sql, orderd.yaml)")
	flag.StringVar(&scenarios, "scenarios", "idle,steady,traffic,burst,replicas", "scenarios to run (idle: the Redis commands per second of an `orderd listen` with nothing to do; traffic: orders created through `orderd serve` at --rate/s for --duration with a 3 s pay timeout while others expire; replicas: the burst with one `orderd listen`, then with --replicas of them; idle, traffic and replicas in orderd mode only)")
	flag.IntVar(&c.replicas, "replicas", 3, "listeners sharing the burst in the replicas scenario")
	var extra string
	flag.StringVar(&extra, "listen-flags", "", "more flags for `orderd listen` in orderd mode, space-separated (tuning experiments)")
	flag.Parse()

	p, ok := presets[preset]
	if !ok {
		fmt.Fprintf(os.Stderr, "orderd-bench: --preset %q: use full, quick or smoke\n", preset)
		os.Exit(2)
	}
	setDefault(&c.otherKeys, p.otherKeys)
	setDefault(&c.rate, p.rate)
	setDefault(&c.burst, p.burst)
	if c.duration < 0 {
		c.duration = p.duration
	}
	if c.naiveWait < 0 {
		c.naiveWait = p.naiveWait
	}
	c.extra = strings.Fields(extra)
	c.modes = split(modes)
	c.scenarios = split(scenarios)
	for _, m := range c.modes {
		if m != "orderd" && m != "laravel" && m != "naive" && !isAsynq(m) {
			fmt.Fprintf(os.Stderr, "orderd-bench: --modes: unknown mode %q\n", m)
			os.Exit(2)
		}
	}
	for _, s := range c.scenarios {
		if s != "idle" && s != "steady" && s != "traffic" && s != "burst" && s != "replicas" {
			fmt.Fprintf(os.Stderr, "orderd-bench: --scenarios: unknown scenario %q\n", s)
			os.Exit(2)
		}
	}
	if c.rate <= 0 || c.duration <= 0 || c.burst <= 0 || c.otherKeys < 0 || c.replicas < 2 {
		fmt.Fprintln(os.Stderr, "orderd-bench: --rate, --duration and --burst must be positive, --replicas at least 2")
		os.Exit(2)
	}
	if _, err := os.Stat(c.orderd); err != nil {
		fmt.Fprintf(os.Stderr, "orderd-bench: --orderd: %v (build it: go build -o orderd ./cmd/orderd)\n", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, c)
	if rep != nil {
		rep.print(os.Stdout)
		if c.jsonPath != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(c.jsonPath, append(b, '\n'), 0o644); werr != nil {
				err = errors.Join(err, werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "orderd-bench:", err)
		os.Exit(1)
	}
}

type preset struct {
	otherKeys, rate, burst int
	duration, naiveWait    time.Duration
}

var presets = map[string]preset{
	"full":  {otherKeys: 1_000_000, rate: 1000, duration: 30 * time.Second, burst: 1_000_000, naiveWait: 150 * time.Second},
	"quick": {otherKeys: 1_000_000, rate: 1000, duration: 30 * time.Second, burst: 100_000, naiveWait: 150 * time.Second},
	"smoke": {otherKeys: 2_000, rate: 200, duration: 2 * time.Second, burst: 2_000, naiveWait: 20 * time.Second},
}

func setDefault(v *int, d int) {
	if *v < 0 {
		*v = d
	}
}

func split(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
