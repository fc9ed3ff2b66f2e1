#!/usr/bin/env bash
# Server CPU per reading at a fixed offered rate, and a perf profile of where it goes, by thread and symbol.
#
#   benches/profile.sh BIN_DIR LABEL [RATE]     # BIN_DIR holds release `weir` and `weir-loadgen`
#
# Runs `weir-loadgen --spawn` for 40 s at RATE readings/s (default 400000; 1000 devices, batches of 1000, 8
# connections), profiles the spawned Weir from 10 s in for 20 s (`perf record -F 199 -g`), and writes
# /tmp/weir-profile/LABEL.{loadgen.txt,info,threads.txt,symbols.txt}. Compare two builds by running it twice.
set -euo pipefail
BIN=$1; L=$2; RATE=${3:-400000}
mkdir -p /tmp/weir-profile; O=/tmp/weir-profile/$L
"$BIN/weir-loadgen" --spawn --weir-bin "$BIN/weir" --duration 40s --rate "$RATE" --batch 1000 --connections 8 \
  --devices 1000 > "$O.loadgen.txt" 2>&1 &
LG=$!
sleep 10
PID=$(pgrep -f "$BIN/weir serve" | head -1)
T0=$(awk '{print $14+$15}' "/proc/$PID/stat")
perf record -F 199 -g -p "$PID" -o "$O.perf.data" -- sleep 20 >/dev/null 2>&1
T1=$(awk '{print $14+$15}' "/proc/$PID/stat" 2>/dev/null || echo "$T0")
echo "weir pid $PID; CPU during the 20 s profile: $(( (T1 - T0) / 100 )) s" > "$O.info"
wait $LG
perf report -i "$O.perf.data" --no-children --sort comm -q --stdio -g none 2>/dev/null > "$O.threads.txt"
perf report -i "$O.perf.data" --no-children --sort comm,symbol -q --stdio -g none 2>/dev/null | head -80 > "$O.symbols.txt"
tail -3 "$O.loadgen.txt"; cat "$O.info" "$O.threads.txt"
