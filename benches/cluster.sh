#!/usr/bin/env bash
# Throughput and freshness of a Weir cluster of 1, 2 and 3 processes on this machine (issue 7).
#
# For each N: N `weir serve` processes joined by timely's cluster runtime (N = 1: a plain single process), each with
# its own data directory and HTTP port, all sharing one archive; N load generators, one per process, each with its own seed and event-time
# range (so no reading is a duplicate of another's). Two runs per N: as fast as possible (READINGS in all), then a
# fixed total RATE for FRESH_SECONDS with freshness probes (ack at one process → visible in its statistics).
# On a 2-core machine every process and load generator shares the same two cores: the figures show the cluster's
# overhead, not its scaling.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
READINGS="${READINGS:-2000000}"
RATE="${RATE:-300000}"
FRESH_SECONDS="${FRESH_SECONDS:-20}"
PROCESSES="${PROCESSES:-1 2 3}"
cargo build --release -q -p weir-api -p weir-benches --bins
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
cleanup() { pkill -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))'"$2"')' "$1"; }

start_cluster() { # N -> sets URLS
  local n=$1 hosts="$WORK/hosts-$1.txt"
  : >"$hosts"
  for i in $(seq 0 $((n - 1))); do echo "127.0.0.1:$(free_port)" >>"$hosts"; done
  URLS=()
  for i in $(seq 0 $((n - 1))); do
    local port args=()
    port=$(free_port)
    # A cluster shares one archive.
    [ "$n" -gt 1 ] && args=(--cluster "$hosts" --process "$i" --archive-url "$WORK/n$n-archive")
    "$BIN/weir" serve "${args[@]}" --listen "127.0.0.1:$port" --grpc-listen 127.0.0.1:0 --pg-listen off --data-dir "$WORK/n$n-p$i" >"$WORK/n$n-p$i.log" 2>&1 &
    URLS+=("http://127.0.0.1:$port")
  done
  for url in "${URLS[@]}"; do
    for _ in $(seq 1 600); do curl -sf "$url/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
}

stop_cluster() { pkill -f "$WORK/n" 2>/dev/null || true; sleep 1; }

load() { # N tag extra-args... : one load generator per process, all at once
  local n=$1 tag=$2
  shift 2
  local pids=()
  for i in $(seq 0 $((n - 1))); do
    "$BIN/weir-loadgen" --url "${URLS[$i]}" --seed $((i + 1)) --start "2026-11-0$((i + 1))T00:00:00Z" \
      --batch 1000 --connections 4 --devices 1000 --json "$@" >"$WORK/$tag-$i.json" 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
}

printf '| processes | readings/s (as fast as possible) | at %s/s: acknowledged | freshness p50 / p99 (ms) |\n|---|---|---|---|\n' "$RATE"
for n in $PROCESSES; do
  start_cluster "$n"
  load "$n" "max-$n" --count $((READINGS / n))
  total=0
  for i in $(seq 0 $((n - 1))); do total=$(python3 -c "print($total + $(field "$WORK/max-$n-$i.json" '["readings_per_second"]'))"); done
  stop_cluster
  start_cluster "$n"
  load "$n" "fresh-$n" --duration "${FRESH_SECONDS}s" --rate $((RATE / n))
  acked=0
  p50s=()
  p99s=()
  for i in $(seq 0 $((n - 1))); do
    acked=$(python3 -c "print($acked + $(field "$WORK/fresh-$n-$i.json" '["readings_per_second"]'))")
    p50s+=("$(field "$WORK/fresh-$n-$i.json" '["freshness_ms"]["p50"]')")
    p99s+=("$(field "$WORK/fresh-$n-$i.json" '["freshness_ms"]["p99"]')")
  done
  stop_cluster
  p50=$(python3 -c "print(round(max([$(IFS=,; echo "${p50s[*]}")]), 1))")
  p99=$(python3 -c "print(round(max([$(IFS=,; echo "${p99s[*]}")]), 1))")
  printf '| %s | %.0f | %.0f | %s / %s |\n' "$n" "$total" "$acked" "$p50" "$p99"
done
echo
echo "(freshness: the worst process's p50 and p99; $(nproc) cores, $(git rev-parse --short HEAD), $(date -u +%FT%TZ))"
