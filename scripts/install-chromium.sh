#!/usr/bin/env bash
# Installs Chromium and its WebDriver (Debian packages) for scripts/browser_test.py. Idempotent.
#
#   scripts/install-chromium.sh
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "chromium and chromedriver already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
"$(dirname "$0")/apt-install.sh" chromium chromium-driver
echo "installed: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
