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

if [ -e "$root" ]; then
  echo "+ droot-fleet rm --root $root   (a previous demo run)"
  "$bin" rm --root "$root"
fi
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

# 2. The fleet half, on loopback: three agents with a shared key; a gossip event makes every
#    "host" deploy the release, and a query asks them all what they run.
echo; echo "== three agents on 127.0.20.1-3, encrypted gossip =="
fleet=$work/fleet
mkdir -p "$fleet"
echo "{\"primary\": \"$("$bin" keygen)\"}" >"$fleet/keyring.json"
cat >"$fleet/agent.toml" <<TOML
keyring = "$fleet/keyring.json"
[[handler]]
event = "user:deploy"
command = ["sh", "-c", "read v; $bin deploy --root /var/containers/fleet-\$DROOT_FLEET_NODE --version \$v $work/\$v.tar.gz"]
timeout = "60s"
[[handler]]
event = "query:version"
command = ["sh", "-c", "readlink /var/containers/fleet-\$DROOT_FLEET_NODE/current"]
timeout = "5s"
TOML
pids=()
for i in 1 2 3; do
  rm -rf "/var/containers/fleet-web-$i"
  "$bin" agent --config "$fleet/agent.toml" --node "web-$i" --bind "127.0.20.$i:7946" \
    --join 127.0.20.1:7946 --data-dir "$fleet/d$i" --tag role=web 2>"$fleet/agent-$i.log" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
export DROOT_FLEET_RPC=unix:$fleet/d1/agent.sock
for _ in $(seq 1 50); do
  [ "$("$bin" members --status alive --format json 2>/dev/null | grep -o '"name"' | wc -l)" = 3 ] && break
  sleep 0.2
done
echo "+ droot-fleet members"
"$bin" members
for v in v1 v2; do
  echo "+ droot-fleet event deploy $v"
  "$bin" event deploy "$v"
  for _ in $(seq 1 50); do
    n=$(ls -l /var/containers/fleet-web-*/current 2>/dev/null | grep -c "releases/$v" || true)
    [ "$n" = 3 ] && break
    sleep 0.2
  done
  echo "+ droot-fleet query version --tag role=web"
  "$bin" query version --tag role=web
done
echo "+ droot-fleet leave (each agent)"
for i in 1 2 3; do "$bin" leave --rpc "unix:$fleet/d$i/agent.sock" >/dev/null; done
wait "${pids[@]}" 2>/dev/null || true
trap - EXIT
rm -rf "$work"
echo "done: releases live under $root and /var/containers/fleet-web-*; remove one with: $bin rm --root $root"
