#!/usr/bin/env bash
# Installs the Mosquitto MQTT broker and its clients (Debian packages) for the MQTT tests. Idempotent.
#
#   scripts/install-mosquitto.sh
set -euo pipefail
if [ -x /usr/sbin/mosquitto ] && command -v mosquitto_pub >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients
echo "installed: $(/usr/sbin/mosquitto -h 2>/dev/null | head -1 || echo mosquitto)"
