#!/usr/bin/env bash
# Fetches, into .whl/ (git-ignored), the Python packages that the lent GPU machine lacks for
# scripts/device_run.sh: its image has torch, accelerate, transformers, scipy and pytest, but no diffusers, and
# it reaches no package registry. Run it here, then carry .whl with the device tool's `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
# that machine's Python is 3.12 on x86-64; the three are pure Python, so one platform tag fits them all
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "diffusers==0.42.1" importlib_metadata zipp
ls -l .whl
