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

step 4 "Chromium for the browser tests"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -q && apt-get install -y -q chromium) >/dev/null
  else
    echo "chromium is missing: install it (Debian: sudo apt-get install chromium); browser tests are skipped without it"
  fi
fi
command -v chromium >/dev/null 2>&1 && chromium --version || true

step 5 "frontend (npm ci, vite build -> frontend/dist)"
(cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
echo
echo "setup done"
