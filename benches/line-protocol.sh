#!/usr/bin/env bash
# Line protocol next to NDJSON on the same data, and next to InfluxDB 1.6 (Debian's `influxdb`, installed if
# missing) given the same line protocol over the same connections. Each server runs alone, fsync on (Weir always;
# InfluxDB with wal-fsync-delay = 0s); weir-loadgen sends READINGS readings (1 000 devices × 6 sensors, batches of
# BATCH, CONNECTIONS connections) as fast as they are acknowledged. Prints readings/s and the server's CPU-seconds
# per million readings (utime + stime from /proc).
#
#   benches/line-protocol.sh      # READINGS=2000000 BATCH=5000 CONNECTIONS=8
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
READINGS="${READINGS:-2000000}"
BATCH="${BATCH:-5000}"
CONNECTIONS="${CONNECTIONS:-8}"
cargo build --release -q -p weir-api -p weir-benches --bin weir --bin weir-loadgen
BIN="$CARGO_TARGET_DIR/release"
if ! command -v influxd >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq influxdb >/dev/null
fi
WORK="$(mktemp -d)"
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run NAME URL [loadgen flags…]: loads the running $SERVER and prints one row.
run() {
  local name="$1" url="$2"; shift 2
  local before after start end out="$WORK/load-$RANDOM.out"
  before=$(cpu_s "$SERVER"); start=$(date +%s.%N)
  "$BIN/weir-loadgen" --url "$url" --count "$READINGS" --batch "$BATCH" --connections "$CONNECTIONS" \
    --devices 1000 --start 2026-11-18T00:00:00Z --no-freshness "$@" >"$out" 2>&1 ||
    { cat "$out"; exit 1; }
  end=$(date +%s.%N); after=$(cpu_s "$SERVER")
  printf '%-34s %12.0f %14.2f\n' "$name" "$(echo "$READINGS / ($end - $start)" | bc -l)" \
    "$(echo "($after - $before) * 1000000 / $READINGS" | bc -l)"
}

printf '%-34s %12s %14s\n' server readings_per_s cpu_s_per_M
for format in ndjson line-protocol; do
  PORT=$(free_port)
  "$BIN/weir" serve --data-dir "$WORK/weir-$format" --listen "127.0.0.1:$PORT" --grpc-listen off --pg-listen off \
    >"$WORK/weir.out" 2>"$WORK/weir.err" &
  SERVER=$!
  for _ in $(seq 100); do grep -q "listening on" "$WORK/weir.out" && break; sleep 0.1; done
  if [ "$format" = ndjson ]; then run "weir NDJSON /ingest" "http://127.0.0.1:$PORT"
  else run "weir line protocol /api/v2/write" "http://127.0.0.1:$PORT" --line-protocol; fi
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
done

PORT=$(free_port)
mkdir -p "$WORK/influx"
cat >"$WORK/influx/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$(free_port)"
[meta]
  dir = "$WORK/influx/meta"
[data]
  dir = "$WORK/influx/data"
  wal-dir = "$WORK/influx/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$PORT"
  log-enabled = false
[monitor]
  store-enabled = false
CONF
influxd -config "$WORK/influx/influxdb.conf" >"$WORK/influx.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/ping" >/dev/null && break; sleep 0.1; done
curl -sf -XPOST "http://127.0.0.1:$PORT/query" --data-urlencode "q=CREATE DATABASE weir" >/dev/null
run "influxdb $(influxd version | awk '{print $2}') /write" "http://127.0.0.1:$PORT" --line-protocol \
  --path "/write?db=weir&precision=u"
