#!/usr/bin/env bash
# One day of generated readings through a real Weir, sealed into one Parquet file; then the same queries over that
# file with Weir (DataFusion, `weir sql --archive --timing`) and with DuckDB (Python package, installed if missing),
# both timed in-process, best of 5 runs in one process (`weir sql --repeat 5 --timing`; one DuckDB connection);
# chDB and datafusion-python beside them the same way (`benches/sql_engines.py`). Prints archive bytes per reading,
# seal time and per-query times with Weir's ratio to each (below 1: Weir is faster).
#
#   benches/sql-vs-duckdb.sh            # READINGS=2000000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
READINGS="${READINGS:-2000000}"
DAY=2026-11-18   # the generator's day
cargo build --release -q -p weir-api -p weir-benches --bins
BIN="$CARGO_TARGET_DIR/release"
python3 -c 'import duckdb, pytz, chdb, datafusion' 2>/dev/null || python3 -m pip install --quiet duckdb pytz chdb datafusion

WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN/weir" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --archive-flush-age 1s >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/out" && break; sleep 0.1; done
URL="$(sed -n 's/^weir listening on //p' "$WORK/out")"
"$BIN/weir-loadgen" --url "$URL" --count "$READINGS" --batch 10000 --connections 4 --devices 100 --start "${DAY}T00:00:00Z" >/dev/null 2>&1
kill -TERM "$PID"; wait "$PID" || true

start=$(date +%s.%N)
"$BIN/weir" dump --date "$DAY" --data-dir "$WORK/data"
seal_s=$(echo "$(date +%s.%N) - $start" | bc)
FILE="$(ls "$WORK"/data/archive/readings/date=$DAY/*.parquet)"
BYTES=$(stat -c %s "$FILE")
echo "readings: $READINGS; sealed file: $BYTES bytes = $(echo "scale=2; $BYTES / $READINGS" | bc) bytes per reading; seal (weir dump, process included): ${seal_s}s"

ARCHIVE="$WORK/data/archive"
QUERIES=(
  "SELECT floor(extract(epoch FROM timestamp) / 900) AS bucket, avg(value) AS mean FROM readings WHERE sensor = 'speed' AND date = '$DAY' GROUP BY bucket ORDER BY bucket"
  "SELECT sensor, count(*) AS n, min(value) AS lo, max(value) AS hi, avg(value) AS mean FROM readings WHERE date = '$DAY' GROUP BY sensor ORDER BY sensor"
  "SELECT device, sensor, max(timestamp) AS newest FROM readings GROUP BY device, sensor ORDER BY device, sensor LIMIT 1000"
)
printf '%-6s %10s %10s %7s %10s %7s %12s %7s\n' query weir_ms duckdb_ms ratio chdb_ms ratio df_python_ms ratio
i=0
for q in "${QUERIES[@]}"; do
  i=$((i + 1))
  best_weir=$("$BIN/weir" sql --archive "$ARCHIVE" --format csv --timing --repeat 5 "$q" 2>&1 >/dev/null |
    sed -n 's/.* rows in \([0-9.]*\) ms/\1/p' | sort -n | head -1)
  row=("Q$i" "$best_weir")
  for engine in duckdb chdb datafusion-python; do
    best=$(python3 benches/sql_engines.py "$engine" "$ARCHIVE" "$q")
    row+=("$best" "$(echo "scale=2; $best_weir / $best" | bc)")
  done
  printf '%-6s %10s %10s %7s %10s %7s %12s %7s\n' "${row[@]}"
done
