#!/usr/bin/env bash
# Headless Chromium for tests/report_browser.rs (renders report.html and checks it loads cleanly).
# Usage: scripts/ci/chromium.sh install   (idempotent; Debian's `chromium` package, needs root or sudo)
#        scripts/ci/chromium.sh check     (prints the browser's version, fails when absent)
set -euo pipefail
cmd="${1:-}"
case "$cmd" in
  install)
    if command -v chromium >/dev/null 2>&1; then
      echo "chromium already installed: $(chromium --version 2>/dev/null || true)"
      exit 0
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
    chromium --version
    ;;
  check)
    command -v chromium >/dev/null 2>&1 || { echo "chromium is not installed: run scripts/ci/chromium.sh install" >&2; exit 1; }
    chromium --version
    ;;
  *)
    echo "usage: $0 install|check" >&2
    exit 2
    ;;
esac
