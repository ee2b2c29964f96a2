#!/usr/bin/env bash
# Runs the benchmark (cmd/orderd-bench) against a private Redis and MariaDB,
# which it installs when missing, starts under a scratch directory on loopback
# ports, and stops afterwards. Arguments go to orderd-bench, e.g.
#   bash contrib/dev/bench.sh                      # full: 1M other timers, burst of 1M;
#                                                  # orderd, naive, asynq and asynq-100ms side by side
#   bash contrib/dev/bench.sh --preset quick       # burst of 100k
#   bash contrib/dev/bench.sh --preset smoke       # seconds; what CI runs
set -euo pipefail
cd "$(dirname "$0")/../.."
source contrib/dev/services.sh
services_scratch bench

services_install mysql
services_start redis
services_start mysql
go build -o "$ORDERD_SCRATCH/orderd" ./cmd/orderd
# The benchmark is a module of its own (it needs asynq, which orderd does not).
(cd cmd/orderd-bench && go build -o "$ORDERD_SCRATCH/orderd-bench" .)
"$ORDERD_SCRATCH/orderd-bench" --orderd "$ORDERD_SCRATCH/orderd" \
	--redis-url "redis://$ORDERD_TEST_REDIS/0" --mysql "$ORDERD_TEST_MYSQL" "$@"
