#!/usr/bin/env bash
# Months of uptime in half an hour (issue 18's proof): 6 000 series (1 000 devices × 6 sensors), one reading per
# series every 5 minutes of event time, event time running from 30 days ago towards now at one simulated day per
# minute (28 800 readings/s), for MINUTES (30) of wall time, against one release `weir serve` on its defaults
# (--live-horizon 48h) with days sealed as they pass (--seal-interval 10s). Samples the server's RSS and live
# state every 10 s; then restarts it and measures the time to /readyz; then checks the answers for the first and
# the last full day against a from-scratch model (SQL aggregation of the archived readings). Exits 1 unless:
#   - the RSS of the second half stays within ±5 % of its mean;
#   - the restart is ready within 10 s;
#   - /api/v1/series (1-hour windows) for day 1 and day 30 equals the model.
#
#   benches/soak.sh BIN_DIR [MINUTES]     # BIN_DIR holds release `weir` and `weir-loadgen`
#
# SOAK_SAMPLE_SECONDS (default 10) sets the sampling period; the samples (RSS, live state, and each part of the
# memory budget) are copied to /tmp/weir-soak-samples.csv.
set -euo pipefail
BIN=$1; MINUTES=${2:-30}
D=$(mktemp -d); W=; L=
# However the script ends, its server and load generator end too (a load generator left running once fed the next
# run's server from another month).
trap 'kill $W $L 2>/dev/null || true; rm -rf "$D"' EXIT
HTTP=127.0.0.1:18490
serve() { "$BIN/weir" serve --data-dir "$D/data" --listen $HTTP --grpc-listen off --pg-listen off --seal-interval 10s \
  --archive-flush-age 2s >> "$D/weir.log" 2>&1 & W=$!; }
ready() { until curl -sf "http://$HTTP/readyz" > /dev/null; do sleep 0.05; done; }
serve; ready
START=$(python3 -c "import datetime as d; t=d.datetime.now(d.timezone.utc)-d.timedelta(days=$MINUTES); print(t.strftime('%Y-%m-%dT00:00:00Z'))")
"$BIN/weir-loadgen" --url "http://$HTTP" --devices 1000 --sensors 6 --tick 5m --rate 28800 --duration "${MINUTES}m" \
  --start "$START" --batch 1000 --connections 4 --json > "$D/load.json" 2> "$D/load.err" &
L=$!
PARTS="live_windows dedup_keys registry archive_buffer merge"
echo "seconds,rss_kib,live_windows,live_series,live_window_bytes,dropped$(for p in $PARTS; do printf ',mem_%s' $p; done)" > "$D/samples.csv"
T0=$(date +%s)
while kill -0 $L 2>/dev/null; do
  M=$(curl -s "http://$HTTP/metrics")
  metric() { echo "$M" | awk -v n="$1" '$1 == n {print $2}'; }
  echo "$(( $(date +%s) - T0 )),$(awk '/VmRSS/{print $2}' /proc/$W/status),$(metric weir_live_windows),$(metric weir_live_series),$(metric weir_live_window_bytes),$(metric weir_live_dropped_readings_total)$(for p in $PARTS; do printf ',%s' "$(metric "weir_memory_used_bytes{part=\"$p\"}")"; done)" >> "$D/samples.csv"
  sleep "${SOAK_SAMPLE_SECONDS:-10}"
done
wait $L || true
sleep 15   # the last flushes and seals
kill -TERM $W; wait $W || true
cp "$D/samples.csv" /tmp/weir-soak-samples.csv   # kept for a look afterwards
RESTART_T0=$(date +%s.%N); serve; ready; RESTART=$(python3 -c "print(round($(date +%s.%N) - $RESTART_T0, 2))")
RSS_AFTER=$(awk '/VmRSS/{print $2}' /proc/$W/status)
python3 - "$D" "$START" "$RESTART" "$RSS_AFTER" "http://$HTTP" "$MINUTES" <<'EOF'
import csv, datetime, json, sys, urllib.parse, urllib.request
d, start, restart, rss_after, url, minutes = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
load = json.load(open(f"{d}/load.json"))
rows = list(csv.DictReader(open(f"{d}/samples.csv")))
print(f"load: {load['readings_acknowledged']} readings acknowledged ({load['readings_per_second']:.0f}/s), "
      f"{load['requests_failed']} requests failed, ack p99 {load['latency_ms']['p99']} ms")
second = [r for r in rows[len(rows) // 2:] if r["rss_kib"]]
rss = [int(r["rss_kib"]) for r in second]
mean = sum(rss) / len(rss)
spread = max(abs(x - mean) for x in rss) / mean
last = rows[-1]
windows, series = float(last["live_windows"]), float(last["live_series"])
q = max(1, len(rss) // 4)
trend = (sum(rss[-q:]) / q) / (sum(rss[:q]) / q) - 1
print(f"RSS, second half: mean {mean / 1024:.0f} MiB, min {min(rss) / 1024:.0f}, max {max(rss) / 1024:.0f} "
      f"(within ±{spread:.1%} of the mean); its last quarter's mean vs its first quarter's: {trend:+.1%}")
print(f"live state at the end: {windows:.0f} windows, {series:.0f} series, {float(last['live_window_bytes']) / 2**20:.0f} MiB "
      f"estimated ({float(last['live_window_bytes']) / max(windows, 1):.0f} B per window), "
      f"{mean * 1024 / max(series, 1):.0f} B of RSS per series, {last['dropped']} readings dropped as beyond the horizon")
print(f"restart: ready in {restart} s, RSS {rss_after / 1024:.0f} MiB")
def get(path):
    return json.load(urllib.request.urlopen(url + path))
def sql(q):
    req = urllib.request.Request(url + "/api/v1/sql", data=q.encode(), headers={"content-type": "text/plain"})
    return json.load(urllib.request.urlopen(req))
first_day = datetime.date.fromisoformat(start[:10])
days = [first_day, first_day + datetime.timedelta(days=minutes - 1)]
ok_answers = True
for day in days:
    for device, sensor in (("vehicle-00007", "speed"), ("vehicle-00999", "location_latitude")):
        f, t = f"{day}T00:00:00Z", f"{day + datetime.timedelta(days=1)}T00:00:00Z"
        q = urllib.parse.urlencode({"device": device, "sensor": sensor, "window": "1h", "from": f, "to": t})
        live = get(f"/api/v1/series?{q}")["windows"]
        model = sql(f"SELECT CAST(date_bin(INTERVAL '1 hour', timestamp, TIMESTAMP '1970-01-01T00:00:00Z') AS VARCHAR) AS s, "
                    f"count(*) AS n, min(value) AS lo, max(value) AS hi, avg(value) AS mean FROM readings "
                    f"WHERE device = '{device}' AND sensor = '{sensor}' AND date = '{day}' GROUP BY s ORDER BY s")
        same = len(live) == len(model) and all(
            w["count"] == m["n"] and w["min"] == m["lo"] and w["max"] == m["hi"] and abs(w["mean"] - m["mean"]) <= 1e-9 * max(1, abs(m["mean"]))
            for w, m in zip(live, model))
        ok_answers &= same and len(model) > 0
        print(f"day {day} {device}/{sensor}: {len(live)} 1-hour windows, {'equal to' if same else 'DIFFERENT from'} the model ({len(model)} windows)")
checks = [
    (f"RSS of the second half within ±5 % of its mean ({spread:.1%})", spread <= 0.05),
    (f"restart ready within 10 s ({restart} s)", restart <= 10),
    ("answers for day 1 and day 30 equal the model", ok_answers),
]
for text, ok in checks:
    print(("ok   " if ok else "FAIL ") + text)
sys.exit(0 if all(ok for _, ok in checks) else 1)
EOF
