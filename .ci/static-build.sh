#!/usr/bin/env bash
# Builds the one static binary that ships to every host (the README's command) and prints
# its path. glibc is linked in (crt-static, a static PIE that runs in an empty image), and
# the relative relocations the binary applies to itself at start are packed (RELR): 14 KB
# instead of a 1.2 MB table read on every start, about 2 MiB less resident per agent. A
# static binary carries its own loader, so RELR needs nothing from the host it runs on.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --target-dir target/static \
  "$@" >&2
bin=target/static/x86_64-unknown-linux-gnu/release/droot-fleet
# It must start: a C library too old to apply packed relocations would crash it here.
"$bin" --version >/dev/null || { echo "$bin does not start (glibc 2.36 or newer builds it)" >&2; exit 1; }
echo "$bin"
