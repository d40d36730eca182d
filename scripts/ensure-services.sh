#!/usr/bin/env bash
# Make sure the services the tests use are up. PostgreSQL runs on every machine of this
# project's kind; start it if it has stopped. Exits non-zero only when it cannot be reached.
set -u
pg_up() { python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 5432))
except OSError:
    sys.exit(1)
PY
}
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    sleep 2
  fi
fi
if ! pg_up; then
  echo "PostgreSQL is not reachable at 127.0.0.1:5432; postgres-marked tests will fail" >&2
  exit 1
fi
bash "$(dirname "$0")/ensure-wrk.sh" || true
bash "$(dirname "$0")/ensure-chromium.sh" || true
