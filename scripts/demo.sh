#!/usr/bin/env bash
# The main job on a fresh Debian machine: install what is missing, then drive a
# simulated delivery round through the agent, a local mosquitto and the bridge,
# and print what the bridge received. Extra arguments go to the demo
# (--scenario highway, --speed 20, --duration 600, --workdir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
TELEMATICS_WITH_GPSD=0 ./scripts/ensure-deps.sh
exec .venv/bin/telematics-sim demo "$@"
