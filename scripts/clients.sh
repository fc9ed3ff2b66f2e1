#!/usr/bin/env bash
# Real third-party clients against the real `weir` binary (issue 20's proof): each writes through its own protocol,
# then the readings are read back with SQL and compared with what was sent.
#
#   - Python `influxdb-client` (PyPI), InfluxDB v2 write API       -> /api/v2/write   (line protocol)
#   - Debian `influxdb-client` (`influx -execute 'INSERT …'`)       -> /write          (line protocol, v1)
#   - OpenTelemetry Python SDK, OTLP/HTTP metric exporter (PyPI)    -> /v1/metrics     (OTLP protobuf)
#   - Debian `prometheus`, scraping Weir's own /metrics and remote-writing them back -> /api/v1/prom/write
#
# and the tools that query (issue 21): Debian `psql` and Python `psycopg` over the PostgreSQL protocol, the ADBC
# Flight SQL driver with pyarrow over Arrow Flight SQL (a million rows, compared with the HTTP Arrow answer).
#
# and TLS (issue 23): a server with a private CA's certificate, reached by curl --cacert, Python's ssl/http.client,
# grpcurl -cacert and psql sslmode=verify-full (with a key of the key file); plain clients refused.
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
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
  scripts/apt-install.sh "${need_apt[@]}"
fi
python3 -c 'import influxdb_client, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http' 2>/dev/null ||
  python3 -m pip install --quiet influxdb-client opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
python3 -c 'import psycopg, adbc_driver_flightsql.dbapi, pyarrow' 2>/dev/null ||
  python3 -m pip install --quiet "psycopg[binary]" adbc-driver-flightsql adbc-driver-manager pyarrow

WORK="$(mktemp -d)"
cleanup() {
  [[ -n "${PROM:-}" ]] && kill "$PROM" 2>/dev/null || true
  [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null || true
  [[ -n "${TPID:-}" ]] && kill "$TPID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
KEY=clients-key
# The open sensor set: every client names its own sensors (field keys, OTLP and Prometheus metric names).
"$WEIR" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --api-key "$KEY" --sensors any \
  --grpc-listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 --sql-max-rows 2000000 >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/out" && break; sleep 0.1; done
for _ in $(seq 50); do grep -q "postgres listening on" "$WORK/out" && break; sleep 0.1; done
URL="$(sed -n 's/^weir listening on //p' "$WORK/out")"
GRPC="$(sed -n 's/^weir grpc listening on http:\/\///p' "$WORK/out")"
PG="$(sed -n 's/^weir postgres listening on //p' "$WORK/out")"
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

# 5. psql (Debian postgresql-client) over the PostgreSQL protocol: results, catalog lookups, an error's SQLSTATE,
#    a long query cancelled (psql sends a cancel request on SIGINT).
export PGHOST="${PG%:*}" PGPORT="${PG##*:}" PGUSER=grafana PGDATABASE=weir PGPASSWORD="$KEY"
got="$(psql -XAtc "SELECT count(*), sum(value) FROM readings WHERE device = 'otel-1' AND sensor = 'vehicle_speed'")"
[[ "$got" == "4|249" || "$got" == "4|249.0" ]] || { echo "FAIL psql query: $got"; exit 1; }
psql -Xc '\d readings' | grep -q 'timestamp with time zone' || { echo "FAIL psql \d readings"; exit 1; }
psql -XAtc '\dv' | grep -q 'readings' || { echo "FAIL psql \dv"; exit 1; }
err="$(psql -X -v VERBOSITY=verbose -c "DELETE FROM readings" 2>&1 || true)"
grep -q '25006' <<<"$err" || { echo "FAIL psql: a write's SQLSTATE: $err"; exit 1; }
start=$(date +%s%N)
err="$(timeout -s INT 1 psql -Xc "SELECT count(*) FROM generate_series(1, 100000000000) AS a(x) WHERE x % 7 = 3" 2>&1 || true)"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
grep -qi 'cancel' <<<"$err" || { echo "FAIL psql cancel: $err"; exit 1; }
(( ms < 5000 )) || { echo "FAIL psql cancel took ${ms} ms"; exit 1; }
echo "ok   psql $(psql --version | awk '{print $3}'): query, \\d, \\dv, SQLSTATE 25006 for a write, a long query cancelled in ${ms} ms"

# 6. psycopg 3 (PyPI): parameters, a server-side prepared statement, binary results, timestamptz both ways.
python3 - "$PG" "$KEY" <<'PY'
import sys, datetime, psycopg
host, port = sys.argv[1].rsplit(":", 1)
with psycopg.connect(host=host, port=port, user="app", password=sys.argv[2], dbname="weir", autocommit=True) as c:
    at = datetime.datetime(2026, 11, 18, 18, 25, 43, 511000, tzinfo=datetime.timezone.utc)
    q = "SELECT device, value, timestamp FROM readings WHERE device = %s AND timestamp >= %s ORDER BY timestamp LIMIT 3"
    with c.cursor(binary=True) as cur:
        rows = cur.execute(q, ("otel-1", at - datetime.timedelta(days=3650)), prepare=True).fetchall()
        assert rows and all(r[0] == "otel-1" for r in rows), rows
        assert isinstance(rows[0][2], datetime.datetime) and rows[0][2].tzinfo is not None, rows
        again = cur.execute(q, ("otel-1", rows[0][2]), prepare=True).fetchall()
        assert again[0] == rows[0], (again, rows)
    with c.cursor() as cur:
        n = cur.execute("SELECT count(*) FROM readings WHERE value > %s", (0.5,)).fetchone()[0]
        assert n > 0, n
        try:
            cur.execute("INSERT INTO readings VALUES ('d', 's', 1.0, now(), '2026-01-01')")
            raise SystemExit("a write was not refused")
        except psycopg.errors.ReadOnlySqlTransaction:
            pass
print(f"ok   psycopg {psycopg.__version__}: parameters, prepared statement, binary results, timestamptz round trip, 25006 for a write")
PY

# 7. The ADBC Flight SQL driver (PyPI) with pyarrow: a million rows stream and equal the HTTP Arrow answer;
#    catalog calls; a wrong key refused.
PYTHONPATH=scripts python3 - "$URL" "$KEY" <<'PY'
import sys, json, urllib.request, base64
from http_retry import send
url, key = sys.argv[1], sys.argv[2]
lines = "\n".join(json.dumps({"device": f"bulk-{i % 100}", "sensor": "speed", "value": i * 0.5,
                              "timestamp": f"2026-11-17T{(i // 3600000) % 24:02d}:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z"})
                   for i in range(1_000_000))
auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
body = lines.encode()
step = len(body) // 10
start = 0
while start < len(body):
    end = body.find(b"\n", start + step)
    end = len(body) if end < 0 else end
    r = urllib.request.Request(f"{url}/ingest", data=body[start:end], headers={"Content-Type": "application/x-ndjson", "Authorization": auth})
    send(r, "bulk ingest", retries=3)
    start = end + 1
PY
PYTHONPATH=scripts python3 - "$URL" "$GRPC" "$KEY" <<'PY'
import sys, time, urllib.request, base64
from http_retry import send
import pyarrow as pa, pyarrow.ipc
import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions
url, grpc, key = sys.argv[1], sys.argv[2], sys.argv[3]
q = "SELECT device, value, timestamp FROM readings WHERE device LIKE 'bulk-%' ORDER BY timestamp, device"
auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
r = urllib.request.Request(f"{url}/api/v1/sql", data=q.encode(),
                           headers={"Content-Type": "text/plain", "Accept": "application/vnd.apache.arrow.stream", "Authorization": auth})
t = time.perf_counter()
# The archive may not have taken in the million readings just acknowledged within --read-wait: 503, retried.
http = pa.ipc.open_stream(send(r, "HTTP Arrow query", retries=5)).read_all()
http_s = time.perf_counter() - t
with flight_sql.connect(f"grpc://{grpc}", db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {key}"}) as c:
    with c.cursor() as cur:
        t = time.perf_counter()
        cur.execute(q)
        flight = cur.fetch_arrow_table()
        flight_s = time.perf_counter() - t
        assert flight.num_rows == 1_000_000, flight.num_rows
        # HTTP sends `device` dictionary-encoded, Flight SQL as plain strings: compare the values.
        for name in ("device", "value", "timestamp"):
            f, h = flight.column(name), http.column(name)
            if pa.types.is_dictionary(h.type):
                h = h.cast(h.type.value_type)
            assert f.combine_chunks().equals(h.combine_chunks()), f"Flight SQL and HTTP differ in {name}"
        cur.execute("SELECT count(*) AS n FROM readings WHERE device = $1", parameters=("bulk-7",))
        assert cur.fetchone()[0] == 10_000
    objects = c.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = {t["table_name"] for cat in objects for s in cat["catalog_db_schemas"] for t in s["db_schema_tables"]}
    assert {"readings", "seals"} <= tables, tables
    schema = c.adbc_get_table_schema("readings")
    assert schema.names[:4] == ["device", "sensor", "value", "timestamp"], schema
try:
    with flight_sql.connect(f"grpc://{grpc}", db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer wrong"}) as c:
        with c.cursor() as cur:
            cur.execute("SELECT 1")
    raise SystemExit("a wrong key was not refused")
except flight_sql.Error as e:
    assert "UNAUTHENTICATED" in str(e).upper() or "unauthenticated" in str(e).lower(), e
print(f"ok   ADBC Flight SQL: 1 000 000 rows in {flight_s:.2f} s equal the HTTP Arrow answer ({http_s:.2f} s); "
      f"parameters; get_objects and table schema; a wrong key refused")
PY

# 8. TLS: a private CA, a server certificate for localhost and 127.0.0.1, one server with it on every port.
T="$WORK/tls"
mkdir -p "$T"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=weir clients CA" \
  -keyout "$T/ca.key" -out "$T/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$T/key.pem" -out "$T/req.pem" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$T/ext"
openssl x509 -req -in "$T/req.pem" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 2 -extfile "$T/ext" \
  -out "$T/cert.pem" 2>/dev/null
GRAFANA="$("$WEIR" keys add grafana --scopes read,sql --file "$T/keys.toml" 2>/dev/null)"
"$WEIR" serve --data-dir "$T/data" --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 \
  --api-key "$KEY" --api-keys-file "$T/keys.toml" --sensors any --tls-cert "$T/cert.pem" --tls-key "$T/key.pem" \
  >"$T/out" 2>"$T/err" &
TPID=$!
for _ in $(seq 100); do grep -q "postgres listening on" "$T/out" && break; sleep 0.1; done
TURL="$(sed -n 's/^weir listening on //p' "$T/out")"
TGRPC="$(sed -n 's/^weir grpc listening on https:\/\///p' "$T/out")"
TPG="$(sed -n 's/^weir postgres listening on //p' "$T/out")"
[[ "$TURL" == https://* ]] || { echo "FAIL TLS: the server did not announce https: $TURL"; cat "$T/err"; exit 1; }
curl -sf --cacert "$T/ca.pem" -H "authorization: Bearer $KEY" -H 'content-type: application/x-ndjson' \
  --data '{"sensor":"tls_speed","value":4.5,"timestamp":"2026-11-30T10:00:00Z","device":"tls-1"}' "$TURL/ingest" >/dev/null
if curl -sf -o /dev/null "$TURL/healthz" 2>/dev/null; then echo "FAIL TLS: curl trusted an unknown CA"; exit 1; fi
if curl -sf -o /dev/null "${TURL/https/http}/healthz" 2>/dev/null; then echo "FAIL TLS: plain HTTP answered"; exit 1; fi
echo "ok   curl --cacert: ingest over HTTPS; an untrusted CA and plain HTTP refused"
python3 - "$TURL" "$KEY" "$T/ca.pem" <<'PY'
import sys, ssl, http.client, json
url, key, ca = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = url.removeprefix("https://").rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
conn.request("POST", "/api/v1/sql", body="SELECT count(*) AS n, sum(value) AS total FROM readings WHERE device = 'tls-1'",
             headers={"Content-Type": "text/plain", "Authorization": f"Bearer {key}"})
r = conn.getresponse()
body = json.loads(r.read())
assert r.status == 200 and body == [{"n": 1, "total": 4.5}], (r.status, body)
version = conn.sock.version()
try:
    http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(), timeout=10).request("GET", "/healthz")
    raise SystemExit("an unknown CA was trusted")
except ssl.SSLCertVerificationError:
    pass
print(f"ok   Python ssl/http.client ({version}, {ssl.OPENSSL_VERSION}): SQL over HTTPS; an unknown CA refused")
PY
scripts/grpcurl.sh -cacert "$T/ca.pem" "$TGRPC" list | grep -q '^weir.v1.Weir$'
scripts/grpcurl.sh -cacert "$T/ca.pem" -H "x-api-key: $KEY" -d '{}' "$TGRPC" weir.v1.Weir/Latest >/dev/null
if scripts/grpcurl.sh -plaintext "$TGRPC" list >/dev/null 2>&1; then echo "FAIL TLS: plaintext gRPC answered"; exit 1; fi
echo "ok   grpcurl -cacert: reflection and weir.v1.Weir/Latest over TLS; plaintext refused"
got="$(psql "host=${TPG%:*} port=${TPG##*:} sslmode=verify-full sslrootcert=$T/ca.pem user=grafana dbname=weir password=$GRAFANA" \
  -Atc "SELECT count(*) FROM readings WHERE device = 'tls-1'")"
[[ "$got" == 1 ]] || { echo "FAIL psql over TLS: $got"; exit 1; }
if PGCONNECT_TIMEOUT=5 psql "host=${TPG%:*} port=${TPG##*:} sslmode=disable user=grafana dbname=weir password=$GRAFANA" \
  -Atc "SELECT 1" >/dev/null 2>"$T/plain-psql"; then echo "FAIL TLS: a plain PostgreSQL connection was served"; exit 1; fi
grep -q "only TLS" "$T/plain-psql" || { echo "FAIL TLS: plain psql refused without the reason:"; cat "$T/plain-psql"; exit 1; }
echo "ok   psql sslmode=verify-full with a key of the key file; a plain connection refused (28000, only TLS)"
echo "all clients passed"
