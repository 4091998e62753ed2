#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what is missing, then
# lint, type check and pytest (real mosquitto, gpsd/gpsfake, ptys, SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
