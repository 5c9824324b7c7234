#!/usr/bin/env bash
# A local Jaeger (v2, all-in-one: OTLP in, in-memory store, query API and UI) on loopback:
# install | start | stop | status. Built from the Go module proxy into .local/jaeger (git-ignored).
#   OTLP/gRPC 127.0.0.1:4317, OTLP/HTTP 127.0.0.1:4318, query and UI http://127.0.0.1:16686
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/.local/jaeger"
version=${JAEGER_VERSION:-v1.76.0}
bin="$dir/bin/jaeger-$version"
pidfile="$dir/jaeger.pid"
ui_port=16686
go=$(command -v go || echo /usr/local/go/bin/go)

ours() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "^$bin "
}
running() { ours "$(cat "$pidfile" 2>/dev/null)"; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The module's go.mod has a replace directive, so `go install pkg@version` refuses it; a small
# module of our own that requires it as a tool builds it (its replace does not apply to us).
install() {
  [ -x "$bin" ] && return
  [ -x "$go" ] || { echo "Go is needed to build Jaeger (apt-get install golang-go, or /usr/local/go)" >&2; exit 1; }
  mkdir -p "$dir/build" "$dir/bin"
  cd "$dir/build"
  [ -f go.mod ] || "$go" mod init mosaic.local/jaeger >/dev/null 2>&1
  echo "building Jaeger $version from the Go module proxy (one core; a few minutes the first time)" >&2
  "$go" get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$version"
  # -p 1: the machine has two cores and other work on them.
  nice -n 10 "$go" build -p "${JAEGER_BUILD_JOBS:-1}" -trimpath -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger
  mv "$bin.tmp" "$bin"
}

start() {
  if running; then echo "jaeger running pid=$(cat "$pidfile") ui=http://127.0.0.1:$ui_port"; return; fi
  install
  for port in 4317 4318 $ui_port; do
    if answers "$port"; then echo "port $port is taken by another process" >&2; exit 1; fi
  done
  # jaeger.yaml: OTLP receivers, memory storage, query + UI, all on loopback. The UI page is
  # Jaeger's placeholder: v1.76.0 embeds cmd/query/app/ui/actual/* (no build tag) and serves the
  # UI only if actual/index.html.gz is there, which `make build-ui` builds from the jaeger-ui git
  # submodule; the module proxy's zip has neither, and no registry reached here ships the built
  # UI. The query API (/api/traces, /api/v3/traces) answers all the same.
  nohup setsid "$bin" --config "$root/deploy/local/jaeger.yaml" >"$dir/jaeger.log" 2>&1 &
  echo $! >"$pidfile"
  # Up to a minute: a loaded machine reads the 100 MB binary slowly the first time.
  for _ in $(seq 300); do
    if answers 4317 && answers $ui_port; then
      echo "jaeger ready pid=$(cat "$pidfile") otlp=127.0.0.1:4317 ui=http://127.0.0.1:$ui_port"; return
    fi
    running || break
    sleep 0.2
  done
  echo "jaeger did not start; see $dir/jaeger.log" >&2
  exit 1
}

stop() {
  if ! running; then rm -f "$pidfile"; echo "jaeger not running"; return; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do ours "$pid" || break; sleep 0.1; done
  if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  echo "jaeger stopped"
}

status() {
  if running && answers $ui_port; then echo "jaeger running pid=$(cat "$pidfile") ui=http://127.0.0.1:$ui_port"; else echo "jaeger not running"; return 1; fi
}

case "${1:-}" in
  install) install ;; start) start ;; stop) stop ;; status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
