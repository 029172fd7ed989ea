#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (default 600) and prints one summary line
# per target: runs, coverage, corpus size, and any crash saved under fuzz/artifacts/.
# Each target's full libFuzzer output is kept in fuzz/artifacts/logs/TARGET.log. The corpus
# a run grows goes to a scratch directory (fuzz/corpus/ keeps only the committed seeds). Needs the nightly toolchain and cargo-fuzz. Exit 1 if any target
# crashed. Usage: fuzz/run-all.sh [SECONDS] [TARGET...]
set -euo pipefail

seconds=${1:-600}
shift || true
cd "$(dirname "$0")"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/droot-fleet-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build >/dev/null

failed=0
printf '%-16s %8s %12s %8s %8s %8s  %s\n' target seconds runs cov ft corpus result
for t in "${targets[@]}"; do
  extra=()
  # The unpacker's decompression thread is detached by design: LeakSanitizer would name it.
  [ "$t" = unpack ] && extra+=(-detect_leaks=0)
  mkdir -p "$scratch/$t"
  mkdir -p artifacts/logs
  log=artifacts/logs/$t.log
  result=ok
  cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || result=CRASH
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  corpus=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  if [ "$result" != ok ]; then
    failed=1
    result="CRASH: $(grep -o 'artifacts/[^ ]*' "$log" | head -1 || true)"
    tail -40 "$log" >&2
  fi
  printf '%-16s %8s %12s %8s %8s %8s  %s\n' "$t" "$seconds" "${runs:--}" "${cov:--}" \
    "${ft:--}" "${corpus:--}" "$result"
done
exit $failed
