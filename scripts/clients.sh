#!/usr/bin/env bash
# Real third-party clients against the real `weir` binary (issue 20's proof): each writes through its own protocol,
# then the readings are read back with SQL and compared with what was sent.
#
#   - Python `influxdb-client` (PyPI), InfluxDB v2 write API       -> /api/v2/write   (line protocol)
#   - Debian `influxdb-client` (`influx -execute 'INSERT …'`)       -> /write          (line protocol, v1)
#   - OpenTelemetry Python SDK, OTLP/HTTP metric exporter (PyPI)    -> /v1/metrics     (OTLP protobuf)
#   - Debian `prometheus`, scraping Weir's own /metrics and remote-writing them back -> /api/v1/prom/write
#
# Installs what is missing (apt, pip). Usage: scripts/clients.sh [path/to/weir]  (default: the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
WEIR="${1:-}"
if [[ -z "$WEIR" ]]; then
  cargo build -q -p weir-api --bin weir
  WEIR="$CARGO_TARGET_DIR/debug/weir"
fi

need_apt=()
command -v influx >/dev/null || need_apt+=(influxdb-client)
command -v prometheus >/dev/null || need_apt+=(prometheus)
if ((${#need_apt[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null
fi
python3 -c 'import influxdb_client, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http' 2>/dev/null ||
  python3 -m pip install --quiet influxdb-client opentelemetry-sdk opentelemetry-exporter-otlp-proto-http

WORK="$(mktemp -d)"
cleanup() {
  [[ -n "${PROM:-}" ]] && kill "$PROM" 2>/dev/null || true
  [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
KEY=clients-key
# The open sensor set: every client names its own sensors (field keys, OTLP and Prometheus metric names).
"$WEIR" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --api-key "$KEY" --sensors any \
  >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/out" && break; sleep 0.1; done
URL="$(sed -n 's/^weir listening on //p' "$WORK/out")"
HOSTPORT="${URL#http://}"
sql() { curl -sf -u "$KEY:" -X POST "$URL/api/v1/sql" -H 'content-type: text/plain' --data "$1"; }
check() { # name, query, expected JSON
  local got; got="$(sql "$2")"
  if [[ "$got" != "$3" ]]; then echo "FAIL $1: $2"; echo "  expected $3"; echo "  got      $got"; exit 1; fi
  echo "ok   $1"
}

# 1. Python influxdb-client, v2 write API.
python3 - "$URL" "$KEY" <<'PY'
import sys, datetime
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
url, key = sys.argv[1], sys.argv[2]
with InfluxDBClient(url=url, token=key, org="fleet") as c:
    w = c.write_api(write_options=SYNCHRONOUS)
    t = datetime.datetime(2026, 11, 30, 10, 0, 0, tzinfo=datetime.timezone.utc)
    w.write(bucket="b", write_precision=WritePrecision.S, record=[
        Point("vehicle").tag("device", f"py-{i}").field("speed", 50.0 + i).field("fuel", 10 + i)
        .time(t + datetime.timedelta(seconds=i), WritePrecision.S) for i in range(5)])
PY
check "influxdb-client (Python, v2 API)" \
  "SELECT count(*) AS n, sum(value) AS total FROM readings WHERE device LIKE 'py-%'" '[{"n":10,"total":320.0}]'

# 2. The InfluxDB 1.6 CLI (Debian), v1 /write with the key as password.
influx -host 127.0.0.1 -port "${HOSTPORT##*:}" -username me -password "$KEY" -database fleet -precision s \
  -execute "INSERT vehicle,device=cli-1 speed=77.5,fuel=3i 1796032800"
check "influx 1.6 CLI (INSERT over /write)" \
  "SELECT sensor, value, timestamp FROM readings WHERE device = 'cli-1' ORDER BY sensor" \
  '[{"sensor":"fuel","value":3.0,"timestamp":"2026-11-30T10:00:00Z"},{"sensor":"speed","value":77.5,"timestamp":"2026-11-30T10:00:00Z"}]'

# 3. The OpenTelemetry Python SDK's OTLP/HTTP exporter: a gauge exported three times, and once more at shutdown.
python3 - "$URL" "$KEY" <<'PY'
import sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
url, key = sys.argv[1], sys.argv[2]
exporter = OTLPMetricExporter(endpoint=f"{url}/v1/metrics", headers={"Authorization": f"Bearer {key}"})
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
provider = MeterProvider(resource=Resource.create({"service.instance.id": "otel-1"}), metric_readers=[reader])
speed = [0.0]
provider.get_meter("clients").create_observable_gauge("vehicle.speed", callbacks=[lambda o: [Observation(speed[0])]])
for value in (61.0, 62.0, 63.0):
    speed[0] = value
    assert provider.force_flush(), "the export failed"
provider.shutdown()
PY
check "OpenTelemetry Python SDK (OTLP/HTTP protobuf)" \
  "SELECT count(*) AS n, sum(value) AS total FROM readings WHERE device = 'otel-1' AND sensor = 'vehicle_speed'" \
  '[{"n":4,"total":249.0}]'

# 4. Prometheus scrapes Weir's own /metrics and remote-writes every series back (device = the instance label):
#    dozens of metric names, each a sensor of the open set.
cat >"$WORK/prometheus.yml" <<YML
global: { scrape_interval: 1s }
scrape_configs:
  - job_name: weir
    basic_auth: { username: "$KEY" }
    static_configs: [ { targets: ["$HOSTPORT"] } ]
remote_write:
  - url: $URL/api/v1/prom/write
    authorization: { credentials: "$KEY" }
    queue_config: { batch_send_deadline: 1s }
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" --web.listen-address=127.0.0.1:0 \
  >"$WORK/prometheus.log" 2>&1 &
PROM=$!
query="SELECT count(*) AS n FROM readings WHERE sensor = 'weir_readings_accepted_total' AND device = '$HOSTPORT'"
for _ in $(seq 60); do
  n="$(sql "$query" | sed -n 's/.*"n":\([0-9]*\).*/\1/p')"
  [[ "${n:-0}" -ge 3 ]] && break
  sleep 1
done
if [[ "${n:-0}" -lt 3 ]]; then echo "FAIL prometheus remote write: $n samples"; tail -20 "$WORK/prometheus.log"; exit 1; fi
sensors="$(sql "SELECT count(DISTINCT sensor) AS n FROM readings WHERE device = '$HOSTPORT'" | sed -n 's/.*"n":\([0-9]*\).*/\1/p')"
check "prometheus: the scrape's own 'up' series" \
  "SELECT max(value) AS up FROM readings WHERE sensor = 'up' AND device = '$HOSTPORT'" '[{"up":1.0}]'
if [[ "${sensors:-0}" -lt 20 ]]; then echo "FAIL prometheus remote write: only $sensors sensors"; exit 1; fi
echo "ok   prometheus 2.42 (Debian) remote write: $n samples of weir_readings_accepted_total, $sensors sensors from instance $HOSTPORT"
echo "all clients passed"
