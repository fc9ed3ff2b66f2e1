#!/usr/bin/env bash
# Ingest under attack (issue 17's proof): the same fixed-rate load twice — alone, then beside benches/hostile.py
# (1 000 idle connections, 50 stalled SQL bodies, 10 slow SQL clients, 2 floods of bad lines) — against one release
# `weir serve` on its default limits; prints both load summaries, /healthz latency under attack and the server's
# RSS, and exits 1 unless the bounds hold:
#   - ingest keeps its rate: readings acknowledged under attack ≥ 80 % of alone;
#   - /healthz answers every probe, p99 under 100 ms;
#   - the server's peak RSS stays under RSS_BOUND_MIB (512 MiB: README, "Limits under attack").
#
#   benches/hostile.sh BIN_DIR [RATE]     # BIN_DIR holds release `weir` and `weir-loadgen`
set -euo pipefail
BIN=$1; RATE=${2:-200000}; RSS_BOUND_MIB=${RSS_BOUND_MIB:-512}
D=$(mktemp -d); trap 'kill $W 2>/dev/null || true; rm -rf "$D"' EXIT
HTTP=127.0.0.1:18480; GRPC=127.0.0.1:18481
"$BIN/weir" serve --data-dir "$D/data" --listen $HTTP --grpc-listen $GRPC --pg-listen off --sql-timeout 5s --max-request-time 10s \
  --header-timeout 10s > "$D/weir.log" 2>&1 &
W=$!
sleep 2
load() { "$BIN/weir-loadgen" --url "http://$HTTP" --duration 20s --rate "$RATE" --batch 1000 --connections 8 --devices 1000 --start "$1" --json; }
echo "== alone"
load 2026-11-01T00:00:00Z > "$D/alone.json"
echo "== under attack"
python3 "$(dirname "$0")/hostile.py" --url "http://$HTTP" --grpc $GRPC --seconds 22 > "$D/attack.json" &
A=$!
sleep 1
load 2026-11-02T00:00:00Z > "$D/attacked.json"
wait $A
PEAK_KIB=$(awk '/VmHWM/{print $2}' /proc/$W/status)
python3 - "$D" "$PEAK_KIB" "$RSS_BOUND_MIB" <<'EOF'
import json, sys
d, peak_kib, bound_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
alone, attacked = (json.load(open(f"{d}/{n}.json")) for n in ("alone", "attacked"))
attack = json.load(open(f"{d}/attack.json"))
for name, s in (("alone", alone), ("under attack", attacked)):
    print(f"{name}: {s['readings_acknowledged']} readings acknowledged ({s['readings_per_second']:.0f}/s), "
          f"ack p50/p99 {s['latency_ms']['p50']}/{s['latency_ms']['p99']} ms, freshness p50/p99 "
          f"{s['freshness_ms']['p50']}/{s['freshness_ms']['p99']} ms ({s['freshness_ms']['samples']} samples, "
          f"{s['freshness_ms']['errors']} failed), {s['requests_failed']} requests failed")
print("attack:", json.dumps(attack))
print(f"weir peak RSS: {peak_kib // 1024} MiB (bound {bound_mib} MiB)")
kept = attacked["readings_acknowledged"] / max(1, alone["readings_acknowledged"])
h = attack["healthz"]
checks = [
    (f"ingest kept {kept:.0%} of its rate (≥ 80 %)", kept >= 0.8),
    (f"/healthz: {h['failures']} failures, p99 {h['p99_ms']} ms (< 100 ms)", h["failures"] == 0 and h["p99_ms"] is not None and h["p99_ms"] < 100),
    (f"peak RSS {peak_kib // 1024} MiB (< {bound_mib} MiB)", peak_kib < bound_mib * 1024),
]
for text, ok in checks:
    print(("ok   " if ok else "FAIL ") + text)
sys.exit(0 if all(ok for _, ok in checks) else 1)
EOF
