#!/usr/bin/env bash
# Installs the Mosquitto MQTT broker and its clients (Debian packages) for the MQTT tests. Idempotent.
#
#   scripts/install-mosquitto.sh
set -euo pipefail
if [ -x /usr/sbin/mosquitto ] && command -v mosquitto_pub >/dev/null; then
  exit 0
fi
"$(dirname "$0")/apt-install.sh" mosquitto mosquitto-clients
echo "installed: $(/usr/sbin/mosquitto -h 2>/dev/null | head -1 || echo mosquitto)"
