#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (as root), then runs it all.
# This is the README's test command; .ci/run calls it unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "the test suite needs root (mounts, chroot, namespaces): run it as root" >&2
  exit 1
fi

# Debian packages: busybox-static builds the jail rootfs; zstd, gzip and tar are the peers in
# the unpack benchmark and build test archives; iproute2 makes network namespaces;
# util-linux gives mount/unshare/flock; procps gives ps for the agent tests; file checks the static
# link; debootstrap makes the Debian rootfs of tests/distro.rs and the image benchmark;
# libarchive-tools (bsdtar) and python3 (tarfile) are tar writers in the conformance test;
# gcc and libc6-dev build the static programs of the jail's seccomp and TIOCSTI tests;
# python3-pip installs awscli; systemd (systemd-analyze), groff-base and man-db check the
# service unit and the man page; prometheus (with promtool) scrapes the agents in tests/metrics.rs;
# curl is the quickstart's client (tests/quickstart.rs); openssl makes a private CA and python3
# serves https with it (tests/https_digest.rs).
pkgs=(busybox-static zstd gzip tar iproute2 util-linux procps file ca-certificates debootstrap
  libarchive-tools python3 python3-pip gcc libc6-dev systemd groff-base man-db prometheus curl
  openssl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # No package starts a service here (prometheus would): tests start their own processes.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if trap -p EXIT | grep -q policy-rc.d; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

# Garage, the S3-compatible store tests/fetch.rs runs privately (built once per machine, ~10 min),
# and awscli from PyPI for the S3 peer benchmark.
export PATH="$HOME/.cargo/bin:$PATH"
command -v garage >/dev/null || cargo install garage --locked
command -v aws >/dev/null || python3 -m pip install --quiet --break-system-packages awscli

# The export tests talk to the Docker engine; start it when it is installed but not running.
if command -v docker >/dev/null && ! docker info >/dev/null 2>&1; then
  echo "starting the Docker engine"
  (service docker start || (nohup dockerd >/tmp/dockerd.log 2>&1 &)) >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

# A minimal Debian bookworm (debootstrap), built once per machine and cached for tests/distro.rs.
bash .ci/debian-rootfs.sh >/dev/null
# The previous release's binary (once per machine) for the mixed cluster of tests/upgrade.rs.
bash .ci/previous-release.sh >/dev/null

cargo build --all-targets --locked
# The one static binary that ships to every host; tests/image.rs runs it in an empty image.
bash .ci/static-build.sh >/dev/null
# The fuzz targets (a workspace of their own, run by hand with cargo-fuzz on nightly) must
# still compile against the library: a plain check needs neither nightly nor a sanitizer.
cargo check --manifest-path fuzz/Cargo.toml --bins --locked
# Examples are built above and benchmarked by hand; they hold no tests.
log=$(mktemp)
# Engine tests that return early (DROOT_FLEET_TEST_NO_DOCKER=1) list themselves here.
export DROOT_FLEET_TEST_NOT_RUN_LOG
DROOT_FLEET_TEST_NOT_RUN_LOG=$(mktemp)
trap 'rm -f "$log" "$DROOT_FLEET_TEST_NOT_RUN_LOG"' EXIT
set +e
# --no-fail-fast: a failing test binary must not hide the results of the ones after it.
cargo test --lib --bins --tests --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
cat "$DROOT_FLEET_TEST_NOT_RUN_LOG"
# One closing line for the whole suite, summed over every test binary; a test that printed
# NOT RUN counts as skipped, not passed.
skipped=$(grep -c "NOT RUN" "$DROOT_FLEET_TEST_NOT_RUN_LOG" || true)
awk -v s="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "suite: %d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
exit "$status"
