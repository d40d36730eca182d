#!/usr/bin/env bash
# The wrk load generator (apt), for benchmarks/serving.py and the test that runs its quick mode
# through wrk. Best effort: without it the benchmarks and that test use the asyncio generator.
set -u
if ! command -v wrk >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    $SUDO apt-get install -y wrk >/dev/null 2>&1 \
      || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y wrk >/dev/null 2>&1; } \
      || echo "could not install wrk; the benchmarks will use their asyncio load generator" >&2
  else
    echo "no apt-get: install wrk by hand, or the benchmarks use their asyncio generator" >&2
  fi
fi
