#!/usr/bin/env bash
# buf breaking: on a branch, against main; on main, against the previous commit, so a commit
# that breaks a caller's stub fails the suite before it lands. Usage: buf-breaking.sh BUF
set -euo pipefail
buf=$1
root=$(git rev-parse --show-toplevel)
cd "$root"
branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo main)
if [ "$branch" != main ] && git rev-parse --verify -q main >/dev/null; then
  against=main
else
  against=HEAD~1
fi
if ! git rev-parse --verify -q "$against" >/dev/null || [ -z "$(git ls-tree -r --name-only "$against" -- protos | grep "\.proto$" || true)" ]; then
  echo "buf breaking: $against has no protos yet; nothing to compare"
  exit 0
fi
"$buf" breaking --against ".git#ref=$against"
echo "buf breaking: no breaking change against $against"
