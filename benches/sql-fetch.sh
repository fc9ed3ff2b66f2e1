#!/usr/bin/env bash
# Time to fetch 1 M rows of `readings` through each way Weir answers SQL (issue 21): HTTP JSON, HTTP Arrow IPC, the
# PostgreSQL wire protocol (psycopg 3, binary results) and Arrow Flight SQL (ADBC), best of 3, against one release
# `weir serve` with 1 M generated readings. Time is until the client holds the decoded rows (JSON parsed, Arrow
# table read, psycopg rows fetched).
#
#   benches/sql-fetch.sh        # ROWS=1000000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
ROWS="${ROWS:-1000000}"
cargo build --release -q -p weir-api --bin weir -p weir-benches --bin weir-loadgen
BIN="$CARGO_TARGET_DIR/release"
python3 -c 'import psycopg, adbc_driver_flightsql.dbapi, pyarrow' 2>/dev/null ||
  python3 -m pip install --quiet "psycopg[binary]" adbc-driver-flightsql adbc-driver-manager pyarrow

WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN/weir" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 \
  --sql-max-rows $((ROWS * 2)) --sql-timeout 120s --archive-flush-age 1s >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q "postgres listening on" "$WORK/out" && break; sleep 0.1; done
URL="$(sed -n 's/^weir listening on //p' "$WORK/out")"
GRPC="$(sed -n 's/^weir grpc listening on http:\/\///p' "$WORK/out")"
PG="$(sed -n 's/^weir postgres listening on //p' "$WORK/out")"
"$BIN/weir-loadgen" --url "$URL" --count "$ROWS" --batch 10000 --connections 4 --devices 100 \
  --start 2026-11-18T00:00:00Z >/dev/null 2>&1
sleep 2
python3 - "$URL" "$GRPC" "$PG" "$ROWS" <<'PY'
import sys, time, json, urllib.request
import pyarrow as pa, pyarrow.ipc, psycopg
import adbc_driver_flightsql.dbapi as flight_sql
url, grpc, pg, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
q = "SELECT device, sensor, value, timestamp FROM readings"
def http(accept):
    r = urllib.request.Request(f"{url}/api/v1/sql", data=q.encode(), headers={"Content-Type": "text/plain", "Accept": accept})
    return urllib.request.urlopen(r, timeout=600).read()
def http_json():
    return len(json.loads(http("application/json")))
def http_arrow():
    return pa.ipc.open_stream(http("application/vnd.apache.arrow.stream")).read_all().num_rows
host, port = pg.rsplit(":", 1)
def pg_wire():
    with psycopg.connect(host=host, port=port, user="weir", dbname="weir") as c, c.cursor(binary=True) as cur:
        return len(cur.execute(q).fetchall())
def flight():
    with flight_sql.connect(f"grpc://{grpc}") as c, c.cursor() as cur:
        cur.execute(q)
        return cur.fetch_arrow_table().num_rows
print(f"{'way':<32} {'best of 3 (s)':>14} {'rows':>9}")
counts = set()
for name, f in [("HTTP JSON", http_json), ("HTTP Arrow IPC", http_arrow),
                ("PostgreSQL wire (psycopg, binary)", pg_wire), ("Flight SQL (ADBC)", flight)]:
    best, n = 1e9, 0
    for _ in range(3):
        t = time.perf_counter(); n = f(); best = min(best, time.perf_counter() - t)
    # The load generator may send a few readings more than asked (its last batch); every way must see the same.
    assert n >= rows, (name, n)
    counts.add(n)
    assert len(counts) == 1, (name, counts)
    print(f"{name:<32} {best:>14.2f} {n:>9}")
PY
