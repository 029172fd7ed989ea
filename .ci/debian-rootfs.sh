#!/usr/bin/env bash
# Builds, once per machine, the minimal Debian bookworm rootfs the distribution test and the
# image benchmark use: `debootstrap --variant=minbase`, stored as a tar (numeric owners, device
# nodes, set-id bits and xattrs kept) and printed on stdout. Later calls only print the path.
# Concurrent callers wait on a lock; a failed build leaves no cache file behind.
# Needs root and debootstrap (.ci/test.sh installs it). DROOT_FLEET_TEST_CACHE moves the cache.
set -euo pipefail

cache_dir=${DROOT_FLEET_TEST_CACHE:-/var/cache/droot-fleet-tests}
out=$cache_dir/debian-bookworm-minbase.tar

if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "building the Debian test rootfs needs root (debootstrap): run as root" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "debootstrap is missing: apt-get install debootstrap (.ci/test.sh installs it)" >&2
  exit 1
fi

# The first Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org.
mirror=$(
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
    2>/dev/null |
    awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }
         /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }'
) || true
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$cache_dir"
exec 9>"$cache_dir/.debian-bookworm.lock"
flock 9
if [ -s "$out" ]; then # built by whoever held the lock before us
  echo "$out"
  exit 0
fi

work=$(mktemp -d "$cache_dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "debootstrap --variant=minbase bookworm from $mirror (once per machine)" >&2
if ! debootstrap --variant=minbase bookworm "$work/root" "$mirror" >"$work/log" 2>&1; then
  tail -n 30 "$work/log" >&2
  echo "debootstrap failed (log above); is $mirror reachable?" >&2
  exit 1
fi
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* \
  "$work/root/debootstrap"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$work/root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
echo "$out"
