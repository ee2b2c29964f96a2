#!/usr/bin/env bash
# Runs orderd's whole test suite against a private Redis and MariaDB, which it
# installs (Debian packages) when missing, starts under a scratch directory on
# loopback ports, and stops afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
source contrib/dev/services.sh
services_scratch test

services_install mysql systemd-analyze supervisord jq promtool php php-redis galera chromium
services_start redis
services_start mysql
services_start cluster
services_start sentinel
services_start galera
echo "redis $ORDERD_TEST_REDIS, mariadb $ORDERD_TEST_MYSQL, cluster $ORDERD_TEST_CLUSTER, sentinels $ORDERD_TEST_SENTINEL, galera $ORDERD_TEST_GALERA, scratch $ORDERD_SCRATCH"

echo "== go vet"; go vet ./...; (cd cmd/orderd-bench && go vet ./...)
echo "== gofmt"; unformatted=$(gofmt -l .); [ -z "$unformatted" ] || { echo "gofmt would change: $unformatted"; exit 1; }
# One package at a time (-p 1): the packages' tests are timed against real
# servers (bursts of 20,000 orders, a 5 s request deadline, frozen and killed
# processes), and on two cores two such packages at once starve each other.
echo "== go test -race"; go test -race -p 1 -count=1 -timeout 30m ./...
echo "== fuzz (a few seconds each)"
while read -r pkg fuzz; do
	go test -run '^$' -fuzz "^${fuzz}\$" -fuzztime 4s "$pkg"
done <<'LIST'
./expiry FuzzNewEvent
./order/daemon FuzzParseKeyID
./order/httpapi FuzzAPI
LIST
echo "== benchmark smoke run (speed is reported, never asserted)"
go build -o "$ORDERD_SCRATCH/orderd" ./cmd/orderd
(cd cmd/orderd-bench && go build -o "$ORDERD_SCRATCH/orderd-bench" .) # a module of its own: it needs asynq
"$ORDERD_SCRATCH/orderd-bench" --preset smoke --orderd "$ORDERD_SCRATCH/orderd" \
	--redis-url "redis://$ORDERD_TEST_REDIS/15" --mysql "$ORDERD_TEST_MYSQL" 2>/dev/null
echo "all tests passed"
