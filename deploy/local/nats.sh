#!/usr/bin/env bash
# The local nats-server with JetStream on loopback: start | stop | status.
# Installs the Debian package when absent; keeps its store under .local/nats (git-ignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/.local/nats"
port=${NATS_PORT:-4222}
pidfile="$dir/nats.pid"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

install() {
  command -v nats-server >/dev/null && return
  echo "installing nats-server (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
}

start() {
  if running; then echo "nats-server running pid=$(cat "$pidfile") port=$port"; return; fi
  install
  mkdir -p "$dir"
  # One core for the server, as a pod with a 1-CPU limit: uncapped, Go's collector takes every
  # core for ~100 ms a cycle and stalls the services beside it (see bench/ingest.py).
  GOMAXPROCS=${NATS_CORES:-1} nohup setsid nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/store" -m "${NATS_MONITOR_PORT:-8222}" \
    -l "$dir/nats.log" -P "$pidfile" >/dev/null 2>&1 &
  for _ in $(seq 100); do
    if answers; then echo "nats-server ready pid=$(cat "$pidfile") port=$port"; return; fi
    sleep 0.1
  done
  echo "nats-server did not start; see $dir/nats.log" >&2
  exit 1
}

stop() {
  running || { echo "nats-server not running"; return; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
  echo "nats-server stopped"
}

status() {
  if running && answers; then echo "nats-server running pid=$(cat "$pidfile") port=$port"; else echo "nats-server not running"; return 1; fi
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
