#!/usr/bin/env bash
# Runs every fuzz target for a short time (FUZZ_SECONDS, 20 s by default) over its committed
# corpus; fails on the first crash, leak, timeout or out-of-memory. New inputs go to a scratch
# directory, never into fuzz/corpus. Needs cargo-fuzz; uses the nightly toolchain when it is
# installed, else the default one with RUSTC_BOOTSTRAP=1 (libFuzzer needs unstable flags).
#
# The build goes to FUZZ_TARGET_DIR (default: ~/.cache/wsgate-fuzz-target), outside the
# checkout, so a machine that ran it once rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-20}
target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/wsgate-fuzz-target}
targets=(client_frame handshake_request jwt proxy_header config)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

"${fuzz[@]}" build --release --target-dir "$target_dir"
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${seconds}s"
  mkdir -p "$scratch/$t"
  # libFuzzer writes new inputs to its first corpus directory: the scratch one.
  if ! "${fuzz[@]}" run --release --target-dir "$target_dir" "$t" \
    "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1; then
    tail -n 60 "$scratch/$t.log"
    echo "fuzz: $t FAILED (the crashing input is under fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$t.log" || true
done
echo "fuzz: every target ran ${seconds}s without a crash"
