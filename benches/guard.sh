#!/usr/bin/env bash
# The benchmark regression guard (issue 19, item 5): counts the instructions of fixed workloads — decoding an NDJSON
# body, one statistics dataflow round, writing an archive part (`benches/guard`, 50 000 readings each) — with
# callgrind, and fails when any stage needs more than 10 % more than its committed baseline
# (`benches/guard/baseline.txt`). Instruction counts, not times: on a shared machine they move by well under 1 %
# between runs, timings by tens of percent.
#
#   benches/guard.sh            # check against the baseline
#   benches/guard.sh --update   # write the current counts as the new baseline (commit it, with why, in RESULTS.md)
#
# The counts depend on the compiler and the CPU's instruction-set extensions (memchr, zstd pick their code at run
# time): a baseline holds for the machine type it was written on (it records which), like every figure in RESULTS.md.
# Valgrind is installed on Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
BASELINE=benches/guard/baseline.txt
LIMIT=${WEIR_GUARD_LIMIT:-1.10}
if ! command -v valgrind > /dev/null; then
  scripts/apt-install.sh valgrind
fi
cargo build --release -q -p weir-guard
BIN="$CARGO_TARGET_DIR/release/weir-guard"
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
declare -A NOW
for stage in decode dataflow-round part-write; do
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$stage.out" --collect-atstart=no \
    --toggle-collect='*measured_*' "$BIN" "$stage" > "$OUT/$stage.log" 2> "$OUT/$stage.err" \
    || { echo "weir-guard $stage failed under valgrind:"; cat "$OUT/$stage.err"; exit 1; }
  NOW[$stage]=$(awk '/^(summary|totals):/ {print $2; exit}' "$OUT/$stage.out")
  if [ -z "${NOW[$stage]}" ] || [ "${NOW[$stage]}" = 0 ]; then
    echo "no instructions counted for $stage: callgrind did not find its measured_* function"; exit 1
  fi
done
if [ "${1:-}" = "--update" ]; then
  {
    echo "# Instructions per stage (benches/guard.sh --update), $(date -u +%F) at $(git rev-parse --short HEAD)"
    echo "# $(rustc --version), $(valgrind --version), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    for stage in decode dataflow-round part-write; do echo "$stage ${NOW[$stage]}"; done
  } > "$BASELINE"
  cat "$BASELINE"; exit 0
fi
[ -f "$BASELINE" ] || { echo "no baseline: run benches/guard.sh --update and commit $BASELINE"; exit 1; }
status=0
printf '%-16s %15s %15s %8s\n' stage baseline now ratio
for stage in decode dataflow-round part-write; do
  base=$(awk -v s="$stage" '$1 == s {print $2}' "$BASELINE")
  [ -n "$base" ] || { echo "$stage: not in $BASELINE (run --update)"; status=1; continue; }
  verdict=$(python3 -c "r=${NOW[$stage]}/$base; print(f'{r:.3f}', 'REGRESSION' if r > $LIMIT else ('faster: --update to lock it in' if r < 1/$LIMIT else 'ok'))")
  printf '%-16s %15s %15s %s\n' "$stage" "$base" "${NOW[$stage]}" "$verdict"
  case "$verdict" in *REGRESSION*) status=1;; esac
done
[ $status = 0 ] || echo "FAIL: a stage needs more than ${LIMIT}× its baseline's instructions (benches/guard/baseline.txt)"
exit $status
