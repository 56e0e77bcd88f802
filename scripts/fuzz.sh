#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers strangers and imported files reach (fuzz/fuzz_targets),
# with libFuzzer on stable Rust: libfuzzer-sys links libFuzzer, and the sanitizer-coverage passes
# that cargo-fuzz would ask a nightly compiler for are stable codegen options.
#
#   bash scripts/fuzz.sh            every target for 30 s, one per core (what the test command runs)
#   FUZZ_SECS=600 bash scripts/fuzz.sh dhcp tftp    longer runs of some targets
#
# Each run starts from the committed corpus (fuzz/corpus/TARGET) and writes what it finds to a
# scratch directory, so the tree is not changed; FUZZ_KEEP=1 merges new inputs into the committed
# corpus afterwards (a minimised merge). A crash stops with the input saved under
# fuzz/artifacts/TARGET and a non-zero exit: turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${FUZZ_SECS:-30}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dhcp tftp rules bitlocker imports)

triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target keeps the coverage flags off build scripts and proc-macros.
cargo build --locked --release --target "$triple" --bins -q
bin=target/$triple/release

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# One target: its run, its row of figures, its status (files in the scratch directory).
run_one() {
  local t=$1
  mkdir -p "$scratch/$t" "artifacts/$t" "corpus/$t"
  local log=$scratch/$t.log
  if ! "$bin/$t" "$scratch/$t" "corpus/$t" -max_total_time="$secs" -print_final_stats=1 \
      -max_len=65536 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" \
      >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $t FAILED: the input is in fuzz/artifacts/$t/; make it a regression test" >&2
    echo 1 >"$scratch/$t.status"
  fi
  # libFuzzer's own counts: executions, edges covered of those instrumented, corpus size.
  local execs edges total corpus seeds
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  edges=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  total=$(sed -n 's/.*(\([0-9]*\) inline 8-bit counters).*/\1/p' "$log" | head -1)
  corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  seeds=$(find "corpus/$t" -type f | wc -l)
  printf '%-10s %12s %10s %10s %8s %8s\n' "$t" "${execs:-?}" "${edges:-?}" "${total:-?}" "$seeds" "${corpus:-?}" >"$scratch/$t.row"
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    mkdir -p "$scratch/merged-$t"
    "$bin/$t" -merge=1 "$scratch/merged-$t" "corpus/$t" "$scratch/$t" >/dev/null 2>&1
    rm -f "corpus/$t"/*
    cp "$scratch/merged-$t"/* "corpus/$t"/ 2>/dev/null || true
  fi
}

# The targets run side by side, one per core (FUZZ_JOBS), each for its full time.
jobs_max=${FUZZ_JOBS:-$(nproc)}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
  echo "== fuzz $t for ${secs}s"
  run_one "$t" &
done
wait
status=0
declare -a rows
for t in "${targets[@]}"; do
  [ -f "$scratch/$t.status" ] && status=1
  rows+=("$(cat "$scratch/$t.row" 2>/dev/null || printf '%-10s (no figures)' "$t")")
done

echo
echo "fuzzing, ${secs} s per target (edges: sanitizer-coverage edges reached, of all instrumented in the binary)"
printf '%-10s %12s %10s %10s %8s %8s\n' target executions edges of seeds corpus
for r in "${rows[@]}"; do echo "$r"; done
exit $status
