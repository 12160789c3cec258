#!/usr/bin/env bash
# Install headless Chromium and its driver (Debian packages) for the browser test of the book.
# Idempotent: does nothing when both are already on the PATH. Needs root (CI runs as root) or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_browser.sh: need root to install chromium and chromium-driver (apt-get);" \
         "install them yourself or skip the browser test with -m 'not browser'" >&2
    exit 1
  fi
fi
echo "Installing chromium and chromium-driver (Debian packages) ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
chromium --version
