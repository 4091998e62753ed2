#!/usr/bin/env bash
# Make gpsd and gpsfake available for tests/gps/test_gpsd_source.py.
#
# Idempotent and quiet: does nothing when both are installed.  Otherwise
# installs the Debian/Ubuntu packages gpsd and gpsd-clients (gpsfake and the
# python3-gps module it runs on), as root or through passwordless sudo.
# Exits non-zero with one line on stderr when it cannot.
set -euo pipefail

have_gpsd() { [ -x /usr/sbin/gpsd ] || command -v gpsd >/dev/null 2>&1; }
have_gpsfake() {
    command -v gpsfake >/dev/null 2>&1 && /usr/bin/python3 -c 'import gps.fake' >/dev/null 2>&1
}

if have_gpsd && have_gpsfake; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "ensure-gpsd: gpsd/gpsfake missing and not root (no passwordless sudo):" \
        "run 'apt-get install gpsd gpsd-clients' as root" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-gpsd: gpsd/gpsfake missing and no apt-get here: install gpsd and gpsfake" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends gpsd gpsd-clients >"$log" 2>&1; then
    # A fresh image has no package lists yet.
    "${as_root[@]}" apt-get update -q >"$log" 2>&1 &&
        "${as_root[@]}" apt-get install -y -q --no-install-recommends gpsd gpsd-clients \
            >"$log" 2>&1 || {
        echo "ensure-gpsd: apt-get install gpsd gpsd-clients failed:" >&2
        tail -n 20 "$log" >&2
        exit 1
    }
fi

if ! (have_gpsd && have_gpsfake); then
    echo "ensure-gpsd: installed gpsd gpsd-clients but gpsd/gpsfake still not usable" >&2
    exit 1
fi
