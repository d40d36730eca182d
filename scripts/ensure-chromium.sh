#!/usr/bin/env bash
# Headless Chromium (apt) for the dashboard's browser tests (tests/ui, marker `browser`),
# driven by the playwright package with executable_path=/usr/bin/chromium. Best effort:
# without it the browser tests skip (outside CI; in CI they fail).
set -u
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    $SUDO apt-get install -y chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y chromium >/dev/null 2>&1; } \
      || echo "could not install chromium; the browser tests will skip" >&2
  else
    echo "no apt-get: install chromium at /usr/bin/chromium, or the browser tests skip" >&2
  fi
fi
