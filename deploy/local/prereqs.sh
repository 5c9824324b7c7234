#!/usr/bin/env bash
# The machine-level tools that `make run` and `make test` need, each installed when absent or
# refused with one message that says how to get it: uv | nats | node | java | prometheus.
#   uv    on PATH, or installed into a private venv under .local/uv (never into a system Python)
#   nats  nats-server on PATH, or the Debian package
#   node  Node.js and npm, for the pinned buf CLI in tools/ (the Debian packages when absent)
#   java  a Java 17 (or 11) and Maven, for the local Cassandra node (the Debian packages when absent)
#   prometheus  Prometheus and promtool (make observe; the tests check its written configuration)
# Prints the path of uv for `uv`; nothing on success otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
UV_VERSION=0.13.9

die() { echo "prereqs: $*" >&2; exit 1; }

# apt_install WHAT PACKAGE...: WHAT names the need in messages; the rest are Debian packages.
apt_install() {
  local what=$1; shift
  command -v apt-get >/dev/null || die "$what is missing and this machine has no apt-get; install $* by hand"
  [ "$(id -u)" = 0 ] || die "$what is missing; install it with: sudo apt-get install -y $*"
  echo "prereqs: installing $* (Debian packages) for $what" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
    || die "apt-get install $* failed; run it by hand to see why"
  true
}

uv_path() {
  if command -v uv >/dev/null; then command -v uv; return; fi
  local venv="$root/.local/uv"
  if [ ! -x "$venv/bin/uv" ]; then
    local python; python=$(command -v python3.11 || command -v python3) \
      || die "uv needs a Python 3.11 to install into; none on PATH"
    echo "prereqs: installing uv $UV_VERSION into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION" >&2 \
      || die "pip could not install uv==$UV_VERSION from PyPI"
  fi
  echo "$venv/bin/uv"
}

nats() {
  command -v nats-server >/dev/null && return
  apt_install nats-server nats-server
  command -v nats-server >/dev/null || die "nats-server still not on PATH after installing it"
}

node() {
  command -v npm >/dev/null && return
  apt_install "the buf CLI (npm)" nodejs npm
}

java() {
  local j ok=
  for j in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} /usr/lib/jvm/java-17-openjdk-amd64/bin/java "$(command -v java || true)"; do
    [ -n "$j" ] && [ -x "$j" ] && "$j" -version 2>&1 | head -1 | grep -Eq '"(17|11)[."]' && ok=1 && break
  done
  [ -n "$ok" ] || apt_install "Cassandra (Java 17)" openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install "Cassandra's jars (Maven)" maven
}

prometheus() {
  command -v promtool >/dev/null && [ -x /usr/bin/prometheus ] && return
  apt_install "Prometheus and promtool" prometheus
}

case "${1:-}" in
  uv) uv_path ;; nats) nats ;; node) node ;; java) java ;; prometheus) prometheus ;;
  *) echo "usage: $0 uv|nats|node|java|prometheus" >&2; exit 2 ;;
esac
