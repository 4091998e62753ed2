#!/usr/bin/env bash
# Install what the agent, the demo and the tests need on a Debian/Raspberry Pi OS
# machine, only where it is missing: mosquitto, gpsd + gpsfake, PostgreSQL's server
# binaries (the bridge's tests start their own server), Chromium (the live view's
# browser test), a virtualenv in .venv with the project and its dev tools.
# Idempotent and quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ "${TELEMATICS_WITH_GPSD:-1}" = 1 ]; then
  [ -x /usr/sbin/gpsd ] || need+=(gpsd)
  command -v gpsfake >/dev/null 2>&1 || need+=(gpsd-clients)
  command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck) # the tests lint the install scripts
  command -v runsvdir >/dev/null 2>&1 || need+=(runit) # the Termux service runs under runsvdir in a test
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) # verifies the unit files
fi
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${TELEMATICS_WITH_BRIDGE_SERVERS:-1}" = 1 ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${need[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "installing system packages: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts mosquitto/gpsd as services; the project runs its own on free ports.
fi

py=$(command -v python3)
"$py" - <<'PY' || { echo "Python >= 3.11 is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
