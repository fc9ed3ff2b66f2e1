#!/usr/bin/env bash
# Server CPU per reading, end to end, at fixed offered rates — issue 19's item 1 — and where it goes, by stage.
#
#   benches/cpu-per-reading.sh BIN_DIR [RATES] [DEVICES]   # BIN_DIR holds release `weir` and `weir-loadgen`
#
# For each rate in RATES (readings/s, default "200000 400000 700000 1000000") it runs `weir-loadgen --spawn` for
# 20 s (DEVICES devices × 6 sensors, default 100 = the issue's 600 series; batches of 1 000; 8 connections), reads
# the CPU of every thread of the spawned Weir from /proc at 6 s and at 16 s, and prints one line a rate: the
# readings acknowledged a second, the server's CPU in cores (from the load generator, the whole run), µs of CPU a
# reading (cores ÷ rate), acknowledgement p50 and freshness p99, then the 10 s window's cores by stage: `http`
# (tokio: HTTP, decoding, the WAL record), `stats` (the timely worker), `archive` (Parquet parts), `wal` (the
# writer: group commit, fsync). No profiler runs, so the figures are the server's own.
#
# Example (build first: cargo build --release -p weir-api -p weir-benches --bins; copy both to BIN_DIR):
#   benches/cpu-per-reading.sh target/release
set -euo pipefail
BIN=$1
RATES=${2:-200000 400000 700000 1000000}
DEVICES=${3:-100}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# CPU ticks of each stage: "stage ticks" lines.
stage_ticks() {
  local pid=$1 t comm
  for t in /proc/"$pid"/task/*; do
    comm=$(cat "$t/comm" 2>/dev/null) || continue
    case $comm in
      tokio-rt-worker*) echo "http $(awk '{print $14+$15}' "$t/stat")" ;;
      timely:work*) echo "stats $(awk '{print $14+$15}' "$t/stat")" ;;
      weir-archiver*) echo "archive $(awk '{print $14+$15}' "$t/stat")" ;;
      weir-wal-writer*) echo "wal $(awk '{print $14+$15}' "$t/stat")" ;;
      *) echo "other $(awk '{print $14+$15}' "$t/stat")" ;;
    esac
  done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort
}

HZ=$(getconf CLK_TCK)
printf '%-9s %-10s %-7s %-10s %-9s %-12s %s\n' rate acked/s cores "µs/reading" "ack p50" "fresh p99" \
  "cores by stage over 10 s (http stats archive wal other)"
for rate in $RATES; do
  "$BIN/weir-loadgen" --spawn --weir-bin "$BIN/weir" --duration 20s --rate "$rate" --batch 1000 --connections 8 \
    --devices "$DEVICES" > "$OUT/loadgen.txt" 2>&1 &
  lg=$!
  sleep 6
  pid=$(pgrep -n -f "$BIN/weir serve" || true)
  stages="(no server found)"
  if [ -n "$pid" ]; then
    stage_ticks "$pid" > "$OUT/a"
    sleep 10
    stage_ticks "$pid" > "$OUT/b"
    stages=$(join "$OUT/a" "$OUT/b" | awk -v hz="$HZ" '{c[$1]=($3-$2)/hz/10}
      END {printf "%.3f %.3f %.3f %.3f %.3f", c["http"], c["stats"], c["archive"], c["wal"], c["other"]}')
  fi
  wait "$lg" || { cat "$OUT/loadgen.txt"; exit 1; }
  acked=$(awk '/throughput/ {print $2}' "$OUT/loadgen.txt")
  cores=$(grep -o 'CPU [0-9.]* cores' "$OUT/loadgen.txt" | awk '{print $2}')
  ack=$(awk '/ack latency/ {print $4 " " $5}' "$OUT/loadgen.txt")
  fresh=$(awk '/freshness/ {print $6 " " $7}' "$OUT/loadgen.txt")
  us=$(awk -v c="$cores" -v r="$acked" 'BEGIN {printf "%.2f", c / r * 1e6}')
  printf '%-9s %-10s %-7s %-10s %-9s %-12s %s\n' "$rate" "$acked" "$cores" "$us" "$ack" "$fresh" "$stages"
done
