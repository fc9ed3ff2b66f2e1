#!/usr/bin/env bash
# Weir side by side with the tools users would pick instead, on the same machine, in one invocation:
#
#   1. Ingest: the replaced system's storage path — PostgreSQL, one `INSERT … ON CONFLICT DO NOTHING` per reading
#      into reading(sensor, value, timestamp, PRIMARY KEY (sensor, timestamp)), driven by pgbench clients over
#      loopback TCP, fsync and synchronous_commit on (the defaults) — against Weir's `POST /ingest` driven by
#      weir-loadgen (NDJSON, 1 000 readings per request, acknowledged after fsync). Also PostgreSQL with 1 000 rows
#      per statement generated server-side, an upper bound for any batching client. Readings/s and ratios.
#   2. SQL: benches/sql-vs-duckdb.sh (the same day's Parquet file, Weir's DataFusion vs DuckDB).
#
# Installs what it needs: PostgreSQL from Debian (apt-get, as root or with sudo) when no server binaries are found,
# DuckDB from PyPI (inside sql-vs-duckdb.sh). Builds Weir in release mode.
#
#   benches/compare.sh      # READINGS=1000000 CLIENTS=8 PG_SECONDS=20 FRESH_SECONDS=30 SQL_READINGS=2000000
#
# It ends with the table at the top of benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
READINGS="${READINGS:-1000000}"
CLIENTS="${CLIENTS:-8}"
PG_SECONDS="${PG_SECONDS:-20}"
SQL_READINGS="${SQL_READINGS:-2000000}"

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%F)"

# --- PostgreSQL -------------------------------------------------------------------------------------------------
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/pgbench" ]; then
  echo "installing PostgreSQL from Debian"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
PGBIN="$(pg_bin)"
WORK="$(mktemp -d)"
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" -eq 0 ]; then AS=(runuser -u postgres --); chown postgres "$WORK"; fi
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WEIR_PID=""
cleanup() {
  "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  [ -n "$WEIR_PID" ] && kill "$WEIR_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/pg" -A trust -U weir >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $WORK -c max_connections=50" start >/dev/null
PSQL=("$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT" -U weir -d postgres)
"${PSQL[@]}" -c "CREATE TABLE reading (sensor text NOT NULL, value double precision NOT NULL,
  timestamp timestamptz NOT NULL, PRIMARY KEY (sensor, timestamp))"
cat >"$WORK/one.sql" <<'SQL'
\set s random(1, 6)
\set t random(1, 1000000000000)
INSERT INTO reading VALUES ((ARRAY['speed','fuel','revolution','engine_temperature','location_latitude','location_longitude'])[:s], random() * 100, to_timestamp(:t / 1000.0)) ON CONFLICT DO NOTHING;
SQL
cat >"$WORK/batch.sql" <<'SQL'
\set t random(1, 1000000000)
INSERT INTO reading SELECT (ARRAY['speed','fuel','revolution','engine_temperature','location_latitude','location_longitude'])[1 + g % 6], random() * 100, to_timestamp(:t + g / 1000.0) FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING;
SQL
chmod 644 "$WORK"/*.sql
pgbench_tps() {
  "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PGPORT" -U weir -f "$1" -c "$CLIENTS" -j 2 -T "$PG_SECONDS" postgres 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1
}
echo "== ingest: PostgreSQL, one INSERT … ON CONFLICT DO NOTHING per reading, $CLIENTS clients, ${PG_SECONDS}s"
PG_ONE=$(pgbench_tps "$WORK/one.sql")
echo "   $PG_ONE readings/s"
echo "== ingest: PostgreSQL, 1000 rows per INSERT (generated server-side), $CLIENTS clients, ${PG_SECONDS}s"
PG_BATCH_TPS=$(pgbench_tps "$WORK/batch.sql")
PG_BATCH=$(echo "$PG_BATCH_TPS * 1000" | bc)
echo "   $PG_BATCH readings/s"
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null

# --- Weir ---------------------------------------------------------------------------------------------------------
cargo build --release -q -p weir-api -p weir-benches --bins
BIN="$CARGO_TARGET_DIR/release"
echo "== ingest: Weir POST /ingest, NDJSON, 1000 readings per request, $CLIENTS connections, $READINGS readings (fresh weir)"
"$BIN/weir-loadgen" --spawn --weir-bin "$BIN/weir" --count "$READINGS" --batch 1000 --connections "$CLIENTS" --json \
  >"$WORK/max.json" 2>/dev/null
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=eval("d"+sys.argv[2]); print(round(v, 1) if isinstance(v, float) else v)' "$@"; }
WEIR=$(field "$WORK/max.json" '["readings_per_second"]')
echo "   $WEIR readings/s, ack p99 $(field "$WORK/max.json" '["latency_ms"]["p99"]') ms"
HALF=$(python3 -c "print(int($WEIR / 2))")
echo "== freshness: Weir at half that rate ($HALF readings/s) for ${FRESH_SECONDS:-30}s (fresh weir)"
"$BIN/weir-loadgen" --spawn --weir-bin "$BIN/weir" --duration "${FRESH_SECONDS:-30}s" --rate "$HALF" --batch 1000 \
  --connections "$CLIENTS" --json >"$WORK/half.json" 2>/dev/null
FRESH_P50=$(field "$WORK/half.json" '["freshness_ms"]["p50"]')
FRESH_P99=$(field "$WORK/half.json" '["freshness_ms"]["p99"]')
RSS=$(field "$WORK/half.json" '["weir"]["rss_max_mib"]')
echo "   freshness p50 $FRESH_P50 ms, p99 $FRESH_P99 ms; weir peak RSS $RSS MiB"
echo
printf "ingest ratios (Weir / PostgreSQL): per-reading %.1fx, vs server-side batches %.1fx\n" \
  "$(echo "$WEIR / $PG_ONE" | bc -l)" "$(echo "$WEIR / $PG_BATCH" | bc -l)"
echo

# --- SQL ----------------------------------------------------------------------------------------------------------
READINGS="$SQL_READINGS" benches/sql-vs-duckdb.sh | tee "$WORK/sql.txt"

# --- The table at the top of benches/RESULTS.md ---------------------------------------------------------------------
# Weir's time over DuckDB's: the fourth column (chDB's and datafusion-python's ratios follow it).
ratio() { awk -v q="$1" '$1 == q {print $4}' "$WORK/sql.txt"; }
echo
echo "| $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%F), commit $(git rev-parse --short HEAD) | readings/s ingested (fsync on) | freshness p50 / p99 at half rate | Weir peak RSS | SQL time vs DuckDB (Q1 / Q2 / Q3) |"
echo "|---|---|---|---|---|"
printf "| Weir | %.0f | %s / %s ms | %s MiB | %s / %s / %s |\n" "$WEIR" "$FRESH_P50" "$FRESH_P99" "$RSS" "$(ratio Q1)" "$(ratio Q2)" "$(ratio Q3)"
printf "| PostgreSQL, one INSERT per reading | %.0f | — | — | — |\n" "$PG_ONE"
printf "| PostgreSQL, 1000-row INSERTs | %.0f | — | — | — |\n" "$PG_BATCH"
echo "| DuckDB | — | — | — | 1.0 |"
