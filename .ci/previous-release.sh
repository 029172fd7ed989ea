#!/usr/bin/env bash
# Builds, once per machine, the agent binary of the previous release (the last commit that
# landed before node identities) for the mixed-cluster upgrade test (tests/upgrade.rs), and
# prints its path. Later calls only print the path. Concurrent callers wait on a lock; a
# failed build leaves no binary behind. DROOT_FLEET_TEST_CACHE moves the cache.
# Needs this checkout's git history (a full clone) and cargo with crates.io.
set -euo pipefail

commit=1e6638497023f9648d09fd40f10d872b3baa51aa
cache_dir=${DROOT_FLEET_TEST_CACHE:-/var/cache/droot-fleet-tests}
out=$cache_dir/droot-fleet-${commit:0:12}

if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
top=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
if ! git -C "$top" cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "the previous release ($commit) is not in this clone's history; the upgrade test" \
    "needs a full clone (git clone without --depth)" >&2
  exit 1
fi
mkdir -p "$cache_dir"
exec 9>"$cache_dir/.previous-release.lock"
flock 9
if [ -x "$out" ]; then # built by whoever held the lock before us
  echo "$out"
  exit 0
fi
work=$(mktemp -d "$cache_dir/.prev.XXXXXX")
trap 'rm -rf "$work"' EXIT
git -C "$top" archive "$commit" | tar -x -C "$work"
echo "building the previous release ${commit:0:12} (once per machine)" >&2
if ! (cd "$work" && cargo build --locked --bin droot-fleet >"$work/log" 2>&1); then
  tail -n 30 "$work/log" >&2
  echo "building the previous release failed (log above)" >&2
  exit 1
fi
cp "$work/target/debug/droot-fleet" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
