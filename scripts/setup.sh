#!/usr/bin/env bash
# Installs everything lazyedit needs into .venv and builds the frontend. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> [setup %s/5] %s\n' "$1" "$2"; }

step 1 "Python virtual environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

step 2 "PyTorch 2.13.0 (pinned first: an unpinned torch would pull the CUDA build)"
.venv/bin/pip install -q torch==2.13.0

step 3 "lazyedit backend (editable) with test dependencies"
.venv/bin/pip install -q -e "backend[test]"

step 4 "Chromium for the browser tests; PostgreSQL server and nginx for tests/test_postgres.py, test_proxy.py"
pg_found() { command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
pg_found || missing+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    # the postgresql package may start a cluster as a service; the tests start their own and need none
    (apt-get update -q && apt-get install -y -q "${missing[@]}") >/dev/null
  else
    echo "missing: ${missing[*]}: install them (Debian: sudo apt-get install ${missing[*]});" \
         "the browser / PostgreSQL / proxy tests are skipped without them"
  fi
fi
command -v chromium >/dev/null 2>&1 && chromium --version || true
pg_found && echo "postgresql: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | head -1)" || true

step 5 "frontend (npm ci, vite build -> frontend/dist)"
(cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
echo
echo "setup done"
