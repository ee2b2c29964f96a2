#!/usr/bin/env bash
# Start, stop and inspect `orderd listen` (or `orderd serve`) without a
# service manager, with a pid file and a log file.
#
#   contrib/nohup/orderd.sh start|stop|restart|status [listen|serve]
#
# Settings come from the environment (ORDERD_REDIS_URL, ORDERD_DB, ...) or
# from the file named by ORDERD_ENV_FILE (default /etc/orderd/orderd.env).
# ORDERD_BIN (default: orderd on PATH), ORDERD_RUN_DIR (default ./run) hold the
# binary and the pid and log files. `start` waits (ORDERD_START_WAIT seconds,
# default 30) until the program's /healthz answers 200 (on ORDERD_METRICS_ADDR
# for listen, ORDERD_ADDR for serve) or it exits, and says which.
set -euo pipefail

action=${1:-}
what=${2:-listen}
case "$what" in listen | serve) ;; *) echo "usage: $0 start|stop|restart|status [listen|serve]" >&2; exit 2 ;; esac
bin=${ORDERD_BIN:-$(command -v orderd || true)}
run_dir=${ORDERD_RUN_DIR:-./run}
pid_file="$run_dir/orderd-$what.pid"
log_file="$run_dir/orderd-$what.log"
env_file=${ORDERD_ENV_FILE:-/etc/orderd/orderd.env}

running() { [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }

start() {
	if running; then echo "orderd $what already running (pid $(cat "$pid_file"))"; return 0; fi
	[ -n "$bin" ] && [ -x "$bin" ] || { echo "orderd binary not found: set ORDERD_BIN" >&2; exit 2; }
	mkdir -p "$run_dir"
	if [ -f "$env_file" ]; then set -a; . "$env_file"; set +a; fi
	export ORDERD_LOG_FORMAT=${ORDERD_LOG_FORMAT:-json}
	nohup "$bin" "$what" >>"$log_file" 2>&1 </dev/null &
	echo $! >"$pid_file"
	local addr pid
	pid=$(cat "$pid_file")
	if [ "$what" = listen ]; then addr=${ORDERD_METRICS_ADDR-127.0.0.1:9464}; else addr=${ORDERD_ADDR:-127.0.0.1:8080}; fi
	for _ in $(seq $((${ORDERD_START_WAIT:-30} * 10))); do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid" 2>/dev/null && code=0 || code=$?
			echo "orderd $what failed to start (exit $code); the end of $log_file:" >&2
			tail -n 20 "$log_file" >&2
			rm -f "$pid_file"
			exit 1
		fi
		if [ -z "$addr" ] || healthy "$addr"; then
			# Without a health address, a program still running after 3 s is taken as started.
			if [ -n "$addr" ] || [ "$SECONDS" -ge 3 ]; then
				echo "orderd $what started and healthy (pid $pid, log $log_file)"
				return 0
			fi
		fi
		sleep 0.1
	done
	echo "orderd $what is running (pid $pid) but not healthy after ${ORDERD_START_WAIT:-30} s; see $log_file and http://$addr/healthz" >&2
	exit 1
}

# healthy HOST:PORT: /healthz answers 200 (bash's /dev/tcp: no curl needed).
healthy() {
	local host=${1%:*} port=${1##*:} status
	{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1 # braces: a bare exec 2>… would stay in force
	printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
	read -r -t 2 _ status _ <&3 || status=""
	exec 3<&- 3>&-
	[ "$status" = 200 ]
}

stop() {
	if ! running; then echo "orderd $what not running"; rm -f "$pid_file"; return 0; fi
	local pid
	pid=$(cat "$pid_file")
	kill -TERM "$pid" # finishes in-flight work, then exits 0
	for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$pid" 2>/dev/null; then
		echo "orderd $what did not stop in 30 s; killing it" >&2
		kill -KILL "$pid"
	fi
	rm -f "$pid_file"
	echo "orderd $what stopped"
}

case "$action" in
start) start ;;
stop) stop ;;
restart) stop; start ;;
status)
	if running; then echo "orderd $what running (pid $(cat "$pid_file"))"; else echo "orderd $what not running"; exit 3; fi ;;
*) echo "usage: $0 start|stop|restart|status [listen|serve]" >&2; exit 2 ;;
esac
