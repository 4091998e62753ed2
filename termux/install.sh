#!/usr/bin/env bash
# Install the telematics agent on an Android phone, inside Termux.  docs/TERMUX.md
# has the whole set-up (apps, permissions, battery settings); in short:
#
#   pkg install git && git clone <this repository> && cd <it>
#   bash termux/install.sh --device-id phone-017
#
# What it does, and where things land (termux-services' and Termux:Boot's layout):
#   packages   pkg install python python-numpy termux-api termux-services
#              (+ python-pydantic-core when the repository has it, else rust to build it)
#   agent      a venv at ~/.local/share/telematics/venv (--system-site-packages, so the
#              numpy and pydantic-core of pkg are used: pip cannot build numpy on a phone),
#              made again when pkg has moved Python to another minor version; then pip
#              install of a copy of this checkout (pip builds inside the tree it is given)
#   config     ~/.config/telematics/agent.toml from config/agent.termux.toml, only when
#              absent (a re-run never overwrites it)
#   service    $PREFIX/var/service/telematics-agent/{run,finish,log/run}, started at once
#              unless the config is still the unedited template (it then stays down until
#              `sv-enable telematics-agent`) or you disabled it (sv-disable: it stays so);
#              logs in $PREFIX/var/log/sv/telematics-agent/current
#   boot       ~/.termux/boot/start-telematics (termux-wake-lock, then Termux's profile,
#              which starts runsvdir and so the agent)
#
# Safe to run again (to upgrade after git pull): it reinstalls the agent and restarts
# the service when it was running.

set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash termux/install.sh [--device-id ID] [--skip-packages]
  --device-id ID    the device id written into a new config; without it the config is
                    the template (device id phone-001) and the agent is not started
                    until you have edited it
  --skip-packages   do not run pkg (they are installed already)
EOF
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

DEVICE_ID=""
SKIP_PACKAGES=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device-id) [ $# -ge 2 ] || die "--device-id needs a value"; DEVICE_ID="$2"; shift 2 ;;
        --skip-packages) SKIP_PACKAGES=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
if [ -n "$DEVICE_ID" ] && ! printf '%s' "$DEVICE_ID" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'; then
    die "--device-id '$DEVICE_ID': use letters, digits, '_', '.', '-' (at most 64, not starting with a symbol)"
fi

if [ -z "${PREFIX:-}" ] || [ ! -d "$PREFIX" ]; then
    die "PREFIX is not set: run this inside Termux (it is /data/data/com.termux/files/usr there)"
fi
if [ -z "${HOME:-}" ] || [ ! -d "$HOME" ]; then
    die "HOME is not set or not a directory"
fi

SRC="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/config/agent.termux.toml" ]; then
    die "$SRC is not the agent's checkout (no pyproject.toml or config/agent.termux.toml)"
fi

DATA="$HOME/.local/share/telematics"
VENV="$DATA/venv"
AGENT="$VENV/bin/telematics-agent"
CONFIG_DIR="$HOME/.config/telematics"
CONFIG="$CONFIG_DIR/agent.toml"
SVDIR="$PREFIX/var/service"
SERVICE="$SVDIR/telematics-agent"
BOOT_DIR="$HOME/.termux/boot"
BOOT="$BOOT_DIR/start-telematics"
TERMUX_HOME_IN_EXAMPLE="/data/data/com.termux/files/home"
# The template as this script wrote it, kept only when written without --device-id: while
# the config is still identical to it, the service is not started.
AS_WRITTEN="$DATA/agent.toml.as-written"
# Present while the service's down file is this script's (for the template), not the user's.
HELD="$DATA/service-held"
PY_STAMP="$VENV/.telematics-python" # the Python minor version the venv was made with
# termux-services' service-daemon starts runsvdir with this pid file.
RUNSVDIR_PID="$PREFIX/var/run/service-daemon.pid"

# A value safe on the right-hand side of a sed s|||: escape \, | and &.
sed_value() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

# A template of this checkout with @TERMUX_PREFIX@, @AGENT@ and @CONFIG@ filled in.
render() {
    sed -e "s|@TERMUX_PREFIX@|$(sed_value "$PREFIX")|g" \
        -e "s|@AGENT@|$(sed_value "$AGENT")|g" \
        -e "s|@CONFIG@|$(sed_value "$CONFIG")|g" "$1"
}

# Write a file whole or not at all: render to a temporary file, then rename.
install_file() { # template destination mode
    local tmp="$2.tmp.$$"
    render "$1" >"$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}

# -- packages -----------------------------------------------------------------------
if [ "$SKIP_PACKAGES" = 0 ]; then
    say "installing Termux packages"
    pkg install -y python python-numpy termux-api termux-services
    if ! pkg install -y python-pydantic-core; then
        warn "python-pydantic-core is not in this repository: pip will build pydantic-core" \
            "from source, which needs rust (installing it; the build takes 10-20 minutes)"
        pkg install -y rust
    fi
fi

# -- the agent ----------------------------------------------------------------------
say "installing the agent into $VENV"
mkdir -p "$DATA"
minor="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
    die "python does not run: pkg install python"
# A venv's bin/python is a link to $PREFIX/bin/python, whatever version pkg has put there
# since, and its packages are in lib/python<minor>: once pkg upgrade has moved Python to a
# new minor version nothing in the venv imports, pip included.  Make it again then.
if [ -e "$VENV" ]; then
    had="$(cat "$PY_STAMP" 2>/dev/null || true)"
    if [ -z "$had" ]; then # a venv from before the stamp: its lib directory tells
        had="another version"
        [ ! -d "$VENV/lib/python$minor" ] || had="$minor"
    fi
    if [ "$had" != "$minor" ]; then
        say "making $VENV again: it was made with Python $had, python is now $minor"
        rm -rf "$VENV"
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    python -m venv --system-site-packages "$VENV"
fi
printf '%s\n' "$minor" >"$PY_STAMP"
# pydantic pins pydantic-core exactly: with pkg's pydantic-core as a constraint pip picks
# the pydantic release made for it instead of building another pydantic-core.
constraints="$DATA/constraints.txt"
core="$("$VENV/bin/python" -c 'import pydantic_core; print(pydantic_core.__version__)' 2>/dev/null || true)"
if [ -n "$core" ]; then
    printf 'pydantic-core==%s\n' "$core" >"$constraints"
else
    : >"$constraints"
fi
# Build from a copy: pip builds inside the tree it is given, which would leave build/ and
# egg-info in the checkout (and a stale build/lib can bring deleted modules back).
mkdir -p "${TMPDIR:-$PREFIX/tmp}"
stage="$(mktemp -d "${TMPDIR:-$PREFIX/tmp}/telematics-build.XXXXXX")"
# shellcheck disable=SC2064  # expand now: the path is fixed
trap "rm -rf '$stage'" EXIT
tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - \
    pyproject.toml README.md agent cloud_bridge simulators | tar -C "$stage" -xf -
# msgpack (python-can) falls back to pure Python instead of needing a C compiler.
MSGPACK_PUREPYTHON=1 "$VENV/bin/pip" install --upgrade --constraint "$constraints" "$stage"
rm -rf "$stage"
trap - EXIT
[ -x "$AGENT" ] || die "pip did not install $AGENT"

# -- configuration ------------------------------------------------------------------
mkdir -p "$CONFIG_DIR" "$DATA"
chmod 700 "$CONFIG_DIR"
if [ -e "$CONFIG" ]; then
    say "keeping the existing $CONFIG"
    if [ -n "$DEVICE_ID" ] && ! grep -q "^id = \"$DEVICE_ID\"" "$CONFIG"; then
        warn "--device-id $DEVICE_ID not used: $CONFIG exists and is never overwritten;" \
            "its device.id stays (change it only before the agent's first start)"
    fi
else
    say "writing $CONFIG"
    tmp="$CONFIG.tmp.$$"
    sed -e "s|$TERMUX_HOME_IN_EXAMPLE|$(sed_value "$HOME")|g" "$SRC/config/agent.termux.toml" >"$tmp"
    if [ -n "$DEVICE_ID" ]; then
        sed -i -e "s|^id = \"phone-001\"|id = \"$DEVICE_ID\"|" \
            -e "s|^username = \"phone-001\"|username = \"$DEVICE_ID\"|" "$tmp"
        rm -f "$AS_WRITTEN"
    else
        cp "$tmp" "$AS_WRITTEN"
        chmod 600 "$AS_WRITTEN"
    fi
    chmod 600 "$tmp"
    mv -f "$tmp" "$CONFIG"
fi
# Still the template exactly as written: its device id is phone-001, and the first start
# ties the outbox to the device id for good (the agent refuses to start with another).
template=0
if [ -f "$AS_WRITTEN" ] && cmp -s "$CONFIG" "$AS_WRITTEN"; then
    template=1
fi
if ! "$AGENT" config check "$CONFIG"; then
    warn "$CONFIG does not validate: correct it (docs/CONFIG.md), then: sv restart telematics-agent"
fi

# -- the runit service --------------------------------------------------------------
say "installing the service $SERVICE"
export SVDIR
# runsv answers for the service (it has opened supervise/ok).
supervised() { sv status "$SERVICE" >/dev/null 2>&1; }
runsvdir_running() {
    local pid
    pid="$(cat "$RUNSVDIR_PID" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
# runsvdir looks for new service directories every 5 s: wait up to 10 s for its runsv.
wait_supervised() {
    local i
    for i in $(seq 100); do
        if supervised; then return 0; fi
        [ "$i" = 100 ] || sleep 0.1
    done
    return 1
}
was_running=0
if [ -d "$SERVICE/supervise" ] && sv status "$SERVICE" 2>/dev/null | grep -q '^run:'; then
    was_running=1
fi
# A down file is the user's (sv-disable) unless this script left it there for the template.
disabled=0
if [ -e "$SERVICE/down" ] && [ ! -e "$HELD" ]; then
    disabled=1
fi
[ -e "$SERVICE/down" ] || rm -f "$HELD" # enabled since (sv-enable): no longer held
mkdir -p "$SERVICE/log"
[ "$was_running" = 1 ] || touch "$SERVICE/down" # runsvdir must not start a half-written service
install_file "$SRC/termux/sv/telematics-agent/run" "$SERVICE/run" 755
install_file "$SRC/termux/sv/telematics-agent/finish" "$SERVICE/finish" 755
install_file "$SRC/termux/sv/telematics-agent/log/run" "$SERVICE/log/run" 755
rm -f "$SERVICE/config-error" # finish's note of a configuration error: a new start is due
started=0
if [ "$was_running" = 1 ]; then
    sv restart "$SERVICE" || warn "sv restart telematics-agent failed"
    started=1
elif [ "$disabled" = 1 ]; then
    say "telematics-agent stays disabled, as you left it (sv-disable); start it with:" \
        "sv-enable telematics-agent"
elif [ "$template" = 1 ]; then
    touch "$HELD"
    cat <<EOF

The agent is installed but NOT started: $CONFIG
is still the template.  Edit it first:
  [device] id   this phone's own device id (it says "phone-001"): the outbox is tied
                to the device id of the first start, so set it before starting
  [mqtt]        host, username, password_file (a file of mode 600)
Then start the agent, and have it start at boot, with:
  sv-enable telematics-agent

EOF
else
    rm -f "$SERVICE/down" "$HELD" # what sv-enable does before its "sv up"
    if supervised || { runsvdir_running && wait_supervised; }; then
        sv up "$SERVICE" || warn "sv up telematics-agent failed"
        say "enabled and started telematics-agent"
        started=1
    else
        warn "runsvdir is not running in this session yet: the agent starts with it (close and" \
            "reopen Termux, or reboot); then check with: sv status telematics-agent"
    fi
fi

# -- start at boot ------------------------------------------------------------------
say "installing the Termux:Boot script $BOOT"
mkdir -p "$BOOT_DIR"
install_file "$SRC/termux/boot/start-telematics" "$BOOT" 700

if [ "$template" = 1 ]; then
    edit="Edit $CONFIG (device id, mqtt host, username, password_file)"
else
    edit="Edit $CONFIG if need be (mqtt host, username, password_file)"
fi
start="sv-enable telematics-agent"
[ "$started" = 0 ] || start="sv restart telematics-agent"
cat <<EOF

Installed.  Still to do on the phone (docs/TERMUX.md):
  1. Install the Termux:API and Termux:Boot apps from the same source as Termux (F-Droid),
     and open Termux:Boot once so that Android lets it run at boot.
  2. Allow Location for Termux:API, "Allow all the time" (run: termux-location once, and
     answer the permission request), and switch the phone's location on.
  3. Exempt Termux, Termux:API and Termux:Boot from battery optimisation.
  4. $edit, then:
       $AGENT check --config $CONFIG
       $start
  Logs: tail -f $PREFIX/var/log/sv/telematics-agent/current
EOF
