#!/usr/bin/env bash
# Installs what the dashboard's end-to-end tests drive (tests/it/dashboard.rs): Debian's
# headless-capable Chromium and its WebDriver, chromedriver. Does nothing when both are there.
#
#   scripts/install-browser.sh
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "install-browser: $(/usr/bin/chromedriver --version | head -n 1) already installed" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-browser: need root to install chromium and chromium-driver (apt-get)" >&2
  exit 1
fi
echo "install-browser: installing chromium and chromium-driver (apt-get)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
echo "install-browser: $(/usr/bin/chromedriver --version | head -n 1)" >&2
