#!/usr/bin/env bash
# droot-fleet quickstart for a fresh Debian machine, as root: installs what it needs, builds,
# then shows the single-host toolchain end to end:
#   export (Docker engine, or a `docker save` archive) -> deploy (atomic releases) -> run
#   (chroot jail) -> deploy v2 -> rollback.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "run as root: the jail needs mounts and chroot" >&2; exit 1; }
need=()
for p in busybox-static build-essential pkg-config; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "install Rust first (rustup or apt-get install cargo)" >&2; exit 1; }

cargo build --release --locked
bin=$PWD/target/release/droot-fleet
work=$(mktemp -d /tmp/droot-fleet-demo.XXXXXX)
root=/var/containers/demo

# 1. A tiny "application image": busybox plus a script, with an environment.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/app"
cp /bin/busybox "$work/rootfs/bin/"
for a in sh echo cat id ls sleep env hostname; do ln -sf busybox "$work/rootfs/bin/$a"; done
printf '#!/bin/sh\necho "hello from $APP_NAME $APP_VERSION in the jail: uid=$(id -u) pid1=$(cat /proc/1/comm)"\n' >"$work/rootfs/app/hello"
chmod +x "$work/rootfs/app/hello"

build() { # build VERSION OUT: export an image of the rootfs carrying APP_VERSION
  local v=$1 out=$2
  if docker info >/dev/null 2>&1; then
    tar -C "$work/rootfs" -cf - . | docker import \
      --change "ENV PATH=/bin APP_NAME=demo APP_VERSION=$v" - "droot-fleet-demo:$v" >/dev/null
    echo "+ droot-fleet export droot-fleet-demo:$v -o $out --gzip"
    "$bin" export "droot-fleet-demo:$v" -o "$out" --gzip
    docker save "droot-fleet-demo:$v" -o "$work/saved-$v.tar"
    echo "+ droot-fleet export --from-archive saved-$v.tar   (same result, no engine needed)"
    "$bin" export --from-archive "$work/saved-$v.tar" -o "$work/from-archive-$v.tar"
    docker rmi "droot-fleet-demo:$v" >/dev/null
  else
    echo "(no Docker engine: packing the prepared rootfs directly)"
    printf 'PATH=/bin\nAPP_NAME=demo\nAPP_VERSION=%s\n' "$v" >"$work/rootfs/.drootenv"
    tar -C "$work/rootfs" -czf "$out" .
  fi
}

build v1 "$work/v1.tar.gz"
build v2 "$work/v2.tar.gz"

echo "+ droot-fleet deploy --root $root --version v1 < v1.tar.gz"
"$bin" deploy --root "$root" --version v1 <"$work/v1.tar.gz"
echo "+ droot-fleet run --root $root/current --cp --pid-ns -u nobody -- /app/hello"
"$bin" run --root "$root/current" --cp --pid-ns -u nobody -- /app/hello
echo "+ droot-fleet deploy --root $root --version v2 v2.tar.gz"
"$bin" deploy --root "$root" --version v2 "$work/v2.tar.gz"
"$bin" run --root "$root/current" --pid-ns -- /app/hello
echo "+ droot-fleet deploy --root $root --rollback"
"$bin" deploy --root "$root" --rollback
"$bin" deploy --root "$root" --list
"$bin" run --root "$root/current" --pid-ns -- /app/hello
rm -rf "$work"
echo "done: releases live under $root; remove them with: $bin rm --root $root"
