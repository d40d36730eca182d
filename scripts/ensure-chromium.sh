#!/usr/bin/env bash
# Headless Chromium (apt) for the dashboard's browser tests (tests/ui, marker `browser`),
# driven by the playwright package with executable_path=/usr/bin/chromium. Best effort:
# without it the browser tests skip (outside CI; in CI they fail).
exec bash "$(dirname "$0")/apt-ensure.sh" chromium /usr/bin/chromium "the browser tests will skip"
