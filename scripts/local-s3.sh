#!/usr/bin/env bash
# A local S3-compatible server for tests: moto (PyPI), installed on first use into a virtual environment under
# $HOME/.cache/weir/tools (nothing system-wide), then run in the foreground on 127.0.0.1.
#
#   scripts/local-s3.sh [PORT]        # default 9000; S3 endpoint http://127.0.0.1:PORT, any access key works
set -euo pipefail
PORT="${1:-9000}"
TOOLS="${WEIR_TOOLS_DIR:-$HOME/.cache/weir/tools}"
VENV="$TOOLS/moto"
mkdir -p "$TOOLS"
if [ ! -x "$VENV/bin/moto_server" ]; then
  # Several tests may start at once: one installs, the others wait for it.
  exec 9>"$TOOLS/moto.lock"
  flock 9
  if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing moto (local S3 server) into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
  fi
  flock -u 9
fi
exec "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT"
