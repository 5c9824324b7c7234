#!/usr/bin/env bash
# Run one real Apache Cassandra 5.0 node on loopback for local development and tests.
#
#   deploy/local/cassandra.sh install|start|stop|status|wait
#
# Jars come from Maven Central (deploy/local/cassandra/pom.xml); the node runs on Java 17 as
# a plain `java ... CassandraDaemon` (bin/cassandra refuses root, and we run as root in CI).
# Everything it writes lives under <repo>/.local/cassandra/.
#
# Environment: CASSANDRA_PORT (CQL, 9042), CASSANDRA_STORAGE_PORT (7000), CASSANDRA_HEAP (1g),
# CASSANDRA_JMX_PORT (unset = no JMX at all), JAVA_HOME (a Java 17, or 11), CASSANDRA_START_TIMEOUT (180).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CONF="$HERE/cassandra"
HOME_DIR="$REPO/.local/cassandra"
LIB="$HOME_DIR/lib"
DATA="$HOME_DIR/data"
LOGS="$HOME_DIR/logs"
TMP="$HOME_DIR/tmp"
PIDFILE="$HOME_DIR/cassandra.pid"
PORTFILE="$HOME_DIR/cassandra.port"   # CQL port of the current run, for status/wait/stop

RUN_PORT="$(cat "$PORTFILE" 2>/dev/null || echo 9042)"
PORT="${CASSANDRA_PORT:-$RUN_PORT}"
STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-7000}"
HEAP="${CASSANDRA_HEAP:-1g}"
TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"
# the version is pinned in the pom only
VERSION="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$CONF/pom.xml")"

log() { echo "cassandra.sh: $*" >&2; }
die() { log "$*"; exit 1; }

find_java() {
  local j
  for j in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} /usr/lib/jvm/java-17-openjdk-amd64/bin/java \
           "$(command -v java || true)"; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    # Cassandra 5.0 runs on Java 11 or 17 only (not on the Temurin 25 also installed here)
    if "$j" -version 2>&1 | head -1 | grep -Eq '"(17|11)[."]'; then echo "$j"; return; fi
    log "skipping $j: not Java 17 (or 11)"
  done
  die "no Java 17 found; set JAVA_HOME to a Java 17 JDK"
}

installed() { [ -f "$LIB/cassandra-all-$VERSION.jar" ]; }

cmd_install() {
  if installed; then log "cassandra-all $VERSION already in $LIB"; return; fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  local t0=$SECONDS stage="$HOME_DIR/lib.partial"
  rm -rf "$stage"; mkdir -p "$stage"
  log "downloading cassandra-all $VERSION and its runtime dependencies ..."
  # the parent POM may log an ERROR about jmc5.path; it is harmless, so judge by the jars
  mvn -q -B -f "$CONF/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$stage" >"$HOME_DIR/install.log" 2>&1 || {
    tail -20 "$HOME_DIR/install.log" >&2; die "mvn failed (full output: $HOME_DIR/install.log)"; }
  local want
  for want in "cassandra-all-$VERSION" jamm- jna- logback-classic-; do
    compgen -G "$stage/$want*.jar" >/dev/null || die "$want jar missing after mvn, see $HOME_DIR/install.log"
  done
  rm -rf "$CONF/target" "$LIB"; mv "$stage" "$LIB"   # swap in whole, so a broken copy never counts
  log "installed $(ls "$LIB" | wc -l) jars in $((SECONDS - t0)) s"
}

read_pid() { [ -f "$PIDFILE" ] && cat "$PIDFILE" 2>/dev/null || true; }

# our node is alive: the pid in the pid file is a CassandraDaemon (not a reused pid)
alive() {
  local pid; pid="$(read_pid)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q CassandraDaemon
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

cmd_status() {
  if alive && port_open "$PORT"; then echo "running pid=$(read_pid) port=$PORT"; return 0; fi
  if alive; then echo "starting pid=$(read_pid) port=$PORT (CQL not answering yet)"; else echo "not running"; fi
  return 1
}

cmd_wait() {
  local t0=$SECONDS
  while (( SECONDS - t0 < TIMEOUT )); do
    alive || { tail -30 "$LOGS/stdout.log" >&2 2>/dev/null || true; rm -f "$PIDFILE"
               die "node is not running (logs: $LOGS)"; }
    # the CQL port opens only once the node logs "Starting listening for CQL clients"
    if port_open "$PORT"; then return 0; fi
    sleep 0.5
  done
  die "not ready after $TIMEOUT s (logs: $LOGS)"
}

cmd_start() {
  if alive; then                                   # idempotent: already running
    [ "$PORT" = "$RUN_PORT" ] || die "already running on port $RUN_PORT; stop it first"
    log "already running"; cmd_wait; cmd_status; return
  fi
  PORT="${CASSANDRA_PORT:-9042}"
  installed || cmd_install
  port_open "$PORT" && die "port $PORT is already taken by another process (set CASSANDRA_PORT)"
  local java; java="$(find_java)"
  mkdir -p "$DATA" "$LOGS" "$TMP" "$HOME_DIR/triggers"
  rm -f "$PIDFILE"; echo "$PORT" >"$PORTFILE"

  local -a opts=() jmx=()
  local line w
  while IFS= read -r line; do read -ra w <<<"$line"; opts+=("${w[@]}"); done \
    < <(grep '^-' "$CONF/jvm17.options")
  # JMX starts only when a port is given; with none set Cassandra runs without JMX
  [ -n "${CASSANDRA_JMX_PORT:-}" ] && jmx=(-Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT")
  local agent=("$LIB"/jamm-*.jar)   # optional java agent for exact memtable sizing
  [ -f "${agent[0]}" ] && opts+=("-javaagent:${agent[0]}")

  [ -f "$LOGS/stdout.log" ] && mv -f "$LOGS/stdout.log" "$LOGS/stdout.log.1"   # one run per file
  # Cassandra always calls mlockall(); as root that pins every mapped page (~1.5 GB RSS).
  # A test node need not pin memory: drop CAP_IPC_LOCK and cap RLIMIT_MEMLOCK so the call
  # fails with a warning instead.
  local nolock=()
  if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then nolock=(setpriv --bounding-set -ipc_lock); fi
  local t0=$SECONDS
  # setsid: own session, so the node outlives the calling shell; bash writes its own pid
  # and then execs (setpriv, which execs) java, so the pid file holds the java pid
  PIDF="$PIDFILE" setsid nohup bash -c 'ulimit -l 64; echo $$ >"$PIDF"; exec "$@"' cassandra \
    "${nolock[@]}" "$java" "${opts[@]}" "${jmx[@]}" \
    -Xms"$HEAP" -Xmx"$HEAP" \
    -XX:HeapDumpPath="$LOGS" \
    -Djava.io.tmpdir="$TMP" -Djna.tmpdir="$TMP" \
    -Dcassandra.config="file://$CONF/cassandra.yaml" \
    -Dcassandra.storagedir="$DATA" \
    -Dcassandra.logdir="$LOGS" \
    -Dcassandra.triggers_dir="$HOME_DIR/triggers" \
    -Dlogback.configurationFile="$CONF/logback.xml" \
    -Dcassandra.native_transport_port="$PORT" \
    -Dcassandra.storage_port="$STORAGE_PORT" \
    -Dcassandra-pidfile="$PIDFILE" \
    -cp "$CONF:$LIB/*" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >>"$LOGS/stdout.log" 2>&1 9>&- &
  for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
  cmd_wait
  echo "started in $((SECONDS - t0)) s"
  cmd_status
}

cmd_stop() {
  if ! alive; then rm -f "$PIDFILE"; log "not running"; return 0; fi
  local pid; pid="$(read_pid)"
  kill -TERM "$pid"   # Cassandra's shutdown hook drains and flushes
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "still alive after 60 s, sending SIGKILL"; kill -KILL "$pid"; fi
  rm -f "$PIDFILE"; log "stopped pid=$pid"
}

mkdir -p "$HOME_DIR"
# start/stop/install from parallel test workers: one at a time (fd 9 is closed for the node)
lock() { exec 9>"$HOME_DIR/.lock"; flock -w 300 9 || die "could not get $HOME_DIR/.lock"; }
case "${1:-}" in
  install) lock; cmd_install ;;
  start)   lock; cmd_start ;;
  stop)    lock; cmd_stop ;;
  status)  cmd_status ;;
  wait)    cmd_wait; cmd_status ;;
  *) echo "usage: $0 install|start|stop|status|wait" >&2; exit 2 ;;
esac
