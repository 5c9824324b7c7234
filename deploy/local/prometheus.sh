#!/usr/bin/env bash
# A local Prometheus (the Debian package) scraping the local mesh's services: install | start |
# stop | status | config (write it only). Its configuration and data live under .local/prometheus (git-ignored).
#   UI and API http://127.0.0.1:9090 (PROMETHEUS_PORT)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/.local/prometheus"
port=${PROMETHEUS_PORT:-9090}
pidfile="$dir/prometheus.pid"
bin=/usr/bin/prometheus
# The metrics ports `mosaic run` gives the services (mosaic.cli.mesh.METRICS_PORTS).
targets="ingestion:9461 identity:9462 profile:9463 segmentation:9464 consent:9465 delivery:9466"

ours() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "prometheus.*--storage.tsdb.path=$dir/data"
}
running() { ours "$(cat "$pidfile" 2>/dev/null)"; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

install() { "$(dirname "$0")/prereqs.sh" prometheus; }

# One job per service, named after it: dashboards select a service by `job`.
config() {
  mkdir -p "$dir"
  {
    echo "# Written by deploy/local/prometheus.sh at every start."
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "scrape_configs:"
    for target in $targets; do
      echo "  - job_name: ${target%%:*}"
      echo "    static_configs: [{targets: ['127.0.0.1:${target##*:}']}]"
    done
  } >"$dir/prometheus.yml"
}

start() {
  if running; then echo "prometheus running pid=$(cat "$pidfile") ui=http://127.0.0.1:$port"; return; fi
  install
  if answers; then echo "port $port is taken by another process (set PROMETHEUS_PORT)" >&2; exit 1; fi
  config
  nohup setsid "$bin" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --storage.tsdb.retention.time=2d --web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 100); do
    if answers; then echo "prometheus ready pid=$(cat "$pidfile") ui=http://127.0.0.1:$port"; return; fi
    running || break
    sleep 0.1
  done
  echo "prometheus did not start; see $dir/prometheus.log" >&2
  exit 1
}

stop() {
  if ! running; then rm -f "$pidfile"; echo "prometheus not running"; return; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do ours "$pid" || break; sleep 0.1; done
  if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  echo "prometheus stopped"
}

status() {
  if running && answers; then echo "prometheus running pid=$(cat "$pidfile") ui=http://127.0.0.1:$port"; else echo "prometheus not running"; return 1; fi
}

case "${1:-}" in
  install) install ;; start) start ;; stop) stop ;; status) status ;;
  config) config; echo "$dir/prometheus.yml" ;;
  *) echo "usage: $0 install|start|stop|status|config" >&2; exit 2 ;;
esac
