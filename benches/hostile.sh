#!/usr/bin/env bash
# Ingest under attack (issue 17's proof): the same fixed-rate load twice — alone, then beside benches/hostile.py
# (1 000 idle connections, 50 stalled SQL bodies, 10 slow SQL clients, 2 floods of bad lines) — against one release
# `weir serve`; prints the load generator's summaries, /healthz latency under attack, and the server's RSS.
#
#   benches/hostile.sh BIN_DIR [RATE]     # BIN_DIR holds release `weir` and `weir-loadgen`
set -euo pipefail
BIN=$1; RATE=${2:-200000}
D=$(mktemp -d); trap 'kill $W 2>/dev/null || true; rm -rf "$D"' EXIT
HTTP=127.0.0.1:18480; GRPC=127.0.0.1:18481
"$BIN/weir" serve --data-dir "$D/data" --listen $HTTP --grpc-listen $GRPC --sql-timeout 5s --max-request-time 10s \
  --header-timeout 10s > "$D/weir.log" 2>&1 &
W=$!
sleep 2
load() { "$BIN/weir-loadgen" --url "http://$HTTP" --duration 20s --rate "$RATE" --batch 1000 --connections 8 --devices 1000 --start "$1" 2>&1 | tail -4; }
echo "== alone";  load 2026-11-01T00:00:00Z
echo "== under attack"
python3 "$(dirname "$0")/hostile.py" --url "http://$HTTP" --grpc $GRPC --seconds 22 > "$D/attack.json" &
A=$!
sleep 1
load 2026-11-02T00:00:00Z
wait $A
cat "$D/attack.json"
echo "weir RSS: $(awk '/VmRSS/{print $2" "$3}' /proc/$W/status), peak $(awk '/VmHWM/{print $2" "$3}' /proc/$W/status)"
