#!/usr/bin/env bash
# The newcomer's tour: installs Redis (Debian's redis-server) when missing,
# starts a private one with expired-key events on, under a scratch directory on
# a loopback port, runs `orderd demo` against it, and stops it afterwards.
# Extra arguments go to `orderd demo` (e.g. --shoppers 1000 --stock 200).
set -euo pipefail
cd "$(dirname "$0")/../.."
source contrib/dev/services.sh
services_scratch demo

services_install
services_start redis
go build -o "$ORDERD_SCRATCH/orderd" ./cmd/orderd
"$ORDERD_SCRATCH/orderd" demo --redis-url "redis://$ORDERD_TEST_REDIS/0" "$@"
