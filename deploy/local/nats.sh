#!/usr/bin/env bash
# The local nats-server with JetStream on loopback: install | start | stop | status.
# Installs the Debian package when absent; keeps its store under .local/nats (git-ignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/.local/nats"
port=${NATS_PORT:-4222}
pidfile="$dir/nats.pid"

# The pid in the pid file is our nats-server (a pid the kernel reused for another program is not).
# (A zombie has an empty command line, so one that nobody reaped counts as gone.)
ours() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "nats-server.*-sd $dir/store"
}
running() { ours "$(cat "$pidfile" 2>/dev/null)"; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

install() { "$root/deploy/local/prereqs.sh" nats; }

start() {
  if running; then echo "nats-server running pid=$(cat "$pidfile") port=$port"; return; fi
  install
  if answers; then echo "port $port is taken by another process (set NATS_PORT)" >&2; exit 1; fi
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

# TERM (JetStream flushes its store), then KILL after NATS_STOP_SECONDS; the pid file goes only
# once the process is gone, so a server still running is never left without one.
stop() {
  if ! running; then rm -f "$pidfile"; echo "nats-server not running"; return; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${NATS_STOP_SECONDS:-10}))
  while ours "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if ours "$pid"; then
    echo "nats-server pid=$pid still running after ${NATS_STOP_SECONDS:-10} s; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do ours "$pid" || break; sleep 0.1; done
  fi
  if ours "$pid"; then echo "nats-server pid=$pid would not stop" >&2; exit 1; fi
  rm -f "$pidfile"
  echo "nats-server stopped"
}

status() {
  if running && answers; then echo "nats-server running pid=$(cat "$pidfile") port=$port"; else echo "nats-server not running"; return 1; fi
}

case "${1:-}" in
  install) install ;; start) start ;; stop) stop ;; status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
