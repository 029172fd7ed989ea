#!/usr/bin/env bash
# droot-fleet quickstart for a fresh Debian machine, as root: installs what it needs, builds,
# then runs the fleet deploy pipeline on loopback:
#   a file:// artifact store with a busybox httpd app `demo`: v1, v2 and a broken v3, each
#   published with its sha256 (publish) -> three agents (127.80.1.1-3, own data dirs, a fresh
#   gossip keyring, a fresh trusted signing key) -> event deploy demo v1 --wait, pinned to the
#   published digest -> v2 one node at a time -> v3 fails its health check and rolls back by
#   itself -> query status -> rollback -> agents stop; then the same artifact on one host with
#   no agent (deploy --root --sha256, run). Cleans up after itself.
# --s3: the same demo with the artifacts in S3: a private single-node Garage on 127.80.2.1
#   (found on PATH or in ~/.cargo/bin), a fresh bucket and key, reached through the AWS_*
#   environment and the S3 endpoint setting; stopped and its data removed at the end.
# It can be run again at will, also after a run that was killed.
set -euo pipefail
cd "$(dirname "$0")/.."

s3=false
for a in "$@"; do
  case $a in
    --s3) s3=true ;;
    -h | --help) sed -n '2,/^# It can/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "unknown argument $a; usage: $0 [--s3]" >&2; exit 2 ;;
  esac
done
garage=
if $s3; then # Garage, an S3-compatible store: on PATH, or where `cargo install` puts it
  garage=$(command -v garage || true)
  [ -n "$garage" ] || [ ! -x "$HOME/.cargo/bin/garage" ] || garage=$HOME/.cargo/bin/garage
  [ -n "$garage" ] || {
    echo "--s3 needs Garage: install it with \`cargo install garage --locked\` (about 10 min)," \
      "then run this again" >&2
    exit 1
  }
fi

[ "$(id -u)" = 0 ] || { echo "run as root: the jails need mounts and chroot" >&2; exit 1; }
# DROOT_FLEET_BIN: a droot-fleet binary built already (the test suite runs this with its own).
bin=${DROOT_FLEET_BIN:-}
pkgs=(busybox-static curl)
[ -n "$bin" ] || pkgs+=(build-essential pkg-config)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -z "$bin" ]; then
  command -v cargo >/dev/null || { echo "install Rust first (rustup or apt-get install cargo)" >&2; exit 1; }
  cargo build --release --locked
  target=${CARGO_TARGET_DIR:-target}
  [ "${target#/}" != "$target" ] || target=$PWD/$target
  bin=$target/release/droot-fleet
fi
[ -x "$bin" ] || { echo "no droot-fleet binary at $bin" >&2; exit 1; }
net=127.80.1                          # agents and their apps on 127.80.1.1-3
gnet=127.80.2.1                       # --s3: Garage's S3 API :3900, RPC :3901, admin :3903
apps=/var/containers/quickstart       # each node's release store: $apps/node-N
work=$(mktemp -d /tmp/droot-fleet-quickstart.XXXXXX)
pids=()
garage_pid=

say() { printf '\n== %s ==\n' "$*"; }
x() { echo "+ droot-fleet $*"; "$bin" "$@"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for i in 1 2 3; do
    [ -e "$apps/node-$i" ] && "$bin" rm --root "$apps/node-$i" >/dev/null
  done
  rmdir "$apps" 2>/dev/null || true
  if [ -n "$garage_pid" ]; then # its data goes with $work
    kill -KILL "$garage_pid" 2>/dev/null || true
    wait "$garage_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# A previous run that was killed: its agents, jails and Garage (named by their paths), its
# roots; gone before this run binds their addresses.
leftovers="/tmp/droot-fleet-quickstart\.|$apps/"
pkill -KILL -f -- "$leftovers" 2>/dev/null || true
for _ in $(seq 1 50); do pgrep -f -- "$leftovers" >/dev/null || break; sleep 0.1; done
for d in /tmp/droot-fleet-quickstart.*; do [ "$d" = "$work" ] || rm -rf "$d"; done
for i in 1 2 3; do
  [ -e "$apps/node-$i" ] && "$bin" rm --root "$apps/node-$i" >/dev/null
done

start_garage() { # a private single-node Garage in $work/garage, a bucket and a key for it
  local g=("$garage" -c "$work/garage.toml") id key i
  mkdir -p "$work/garage"
  cat >"$work/garage.toml" <<TOML
metadata_dir = "$work/garage/meta"
data_dir = "$work/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "$gnet:3901"
rpc_public_addr = "$gnet:3901"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "$gnet:3900"
[admin]
api_bind_addr = "$gnet:3903"
TOML
  echo "+ garage -c garage.toml server"
  RUST_LOG=warn "${g[@]}" server >"$work/garage/server.log" 2>&1 &
  garage_pid=$!
  for i in $(seq 1 300); do # until its RPC answers
    "${g[@]}" status >/dev/null 2>&1 && break
    if ! kill -0 "$garage_pid" 2>/dev/null || [ "$i" = 300 ]; then
      echo "Garage did not come up (it exited, or no answer in 60 s); $work/garage/server.log:" >&2
      cat "$work/garage/server.log" >&2; exit 1
    fi
    sleep 0.2
  done
  id=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1)
  echo "+ garage layout assign + apply; bucket create quickstart; key create quickstart"
  "${g[@]}" layout assign -z dc1 -c 1G "$id" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  "${g[@]}" bucket create quickstart >/dev/null
  key=$("${g[@]}" key create quickstart)
  "${g[@]}" bucket allow --read --write --owner quickstart --key quickstart >/dev/null
  for i in $(seq 1 150); do # until the layout is in force: every partition has a quorum
    curl -fs -m 2 -o /dev/null "http://$gnet:3903/health" && break
    if [ "$i" = 150 ]; then
      echo "Garage not healthy after 30 s; $work/garage/server.log:" >&2
      cat "$work/garage/server.log" >&2; exit 1
    fi
    sleep 0.2
  done
  # The standard AWS chain for publish, event deploy and the agents; the endpoint for the
  # CLI (DROOT_FLEET_S3_ENDPOINT) and in each agent's [deploy] table.
  AWS_ACCESS_KEY_ID=$(sed -n 's/^ *Key ID: *//p' <<<"$key")
  AWS_SECRET_ACCESS_KEY=$(sed -n 's/^ *Secret key: *//p' <<<"$key")
  if [ -z "$AWS_ACCESS_KEY_ID" ] || [ -z "$AWS_SECRET_ACCESS_KEY" ]; then
    echo "no key in garage's answer: $key" >&2; exit 1
  fi
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION=garage AWS_DEFAULT_REGION=garage
  export AWS_EC2_METADATA_DISABLED=true DROOT_FLEET_S3_ENDPOINT=http://$gnet:3900
  echo "key $AWS_ACCESS_KEY_ID in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_REGION=garage"
  echo "DROOT_FLEET_S3_ENDPOINT=$DROOT_FLEET_S3_ENDPOINT"
}

# 1. The artifact store: demo/VERSION.tar.gz, a busybox rootfs whose httpd serves /www.
#    v3 is broken: no /www/health, so its health check gets 404. `publish` stores each
#    artifact with its sha256 (beside it in VERSION.tar.gz.sha256 for a file, in the object's
#    metadata on S3), which `event deploy` pins.
if $s3; then
  say "artifacts: s3://quickstart/demo/{v1,v2,v3}.tar.gz on Garage at $gnet:3900"
  start_garage
  store="s3://quickstart/{app}/{version}.tar.gz"   # the agents' artifact template too
  deploy_table="s3_endpoint = \"$DROOT_FLEET_S3_ENDPOINT\"   # the local Garage; keys from AWS_*
s3_region = \"garage\""
else
  say "artifacts: file://$work/store/demo/{v1,v2,v3}.tar.gz"
  mkdir -p "$work/store/demo"
  store="file://$work/store/{app}/{version}.tar.gz"   # the agents' artifact template too
  deploy_table="file_roots = [\"$work/store\"]   # file:// artifacts only from here"
fi
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
    x publish "droot-fleet-quickstart:$v" "$store" --app demo --version "$v" --gzip |
      tee "$work/publish-$v.out"
    docker rmi "droot-fleet-quickstart:$v" >/dev/null
  else # no Docker engine: the rootfs directory itself, its environment in /.drootenv
    printf 'PATH=/bin\nAPP_VERSION=%s\n' "$v" >"$src/.drootenv"
    x publish "$src" "$store" --app demo --version "$v" --gzip | tee "$work/publish-$v.out"
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
$deploy_table

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
sha=$(sed -n 's/^sha256 //p' "$work/publish-v2.out")   # as publish printed it
url=${store/\{app\}/demo}
x deploy --root "$work/single" --userns --version v2 --sha256 "$sha" "${url/\{version\}/v2}"
x run --root "$work/single/current" --userns -u app -- cat /www/index.html
x deploy --root "$work/single" --list
"$bin" rm --root "$work/single"
echo "done; removing $apps/node-1..3 and $work${garage:+, stopping Garage}"
