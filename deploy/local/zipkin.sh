#!/usr/bin/env bash
# A local Zipkin server (its UI, Lens, included; in-memory store) on loopback, for the trace UI
# Jaeger's module-proxy build cannot serve: install | start | stop | status.
# The exec jar comes from Maven Central into .local/zipkin (git-ignored); it runs on Java 17.
#   spans in http://127.0.0.1:9411/api/v2/spans, API /api/v2/traces, UI http://127.0.0.1:9411/zipkin/
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/.local/zipkin"
version=${ZIPKIN_VERSION:-3.6.1}
jar="$dir/lib/zipkin-server-$version-exec.jar"
pidfile="$dir/zipkin.pid"
port=9411

ours() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q " -jar $jar "
}
running() { ours "$(cat "$pidfile" 2>/dev/null)"; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# the Java 17 prereqs.sh checks for (it installs it, and Maven, when absent)
find_java() {
  local j
  for j in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} /usr/lib/jvm/java-17-openjdk-amd64/bin/java "$(command -v java || true)"; do
    [ -n "$j" ] && [ -x "$j" ] && "$j" -version 2>&1 | head -1 | grep -Eq '"(17|11)[."]' && { echo "$j"; return; }
  done
  echo "no Java 17 found; set JAVA_HOME to a Java 17 JDK" >&2; exit 1
}

install() {
  "$root/deploy/local/prereqs.sh" java >&2
  [ -f "$jar" ] && return
  rm -rf "$dir/lib.partial"; mkdir -p "$dir"
  echo "downloading zipkin-server $version (exec jar, about 135 MB) from Maven Central" >&2
  mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
    "-Dartifact=io.zipkin:zipkin-server:$version:jar:exec" -DoutputDirectory="$dir/lib.partial" \
    >"$dir/install.log" 2>&1 || { tail -20 "$dir/install.log" >&2; echo "mvn failed, see $dir/install.log" >&2; exit 1; }
  mkdir -p "$dir/lib"; mv "$dir/lib.partial/$(basename "$jar")" "$jar"; rm -rf "$dir/lib.partial"
}

start() {
  if running; then echo "zipkin running pid=$(cat "$pidfile") ui=http://127.0.0.1:$port/zipkin/"; return; fi
  install
  local java; java=$(find_java)
  if answers $port; then echo "port $port is taken by another process" >&2; exit 1; fi
  # Spring Boot replaces a list property whole, so the one port is given in full, bound to
  # loopback; a small heap: the in-memory store keeps few traces locally.
  nohup setsid "$java" -Xms64m -Xmx256m -XX:+UseSerialGC -jar "$jar" \
    --armeria.ports[0].port=$port --armeria.ports[0].ip=127.0.0.1 --armeria.ports[0].protocols[0]=http \
    --zipkin.storage.type=mem >"$dir/zipkin.log" 2>&1 &
  echo $! >"$pidfile"
  # Up to a minute: the JVM starts slowly on a loaded machine.
  for _ in $(seq 300); do
    if answers $port; then echo "zipkin ready pid=$(cat "$pidfile") ui=http://127.0.0.1:$port/zipkin/"; return; fi
    running || break
    sleep 0.2
  done
  echo "zipkin did not start; see $dir/zipkin.log" >&2
  exit 1
}

stop() {
  if ! running; then rm -f "$pidfile"; echo "zipkin not running"; return; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do ours "$pid" || break; sleep 0.1; done
  if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  echo "zipkin stopped"
}

status() {
  if running && answers $port; then echo "zipkin running pid=$(cat "$pidfile") ui=http://127.0.0.1:$port/zipkin/"; else echo "zipkin not running"; return 1; fi
}

case "${1:-}" in
  install) install ;; start) start ;; stop) stop ;; status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
