#!/usr/bin/env bash
# buf breaking: on a branch, against where it left main; on main (or at main's commit), against the previous
# commit, so a commit that breaks a caller's stub fails the suite before it lands.
# A clone without that base (shallow, or a detached checkout without main) fetches it; if it
# still has none, this fails under CI=true and warns loudly elsewhere. Usage: buf-breaking.sh BUF
set -euo pipefail
buf=$1
root=$(git rev-parse --show-toplevel)
cd "$root"

commit_of() { git rev-parse --verify -q "$1^{commit}" 2>/dev/null; }

main_ref=
for ref in main origin/main; do commit_of "$ref" >/dev/null && { main_ref=$ref; break; }; done
# On a branch, the point where it left main: what main gained since is not the branch's change.
if [ -n "$main_ref" ] && [ "$(commit_of "$main_ref")" != "$(commit_of HEAD)" ] \
   && base=$(git merge-base HEAD "$main_ref" 2>/dev/null) && [ "$base" != "$(commit_of HEAD)" ]; then
  against=$base
else
  against=HEAD~1
fi

if ! commit_of "$against" >/dev/null && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  echo "buf breaking: $against is not in this shallow clone; fetching one more commit"
  git fetch -q --deepen=1 2>/dev/null || true
fi
if ! commit_of "$against" >/dev/null; then
  reason="no base to compare the protos with: $against is not in this clone (shallow or detached; fetch main, or clone with history)"
  if [ "${CI:-}" = true ]; then echo "buf breaking: FAILED: $reason" >&2; exit 1; fi
  echo "buf breaking: NOT CHECKED: $reason" >&2
  exit 0
fi
if [ -z "$(git ls-tree -r --name-only "$against" -- protos | grep '\.proto$' || true)" ]; then
  echo "buf breaking: $against has no protos yet; nothing to compare"
  exit 0
fi
"$buf" breaking --against ".git#ref=$(commit_of "$against")"
echo "buf breaking: no breaking change against $against"
