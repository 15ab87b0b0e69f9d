#!/usr/bin/env bash
# Sets up .venv (first run only) and serves on 127.0.0.1:9095 with SQLite and the shipped rules.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/remediator ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e .
fi
exec .venv/bin/remediator serve --config remediator.yaml "$@"
