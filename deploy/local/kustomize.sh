#!/usr/bin/env bash
# Prints a command that renders a kustomization, installing one when the machine has none:
# kustomize on the PATH, else `kubectl kustomize` (kubectl 1.27+ embeds kustomize v5), else
# kustomize v5 built from the Go module proxy into .local/kustomize (git-ignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
version=${KUSTOMIZE_VERSION:-v5.5.0}
bin="$root/.local/kustomize/kustomize-$version"
go=$(command -v go || echo /usr/local/go/bin/go)

if command -v kustomize >/dev/null; then echo "kustomize build"; exit; fi
# The Debian kubernetes-client (1.20) embeds a kustomize without components: not that one.
if command -v kubectl >/dev/null && kubectl kustomize --help 2>/dev/null | grep -q -- "--enable-helm"; then
  echo "kubectl kustomize"; exit
fi
if [ ! -x "$bin" ]; then
  [ -x "$go" ] || { echo "no kustomize, no kubectl 1.27+ and no Go to build kustomize: apt-get install golang-go" >&2; exit 1; }
  mkdir -p "$root/.local/kustomize/gobin"
  echo "building kustomize $version from the Go module proxy" >&2
  GOBIN="$root/.local/kustomize/gobin" nice "$go" install "sigs.k8s.io/kustomize/kustomize/v5@$version" >&2
  mv "$root/.local/kustomize/gobin/kustomize" "$bin"
fi
echo "$bin build"
