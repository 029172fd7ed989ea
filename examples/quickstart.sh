#!/usr/bin/env bash
# droot-fleet quickstart for a fresh Debian machine, as root: installs what it needs, builds,
# then runs the fleet deploy pipeline on loopback:
#   a file:// artifact store with a busybox httpd app `demo`: v1, v2 and a broken v3, each
#   published with its sha256 (publish) -> three agents (127.80.1.1-3, own data dirs, a fresh
#   gossip keyring, a fresh trusted signing key) -> event deploy demo v1 --wait, pinned to the
#   published digest -> v2 one node at a time -> v3 fails its health check and rolls back by
#   itself -> query status -> rollback -> agents stop; then the same artifact on one host with
#   no agent (deploy --root --sha256, run). Cleans up after itself.
# It can be run again at will, also after a run that was killed.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "run as root: the jails need mounts and chroot" >&2; exit 1; }
need=()
for p in busybox-static build-essential pkg-config curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "install Rust first (rustup or apt-get install cargo)" >&2; exit 1; }

cargo build --release --locked
bin=$PWD/target/release/droot-fleet
net=127.80.1                          # agents and their apps on 127.80.1.1-3
apps=/var/containers/quickstart       # each node's release store: $apps/node-N
work=$(mktemp -d /tmp/droot-fleet-quickstart.XXXXXX)
pids=()

say() { printf '\n== %s ==\n' "$*"; }
x() { echo "+ droot-fleet $*"; "$bin" "$@"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for i in 1 2 3; do
    [ -e "$apps/node-$i" ] && "$bin" rm --root "$apps/node-$i" >/dev/null
  done
  rmdir "$apps" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# A previous run that was killed: its agents and jails (named by their paths), its roots.
pkill -KILL -f -- "/tmp/droot-fleet-quickstart\.|$apps/" 2>/dev/null || true
for d in /tmp/droot-fleet-quickstart.*; do [ "$d" = "$work" ] || rm -rf "$d"; done
for i in 1 2 3; do
  [ -e "$apps/node-$i" ] && "$bin" rm --root "$apps/node-$i" >/dev/null
done

# 1. The artifact store: demo/VERSION.tar.gz, a busybox rootfs whose httpd serves /www.
#    v3 is broken: no /www/health, so its health check gets 404. `publish` writes each
#    artifact with its sha256 beside it (VERSION.tar.gz.sha256), which `event deploy` pins.
say "artifacts: file://$work/store/demo/{v1,v2,v3}.tar.gz"
mkdir -p "$work/store/demo"
store="file://$work/store/{app}/{version}.tar.gz"   # the agents' artifact template too
build() { # build VERSION HEALTHY
  local v=$1 src=$work/rootfs-$1
  mkdir -p "$src/bin" "$src/etc" "$src/tmp" "$src/www"
  cp /bin/busybox "$src/bin/"
  for a in sh httpd cat ls; do ln -sf busybox "$src/bin/$a"; done
  printf 'root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n' >"$src/etc/passwd"
  printf 'root:x:0:\napp:x:1000:\n' >"$src/etc/group"
  echo "demo $v" >"$src/www/index.html"
  [ "$2" = healthy ] && echo ok >"$src/www/health"
  if docker info >/dev/null 2>&1; then # an image in the engine
    tar -C "$src" -cf - . | docker import --change "ENV PATH=/bin APP_VERSION=$v" - \
      "droot-fleet-quickstart:$v" >/dev/null
    x publish "droot-fleet-quickstart:$v" "$store" --app demo --version "$v" --gzip
    docker rmi "droot-fleet-quickstart:$v" >/dev/null
  else # no Docker engine: the rootfs directory itself, its environment in /.drootenv
    printf 'PATH=/bin\nAPP_VERSION=%s\n' "$v" >"$src/.drootenv"
    x publish "$src" "$store" --app demo --version "$v" --gzip
  fi
}
build v1 healthy
build v2 healthy
build v3 broken

# 2. Keys: one gossip keyring for the cluster, one deploy signing key for the operator.
#    Agents act only on deploy events signed by a key in trusted_signing_keys.
say "keys"
echo "+ droot-fleet keygen -o keyring.json"
"$bin" keygen -o "$work/keyring.json" 2>/dev/null
echo "+ droot-fleet keygen --signing -o deploy.key"
pub=$("$bin" keygen --signing -o "$work/deploy.key" 2>/dev/null)
echo "public key: $pub"
export DROOT_FLEET_SIGNING_KEY=$work/deploy.key
#    Node identities: an enrollment key for the fleet, one identity (node key and
#    certificate) per host, so a host speaks only for itself.
echo "+ droot-fleet enroll init -o enrollment.key"
enroll_pub=$("$bin" enroll init -o "$work/enrollment.key" 2>/dev/null)
for i in 1 2 3; do
  echo "+ droot-fleet enroll node node-$i --enrollment-key enrollment.key -o node-$i.identity"
  "$bin" enroll node "node-$i" --enrollment-key "$work/enrollment.key" \
    -o "$work/node-$i.identity" >/dev/null 2>&1
done

# 3. Three agents. Each config declares the app: where artifacts come from, its release
#    store, the jail's command and the health check that decides between ok and rollback.
say "three agents on $net.1-3"
for i in 1 2 3; do
  cat >"$work/agent-$i.toml" <<TOML
keyring = "$work/keyring.json"
trusted_signing_keys = ["$pub"]
enrollment_keys = ["$enroll_pub"]
node_identity = "$work/node-$i.identity"
push_pull_interval = "5s"

[deploy]
file_roots = ["$work/store"]   # file:// artifacts only from here

[apps.demo]
artifact = "$store"
root = "$apps/node-$i"
keep = 3
command = ["httpd", "-f", "-p", "$net.$i:8080", "-h", "/www"]
user = "app"
userns = true
stop_timeout = "5s"
[apps.demo.health]
http = "http://$net.$i:8080/health"
deadline = "5s"
interval = "200ms"
TOML
  "$bin" agent --config "$work/agent-$i.toml" --node "node-$i" --bind "$net.$i:7946" \
    --join "$net.1:7946" --data-dir "$work/d$i" --tag role=demo --log info \
    2>"$work/agent-$i.log" &
  pids+=($!)
done
export DROOT_FLEET_RPC=unix:$work/d1/agent.sock
# `event deploy --config`: the app's artifact template gives the URL, and the CLI pins the
# event to the digest `publish` stored beside it (no digest copied by hand).
cfg=$work/agent-1.toml
for _ in $(seq 1 100); do # until all three are alive and report the app (no deploy yet)
  [ "$("$bin" query status demo --format json 2>/dev/null | grep -o '"node"' | wc -l)" = 3 ] && break
  sleep 0.2
done
x members

http_all() { # http_all VERSION: what each node's app answers, which must be VERSION
  local i got
  for i in 1 2 3; do
    got=$(curl -sS -m 2 "http://$net.$i:8080/" 2>&1 || true)
    printf 'node-%s  http://%s.%s:8080/  ->  %s\n' "$i" "$net" "$i" "$got"
    [ "$got" = "demo $1" ] || { echo "node-$i should serve demo $1" >&2; exit 1; }
  done
}

say "deploy v1 to every node"
x event deploy demo v1 --config "$cfg" --wait --timeout 2m
http_all v1

say "deploy v2, one node at a time"
x event deploy demo v2 --config "$cfg" --wait --max-parallel 1 --timeout 2m
http_all v2

say "deploy v3 (broken: its health check fails)"
set +e
x event deploy demo v3 --config "$cfg" --wait --timeout 2m
rc=$?
set -e
echo "(exit code $rc: every node rolled back to v2 by itself)"
[ "$rc" != 0 ] || { echo "a broken release must not exit 0" >&2; exit 1; }
x query status demo
http_all v2

say "rollback to the previous release"
x rollback demo --wait --timeout 2m
x query status demo
http_all v1

say "stop the agents (each stops its jail)"
for i in 1 2 3; do "$bin" leave --rpc "unix:$work/d$i/agent.sock" >/dev/null; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
for i in 1 2 3; do
  ! curl -s -m 2 -o /dev/null "http://$net.$i:8080/" || { echo "node-$i still serves" >&2; exit 1; }
done
echo "no node serves any more"

# 4. The same artifact on one host, no agent: the release store and the jail by hand.
say "single host: deploy, run, list"
sha=$(cut -d' ' -f1 "$work/store/demo/v2.tar.gz.sha256")   # sha256sum format
x deploy --root "$work/single" --userns --version v2 --sha256 "$sha" "file://$work/store/demo/v2.tar.gz"
x run --root "$work/single/current" --userns -u app -- cat /www/index.html
x deploy --root "$work/single" --list
"$bin" rm --root "$work/single"
echo "done; removing $apps/node-1..3 and $work"
