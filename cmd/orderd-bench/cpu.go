package main

import (
	"context"
	"os"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// cpuTimes is where the machine's CPU time went, in seconds, at one moment:
// the daemons' processes, Redis (every node's INFO cpu), and the machine as
// a whole; what is left is mostly the database.
type cpuTimes struct {
	daemons, redis, machine float64
}

// clockTicks is the kernel's USER_HZ, 100 on Linux.
const clockTicks = 100.0

func readCPU(ctx context.Context, rdb redis.UniversalClient, pids []int) cpuTimes {
	var c cpuTimes
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name in parentheses; utime and stime are
		// the 14th and 15th fields of the line.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 12 {
			u, _ := strconv.ParseFloat(f[11], 64)
			k, _ := strconv.ParseFloat(f[12], 64)
			c.daemons += (u + k) / clockTicks
		}
	}
	each := func(n redis.UniversalClient) {
		info, err := n.Info(ctx, "cpu").Result()
		if err != nil {
			return
		}
		for _, line := range strings.Split(info, "\r\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
				x, _ := strconv.ParseFloat(v, 64)
				c.redis += x
			}
		}
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		cc.ForEachShard(ctx, func(_ context.Context, n *redis.Client) error { each(n); return nil })
	} else {
		each(rdb)
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal …
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			x, _ := strconv.ParseFloat(v, 64)
			c.machine += x / clockTicks
		}
	}
	return c
}

func (a cpuTimes) sub(b cpuTimes) cpuTimes {
	return cpuTimes{daemons: a.daemons - b.daemons, redis: a.redis - b.redis, machine: a.machine - b.machine}
}
