#!/usr/bin/env bash
# Installs libfaketime (Debian's `faketime`) for the cluster test whose processes' clocks disagree
# (api/tests/write_order.rs). Idempotent; prints the library's path.
#
#   scripts/install-faketime.sh
set -euo pipefail
find_lib() { find /usr/lib -name 'libfaketime.so.1' -path '*faketime*' 2>/dev/null | grep -v MT | head -n1; }
lib="$(find_lib || true)"
if [ -z "$lib" ]; then
  "$(dirname "$0")/apt-install.sh" faketime
  lib="$(find_lib)"
fi
echo "$lib"
