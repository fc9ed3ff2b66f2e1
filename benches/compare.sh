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
#   benches/compare.sh                 # READINGS=1000000 CLIENTS=8 PG_SECONDS=20 SQL_READINGS=2000000
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
echo "== ingest: Weir POST /ingest, NDJSON, 1000 readings per request, $CLIENTS connections, $READINGS readings"
"$BIN/weir" serve --data-dir "$WORK/weir" --listen 127.0.0.1:0 >"$WORK/weir.out" 2>"$WORK/weir.err" &
WEIR_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/weir.out" && break; sleep 0.1; done
URL="$(sed -n 's/^weir listening on //p' "$WORK/weir.out")"
"$BIN/weir-loadgen" --url "$URL" --count "$READINGS" --batch 1000 --connections "$CLIENTS" --json >"$WORK/loadgen.json"
WEIR=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["readings_per_second"]))' "$WORK/loadgen.json")
kill -TERM "$WEIR_PID"; wait "$WEIR_PID" || true; WEIR_PID=""
echo "   $WEIR readings/s"
echo
printf "ingest ratios (Weir / PostgreSQL): per-reading %.1fx, vs server-side batches %.1fx\n" \
  "$(echo "$WEIR / $PG_ONE" | bc -l)" "$(echo "$WEIR / $PG_BATCH" | bc -l)"
echo

# --- SQL ----------------------------------------------------------------------------------------------------------
READINGS="$SQL_READINGS" benches/sql-vs-duckdb.sh
