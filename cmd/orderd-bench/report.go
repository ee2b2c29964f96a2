package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

func (r *report) print(w io.Writer) {
	keys := make([]string, 0, len(r.Machine))
	for k := range r.Machine {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var m []string
	for _, k := range keys {
		m = append(m, k+": "+r.Machine[k])
	}
	fmt.Fprintf(w, "machine: %s\n", strings.Join(m, "; "))
	fmt.Fprintf(w, "settings: other keys %s, steady %s/s for %s, burst %s, naive wait %s\n\n",
		r.Settings["other_keys"], r.Settings["rate_per_s"], r.Settings["duration"], r.Settings["burst"], r.Settings["naive_wait"])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tmode\tlisteners\torders\thandled\tnot handled\tp50 late\tp99 late\tmax late\t>1 s late\tburst time\torders/s\tdaemon RSS\tmean batch\ttransactions\tunchanged\tbusiest\tdropped\tswept\treconnects\tCPU s daemon/redis/all\tstream\tstream done\tstock ok\t")
	for _, x := range r.Results {
		burst, rate := "", ""
		if x.Scenario == "burst" || x.Scenario == "replicas" {
			burst, rate = fmt.Sprintf("%.2f s", x.ElapsedS), fmt.Sprintf("%.0f", x.PerSecond)
		}
		stream := "off"
		if x.StreamS > 0 {
			stream = fmt.Sprintf("%.2f s", x.StreamS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%.0f MB\t%.1f\t%.0f\t%.0f\t%.0f %%\t%.0f\t%.0f\t%.0f\t%.1f/%.1f/%.1f\t%d\t%s\t%v\t\n",
			x.Scenario, x.Mode, x.Listeners, x.Orders, x.Handled, x.NotHandled, ms(x.P50ms), ms(x.P99ms), ms(x.MaxMs),
			x.LateOver1s, burst, rate, x.RSSMB, x.MeanBatch, x.Transactions, x.Unchanged, x.BusiestPct,
			x.Dropped, x.Rescued, x.Reconnects, x.CPUDaemonS, x.CPURedisS, x.CPUMachineS, x.StreamEntries, stream, x.StockOK)
	}
	tw.Flush()
	for _, x := range r.Results {
		if h := x.Host; h != nil {
			fmt.Fprintf(w, "\n%s: meanwhile Redis answered a PING in p50 %.1f / p99 %.1f / max %.1f ms, and a 10 ms sleep woke late by p99 %.1f / max %.1f ms",
				x.Scenario, h.PingP50ms, h.PingP99ms, h.PingMaxMs, h.WakeP99ms, h.WakeMaxMs)
		}
	}
	fmt.Fprintln(w)
	for _, x := range r.Results {
		if x.Scenario == "idle" {
			fmt.Fprintf(w, "\nidle: an `orderd listen` with nothing to do sends %.0f Redis commands per second\n", x.IdleCommandsPerS)
		}
	}
	var one, many *result
	for i, x := range r.Results {
		if x.Scenario == "replicas" && x.Listeners == 1 {
			one = &r.Results[i]
		} else if x.Scenario == "replicas" {
			many = &r.Results[i]
		}
	}
	if one != nil && many != nil {
		fmt.Fprintf(w, "\nreplicas: %d listeners made %s the transactions of one, at %s its orders/s; the busiest made %.0f %% of the transitions\n",
			many.Listeners, ratio(many.Transactions, one.Transactions), ratio(many.PerSecond, one.PerSecond), many.BusiestPct)
	}
	for _, sc := range []string{"steady", "burst"} {
		a, ok := r.find(sc, "orderd")
		if !ok {
			continue
		}
		if b, ok := r.find(sc, "laravel"); ok { // the same engine on a shop's own tables
			switch sc {
			case "steady":
				fmt.Fprintf(w, "\nsteady: on a Laravel shop's own tables (a configured SQL timer), p99 lateness %s against %s on orderd's (%+.0f ms)",
					ms(b.P99ms), ms(a.P99ms), b.P99ms-a.P99ms)
			case "burst":
				fmt.Fprintf(w, "\nburst: on a Laravel shop's own tables (a configured SQL timer), %.0f orders/s: %s the built-in's %.0f",
					b.PerSecond, ratio(b.PerSecond, a.PerSecond), a.PerSecond)
			}
		}
		for _, mode := range []string{"naive", "asynq", "asynq-100ms"} {
			b, ok := r.find(sc, mode)
			if !ok {
				continue
			}
			switch sc {
			case "steady":
				fmt.Fprintf(w, "\nsteady: %s p99 lateness is %s orderd's (%s against %s); %d of %d %s orders handled within the wait, %d of %d for orderd",
					mode, ratio(b.P99ms, a.P99ms), ms(b.P99ms), ms(a.P99ms), b.Handled, b.Orders, mode, a.Handled, a.Orders)
			case "burst":
				fmt.Fprintf(w, "\nburst: orderd closes %s as many orders per second as %s (%.0f against %.0f)",
					ratio(a.PerSecond, b.PerSecond), mode, a.PerSecond, b.PerSecond)
			}
		}
	}
	fmt.Fprintln(w)
}

func (r *report) find(scenario, mode string) (result, bool) {
	for _, x := range r.Results {
		if x.Scenario == scenario && x.Mode == mode {
			return x, true
		}
	}
	return result{}, false
}

func ms(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1f s", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "∞×"
	}
	return fmt.Sprintf("%.1f×", a/b)
}
