#!/usr/bin/env bash
# Installs Debian packages for the tests and scripts, one installer at a time: tests run in parallel, and two
# apt-get runs at once fail on dpkg's lock (seen on a fresh machine: two MQTT tests installing Mosquitto together).
# Waits for any other installer, then installs what is still missing. Idempotent.
#
#   scripts/apt-install.sh PACKAGE...
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
exec 9>"${TMPDIR:-/tmp}/weir-apt-install.lock"
flock 9
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi
# Lock::Timeout: wait for an apt run outside Weir's scripts too (unattended upgrades) instead of failing.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >&2
