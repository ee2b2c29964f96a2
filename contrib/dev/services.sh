#!/usr/bin/env bash
# Private Redis and MariaDB for orderd's tests and demo.
#
# Source this file, then call:
#   services_scratch NAME       make $ORDERD_SCRATCH, removed with the servers on exit
#   services_install [mysql] [TOOL...]
#                               install redis-server (and mariadb-server, and the Debian
#                               package of each TOOL: systemd-analyze, supervisord, jq, promtool, php,
#                               php-redis: PHP's redis extension, galera: galera-4 and rsync, chromium)
#                               from Debian when missing
#   services_start redis|mysql|cluster|sentinel|galera
#                               start a private server (or set) under $ORDERD_SCRATCH on loopback ports
#   services_stop               stop every server this shell started (also run on EXIT)
#
# Nothing here uses or touches a server that is already running on the machine:
# each server gets its own data directory, socket, pid file and port.
# Ports: ORDERD_DEV_REDIS_PORT (default 16379), ORDERD_DEV_MYSQL_PORT (default 13306),
# or the next free port above. services_start exports ORDERD_TEST_REDIS (host:port)
# and ORDERD_TEST_MYSQL (a mysql:// URL without database name).
# cluster: six redis-server --cluster-enabled yes (3 masters, 3 replicas) from
# ORDERD_DEV_CLUSTER_PORT (default 17001); exports ORDERD_TEST_CLUSTER (their
# host:port, comma-separated). sentinel: a master, a replica and three sentinels
# (master name "orderd") from ORDERD_DEV_SENTINEL_PORT (default 17101); exports
# ORDERD_TEST_SENTINEL (the sentinels' host:port, comma-separated). Every node
# publishes expired-key events (notify-keyspace-events Ex), replicas too.
# galera: three MariaDB nodes in one Galera cluster (galera-4; the first
# bootstrapped, the others joining by rsync SST), client ports from
# ORDERD_DEV_GALERA_PORT (default 13501), group ports from
# ORDERD_DEV_GALERA_PORT + 1000; exports ORDERD_TEST_GALERA (the nodes'
# host:port, comma-separated; user orderd, password orderd, as mysql) and
# ORDERD_TEST_GALERA_DIR (nN/mysql.pid and nN/start.sh of each node there).

ORDERD_DEV_REDIS_PORT=${ORDERD_DEV_REDIS_PORT:-16379}
ORDERD_DEV_MYSQL_PORT=${ORDERD_DEV_MYSQL_PORT:-13306}
ORDERD_DEV_CLUSTER_PORT=${ORDERD_DEV_CLUSTER_PORT:-17001}
ORDERD_DEV_SENTINEL_PORT=${ORDERD_DEV_SENTINEL_PORT:-17101}
ORDERD_DEV_GALERA_PORT=${ORDERD_DEV_GALERA_PORT:-13501}
_services_pids=()

services_scratch() {
	ORDERD_SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/orderd-$1.XXXXXX")
	export ORDERD_SCRATCH
	trap 'services_stop; rm -rf "$ORDERD_SCRATCH"' EXIT
}

_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The Debian package that brings each tool the tests use.
_tool_package() {
	case "$1" in
	systemd-analyze) echo systemd ;;
	supervisord) echo supervisor ;;
	promtool) echo prometheus ;;
	php) echo php-cli ;;
	galera) echo galera-4 rsync ;;
	*) echo "$1" ;;
	esac
}

# _tool_present TOOL: whether the tool is there (php-redis: PHP's redis extension).
_tool_present() {
	case "$1" in
	php-redis) command -v php >/dev/null 2>&1 && php -m 2>/dev/null | grep -qx redis ;;
	galera) [ -e /usr/lib/galera/libgalera_smm.so ] && command -v rsync >/dev/null 2>&1 ;;
	*) command -v "$1" >/dev/null 2>&1 ;;
	esac
}

services_install() {
	local need=() tool
	command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
	if [ "${1:-}" = mysql ]; then
		command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
		shift
	fi
	for tool in "$@"; do
		# shellcheck disable=SC2207 # a tool may need several packages
		_tool_present "$tool" || need+=($(_tool_package "$tool"))
	done
	[ ${#need[@]} -eq 0 ] && return 0
	echo "installing ${need[*]} from Debian's packages" >&2
	_sudo apt-get update -qq
	# Keep the packages' own services from starting (we run private servers
	# only), and leave the machine's policy as it was.
	local policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		_sudo sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
		policy=made
	fi
	local rc=0
	DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "${need[@]}" >/dev/null || rc=$?
	[ -z "$policy" ] || _sudo rm -f /usr/sbin/policy-rc.d
	return "$rc"
}

_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# _pick_port BASE: BASE, or the next free port above it (another test run may hold BASE).
_pick_port() {
	local p=$1
	while ! _port_free "$p"; do
		p=$((p + 1))
		[ "$p" -gt $(($1 + 200)) ] && { echo "no free port near $1" >&2; return 1; }
	done
	echo "$p"
}

# _pick_block BASE N: the first of BASE, BASE+N, BASE+2N, … whose N ports are
# all free.
_pick_block() {
	local b=$1 i ok
	while [ "$b" -le $(($1 + 20 * $2)) ]; do
		ok=1
		for ((i = 0; i < $2; i++)); do _port_free $((b + i)) || { ok=0; break; }; done
		[ $ok = 1 ] && { echo "$b"; return 0; }
		b=$((b + $2))
	done
	echo "no free block of $2 ports near $1" >&2
	return 1
}

_wait_for() { # _wait_for SECONDS CMD...
	local n=$(( $1 * 10 )); shift
	while [ $n -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; n=$((n - 1)); done
	return 1
}

services_start() {
	: "${ORDERD_SCRATCH:?set ORDERD_SCRATCH to a scratch directory}"
	mkdir -p "$ORDERD_SCRATCH"
	case "$1" in
	redis)
		local port
		port=$(_pick_port "$ORDERD_DEV_REDIS_PORT") || return 1
		mkdir -p "$ORDERD_SCRATCH/redis"
		redis-server --port "$port" --bind 127.0.0.1 --dir "$ORDERD_SCRATCH/redis" \
			--save '' --appendonly no --notify-keyspace-events Ex \
			--daemonize yes --pidfile "$ORDERD_SCRATCH/redis/redis.pid" \
			--logfile "$ORDERD_SCRATCH/redis/redis.log" || return 1
		_wait_for 10 redis-cli -p "$port" ping || { echo "redis did not start" >&2; cat "$ORDERD_SCRATCH/redis/redis.log" >&2; return 1; }
		_services_pids+=("$(cat "$ORDERD_SCRATCH/redis/redis.pid")")
		export ORDERD_TEST_REDIS="127.0.0.1:$port"
		;;
	mysql)
		local port dir="$ORDERD_SCRATCH/mysql"
		port=$(_pick_port "$ORDERD_DEV_MYSQL_PORT") || return 1
		mkdir -p "$dir"
		mariadb-install-db --no-defaults --datadir="$dir/data" --user="$(id -un)" \
			--auth-root-authentication-method=normal >"$dir/install.log" 2>&1 ||
			{ echo "mariadb-install-db failed" >&2; cat "$dir/install.log" >&2; return 1; }
		/usr/sbin/mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/mysql.sock" \
			--pid-file="$dir/mysql.pid" --port="$port" --bind-address=127.0.0.1 \
			--user="$(id -un)" --log-error="$dir/error.log" --skip-name-resolve \
			--innodb-buffer-pool-size=1G --innodb-log-file-size=256M \
			--max-connections=500 >/dev/null 2>&1 &
		_services_pids+=("$!")
		_wait_for 60 mariadb --no-defaults --socket="$dir/mysql.sock" -uroot -e 'select 1' ||
			{ echo "mariadb did not start" >&2; cat "$dir/error.log" >&2; return 1; }
		mariadb --no-defaults --socket="$dir/mysql.sock" -uroot -e "
			CREATE USER IF NOT EXISTS 'orderd'@'127.0.0.1' IDENTIFIED BY 'orderd';
			GRANT ALL ON *.* TO 'orderd'@'127.0.0.1';
			CREATE DATABASE IF NOT EXISTS orderd;" || return 1
		export ORDERD_TEST_MYSQL="mysql://orderd:orderd@127.0.0.1:$port"
		;;
	cluster) _start_cluster ;;
	sentinel) _start_sentinel ;;
	galera) _start_galera ;;
	*) echo "services_start: unknown service $1" >&2; return 1 ;;
	esac
}

# _redis_node NAME PORT ARGS...: a redis-server under $ORDERD_SCRATCH/NAME.
_redis_node() {
	local name=$1 port=$2 dir="$ORDERD_SCRATCH/$1"
	shift 2
	mkdir -p "$dir"
	# A config file, so that a test can restart a node it killed as it was:
	# redis-server "$(redis-cli -p PORT config get dir | tail -1)/redis.conf".
	printf '%s\n' "port $port" "bind 127.0.0.1" "dir $dir" "save \"\"" "appendonly no" \
		"notify-keyspace-events Ex" "daemonize yes" "pidfile $dir/redis.pid" "logfile $dir/redis.log" >"$dir/redis.conf"
	while [ $# -gt 0 ]; do printf '%s %s\n' "${1#--}" "$2" >>"$dir/redis.conf"; shift 2; done
	redis-server "$dir/redis.conf" || return 1
	_wait_for 10 redis-cli -p "$port" ping || { echo "redis $name did not start" >&2; cat "$dir/redis.log" >&2; return 1; }
	_services_pids+=("$(cat "$dir/redis.pid")")
}

# _free_ports N BASE: N free ports from BASE up (with their cluster bus ports, +10000).
_free_ports() {
	local n=$1 p=$2 got=()
	while [ ${#got[@]} -lt "$n" ]; do
		if _port_free "$p" && _port_free $((p + 10000)); then got+=("$p"); fi
		p=$((p + 1))
		[ "$p" -gt $(($2 + 300)) ] && { echo "no free ports near $2" >&2; return 1; }
	done
	echo "${got[@]}"
}

_start_cluster() {
	local ports addrs=() p i
	ports=$(_free_ports 6 "$ORDERD_DEV_CLUSTER_PORT") || return 1
	for p in $ports; do
		_redis_node "cluster-$p" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
			--cluster-node-timeout 2000 || return 1
		addrs+=("127.0.0.1:$p")
	done
	redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$ORDERD_SCRATCH/cluster-create.log" 2>&1 ||
		{ echo "redis-cli --cluster create failed" >&2; cat "$ORDERD_SCRATCH/cluster-create.log" >&2; return 1; }
	for p in $ports; do
		_wait_for 30 sh -c "redis-cli -p $p cluster info | grep -q 'cluster_state:ok'" ||
			{ echo "cluster node $p never reached cluster_state:ok" >&2; return 1; }
	done
	for p in $ports; do # every replica in sync with its master
		_wait_for 30 sh -c "redis-cli -p $p info replication | grep -q '^role:master' || redis-cli -p $p info replication | grep -q 'master_link_status:up'" ||
			{ echo "cluster replica $p never synced" >&2; return 1; }
	done
	ORDERD_TEST_CLUSTER=$(IFS=,; echo "${addrs[*]}")
	export ORDERD_TEST_CLUSTER
}

_start_sentinel() {
	local ports master replica s dir sentinels=()
	read -r -a ports <<<"$(_free_ports 5 "$ORDERD_DEV_SENTINEL_PORT")" || return 1
	master=${ports[0]} replica=${ports[1]}
	_redis_node "sentinel-master-$master" "$master" || return 1
	_redis_node "sentinel-replica-$replica" "$replica" --replicaof "127.0.0.1 $master" || return 1
	_wait_for 30 sh -c "redis-cli -p $replica info replication | grep -q 'master_link_status:up'" ||
		{ echo "sentinel replica never synced" >&2; return 1; }
	for s in "${ports[@]:2}"; do
		dir="$ORDERD_SCRATCH/sentinel-$s"
		mkdir -p "$dir"
		cat >"$dir/sentinel.conf" <<-CONF
			port $s
			bind 127.0.0.1
			dir $dir
			sentinel monitor orderd 127.0.0.1 $master 2
			sentinel down-after-milliseconds orderd 2000
			sentinel failover-timeout orderd 10000
			sentinel parallel-syncs orderd 1
		CONF
		redis-server "$dir/sentinel.conf" --sentinel --daemonize yes --pidfile "$dir/redis.pid" \
			--logfile "$dir/redis.log" || return 1
		_wait_for 10 redis-cli -p "$s" ping || { echo "sentinel $s did not start" >&2; return 1; }
		_services_pids+=("$(cat "$dir/redis.pid")")
		sentinels+=("127.0.0.1:$s")
	done
	for s in "${ports[@]:2}"; do # each sentinel knows the replica and the other sentinels
		_wait_for 30 sh -c "redis-cli -p $s sentinel replicas orderd | grep -q $replica && redis-cli -p $s sentinel ckquorum orderd | grep -q OK && [ \$(redis-cli -p $s sentinel master orderd | grep -A1 '^num-other-sentinels$' | tail -1) = 2 ]" ||
			{ echo "sentinel $s never saw the whole set" >&2; return 1; }
	done
	ORDERD_TEST_SENTINEL=$(IFS=,; echo "${sentinels[*]}")
	export ORDERD_TEST_SENTINEL
}

# _galera_node N ARGS...: start node N (1-3) of the Galera cluster under
# $ORDERD_SCRATCH/galera/nN, on the ports picked by _start_galera. The
# command (without ARGS) is also written to nN/start.sh, which a test runs to
# start the node again after killing it: it joins the others (IST or SST).
# Commits are flushed to the log once a second (innodb_flush_log_at_trx_commit
# =2), as Galera's documentation advises: a committed write is on every node
# already, and a node that crashes takes its state from the others.
_galera_node() {
	local n=$1 dir="$ORDERD_SCRATCH/galera/n$1"
	shift
	local port=${_galera_ports[$((n - 1))]} group=${_galera_groups[$((n - 1))]}
	local cmd=(/usr/sbin/mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/mysql.sock"
		--pid-file="$dir/mysql.pid" --port="$port" --bind-address=127.0.0.1
		--user="$(id -un)" --log-error="$dir/error.log" --skip-name-resolve
		--innodb-buffer-pool-size=256M --max-connections=500 --innodb-flush-log-at-trx-commit=2
		--binlog-format=ROW --innodb-autoinc-lock-mode=2
		--wsrep-on=ON --wsrep-provider=/usr/lib/galera/libgalera_smm.so
		--wsrep-cluster-name=orderd --wsrep-node-name="n$n"
		--wsrep-cluster-address="gcomm://$(IFS=,; echo "${_galera_peers[*]}")"
		--wsrep-node-address="127.0.0.1:$group"
		--wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:$group;ist.recv_addr=127.0.0.1:$((group + 1))"
		--wsrep-sst-method=rsync --wsrep-sst-receive-address="127.0.0.1:$((group + 2))")
	{
		echo '#!/usr/bin/env bash'
		echo "# Starts Galera node $n again (it joins the cluster); written by contrib/dev/services.sh."
		# rsync SST writes the joiner's data directory as nobody when run by root.
		[ "$(id -u)" = 0 ] && echo "chown -R nobody $(printf '%q' "$dir/data")"
		echo "exec $(printf '%q ' "${cmd[@]}") >/dev/null 2>&1"
	} >"$dir/start.sh"
	"${cmd[@]}" "$@" >/dev/null 2>&1 &
	_services_pids+=("$!")
}

# _galera_synced N: whether node N is a synced member of the cluster.
_galera_synced() {
	mariadb --no-defaults --socket="$ORDERD_SCRATCH/galera/n$1/mysql.sock" -uroot -N \
		-e "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | grep -q Synced
}

_start_galera() {
	local n port group
	# Each node has a group port, then its IST and SST ports (bound only while
	# a node joins): the cluster takes a block of 9 of them, and another run's
	# cluster the next block, so that a join never meets the other's ports.
	port=$(_pick_block "$ORDERD_DEV_GALERA_PORT" 3) || return 1
	group=$(_pick_block $((ORDERD_DEV_GALERA_PORT + 1000)) 9) || return 1
	_galera_ports=() _galera_groups=() _galera_peers=()
	for n in 1 2 3; do
		_galera_ports+=("$port") _galera_groups+=("$group") _galera_peers+=("127.0.0.1:$group")
		port=$((port + 1)) group=$((group + 3))
	done
	mkdir -p "$ORDERD_SCRATCH/galera/n1" "$ORDERD_SCRATCH/galera/n2/data" "$ORDERD_SCRATCH/galera/n3/data"
	# rsync SST writes the joiner's data directory as nobody when run by root.
	[ "$(id -u)" = 0 ] && chown nobody "$ORDERD_SCRATCH/galera/n2/data" "$ORDERD_SCRATCH/galera/n3/data"
	mariadb-install-db --no-defaults --datadir="$ORDERD_SCRATCH/galera/n1/data" --user="$(id -un)" \
		--auth-root-authentication-method=normal >"$ORDERD_SCRATCH/galera/n1/install.log" 2>&1 ||
		{ echo "mariadb-install-db failed" >&2; cat "$ORDERD_SCRATCH/galera/n1/install.log" >&2; return 1; }
	_galera_node 1 --wsrep-new-cluster
	_wait_for 60 _galera_synced 1 || { echo "galera node 1 did not start" >&2; cat "$ORDERD_SCRATCH/galera/n1/error.log" >&2; return 1; }
	mariadb --no-defaults --socket="$ORDERD_SCRATCH/galera/n1/mysql.sock" -uroot -e "
		CREATE USER IF NOT EXISTS 'orderd'@'127.0.0.1' IDENTIFIED BY 'orderd';
		GRANT ALL ON *.* TO 'orderd'@'127.0.0.1';" || return 1
	for n in 2 3; do
		_galera_node "$n"
		_wait_for 90 _galera_synced "$n" || { echo "galera node $n did not join" >&2; cat "$ORDERD_SCRATCH/galera/n$n/error.log" >&2; return 1; }
	done
	local nodes=()
	for port in "${_galera_ports[@]}"; do nodes+=("127.0.0.1:$port"); done
	ORDERD_TEST_GALERA=$(IFS=,; echo "${nodes[*]}") ORDERD_TEST_GALERA_DIR=$ORDERD_SCRATCH/galera
	export ORDERD_TEST_GALERA ORDERD_TEST_GALERA_DIR
}

# services_stop never fails: it runs from EXIT traps under set -e, where a
# failing command would replace the script's exit status.
services_stop() {
	local pid f
	# Nodes a test restarted have new pids: take them from the pid files too.
	for f in "${ORDERD_SCRATCH:-/nonexistent}"/*/redis.pid "${ORDERD_SCRATCH:-/nonexistent}"/galera/*/mysql.pid; do
		[ -f "$f" ] && _services_pids+=("$(cat "$f")")
	done
	for pid in "${_services_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${_services_pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	done
	_services_pids=()
	return 0
}
