#!/usr/bin/env bash
# Install the telematics agent on Raspberry Pi OS / Debian (docs/SYSTEMD.md):
# system users, a venv in /opt/telematics, config in /etc/telematics, the
# systemd units and udev rules, optionally gpsd; then enable and start the agent,
# once its config is no longer the example and passes `config check`.
#
# Idempotent: a second run changes nothing.  Re-running it from a newer checkout
# upgrades in place (the venv is reinstalled only when the source changed) and
# never touches an edited /etc/telematics/agent.toml.  --uninstall keeps the
# config and the outbox (/var/lib/telematics) unless --purge is given.
set -euo pipefail
umask 022 # the venv and units must be readable by the service users whatever root's umask

PROG=${0##*/}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

usage() {
  cat <<EOF
usage: $PROG [--root DIR] [--bridge] [--with-gpsd] [--wheelhouse DIR] [--python PY] [--no-start]
       $PROG [--root DIR] --uninstall [--purge]

Installs the agent from this checkout ($SRC).

  --root DIR        install into the directory tree DIR instead of / (an image, a
                    chroot from outside, a test); users are added with
                    useradd --prefix DIR; no service is started
  --bridge          also the cloud bridge: user telematics-bridge, its unit, the
                    [bridge] extras (kept on later runs once installed)
  --with-gpsd       also apt-get install gpsd
  --wheelhouse DIR  install Python packages from DIR only (pip --no-index), for
                    vans without a network; DIR must also hold setuptools and wheel
  --python PY       the Python to build the venv on (default /usr/bin/python3, >= 3.11)
  --no-start        enable the units but do not start (or restart) them now
  --uninstall       stop and disable the units, remove them, the udev rules and
                    /opt/telematics; keep /etc/telematics and /var/lib/telematics
  --purge           with --uninstall: remove those too, and the users

The agent is enabled (and started) only once /etc/telematics/agent.toml, which
starts as the example, has been edited and passes "telematics-agent config
check": edit it, then run this script again.
EOF
}

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}
say() { printf '%s\n' "$*"; }
# One line per thing looked at: what was done to it.
did() { printf '  %-10s %s\n' "$1" "$2"; }

ROOT=""
BRIDGE=0
WITH_GPSD=0
WHEELHOUSE=""
PY=""
NO_START=0
UNINSTALL=0
PURGE=0
START_FAILED=0
while [ $# -gt 0 ]; do
  case $1 in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
    --root=*) ROOT=${1#*=} ;;
    --bridge) BRIDGE=1 ;;
    --with-gpsd) WITH_GPSD=1 ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift ;;
    --wheelhouse=*) WHEELHOUSE=${1#*=} ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PY=$2; shift ;;
    --python=*) PY=${1#*=} ;;
    --no-start) NO_START=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; printf '\n%s: unknown argument %s\n' "$PROG" "$1" >&2; exit 2 ;;
  esac
  shift
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"

[ "$(id -u)" = 0 ] || die "must be run as root (it adds system users and writes /etc, /opt): sudo $0 $*"

if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd -P)
  [ "$ROOT" != / ] || ROOT=""
fi

OPT=$ROOT/opt/telematics
VENV=$OPT/venv
SHARE=$OPT/share # what this script installed last: the pristine udev rules, the example config
STAMP=$VENV/.telematics-install
ETC=$ROOT/etc/telematics
STATE=$ROOT/var/lib/telematics
BR_ETC=$ROOT/etc/telematics-bridge
BR_STATE=$ROOT/var/lib/telematics-bridge
UNITDIR=$ROOT/etc/systemd/system
RULES=$ROOT/etc/udev/rules.d/99-telematics.rules
LINKDIR=$ROOT/usr/local/bin
UNITS=(telematics-agent.service telematics-bridge.service)

# systemctl/udevadm act on the running system only when it is this one and
# systemd runs it; in a --root tree or a chroot they can only enable units.
SYSTEMD_UP=0
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then SYSTEMD_UP=1; fi
HAVE_SYSTEMCTL=0
if command -v systemctl >/dev/null 2>&1; then HAVE_SYSTEMCTL=1; fi
SYSTEMCTL=(systemctl)
if [ -n "$ROOT" ]; then SYSTEMCTL=(systemctl "--root=$ROOT"); fi

PREFIX=()
if [ -n "$ROOT" ]; then PREFIX=(--prefix "$ROOT"); fi

# -- users and groups (in $ROOT/etc with --root) ----------------------------------

db_has() { # passwd|group NAME
  if [ -n "$ROOT" ]; then
    [ -f "$ROOT/etc/$1" ] && awk -F: -v n="$2" '$1 == n { f = 1 } END { exit !f }' "$ROOT/etc/$1"
  else
    getent "$1" "$2" >/dev/null
  fi
}

id_of() { # passwd|group NAME -> numeric id
  local id
  if [ -n "$ROOT" ]; then
    id=$(awk -F: -v n="$2" '$1 == n { print $3; exit }' "$ROOT/etc/$1")
  else
    id=$(getent "$1" "$2" | cut -d: -f3)
  fi
  [ -n "$id" ] || die "no $1 entry for $2"
  printf '%s\n' "$id"
}

seed_root_db() {
  # An empty tree has no /etc/passwd for useradd --prefix to add to: start it
  # as debootstrap does, from base-passwd's masters (root, dialout, ...).
  [ -n "$ROOT" ] && [ ! -f "$ROOT/etc/passwd" ] || return 0
  mkdir -p "$ROOT/etc"
  if [ -f /usr/share/base-passwd/passwd.master ] && [ -f /usr/share/base-passwd/group.master ]; then
    install -m 0644 /usr/share/base-passwd/passwd.master "$ROOT/etc/passwd"
    [ -f "$ROOT/etc/group" ] || install -m 0644 /usr/share/base-passwd/group.master "$ROOT/etc/group"
  else
    printf 'root:x:0:0:root:/root:/bin/bash\n' >"$ROOT/etc/passwd"
    [ -f "$ROOT/etc/group" ] || printf 'root:x:0:\ndialout:x:20:\n' >"$ROOT/etc/group"
  fi
  did seeded "$ROOT/etc/passwd, $ROOT/etc/group (base-passwd)"
}

ensure_group() { # NAME
  if db_has group "$1"; then
    did exists "group $1"
  else
    groupadd ${PREFIX[@]+"${PREFIX[@]}"} --system "$1"
    did created "group $1"
  fi
}

ensure_user() { # NAME HOME COMMENT
  if db_has passwd "$1"; then
    did exists "user $1"
    return
  fi
  local group=(--user-group)
  if db_has group "$1"; then group=(--gid "$1"); fi # left over from an earlier install
  useradd ${PREFIX[@]+"${PREFIX[@]}"} --system --home-dir "$2" --no-create-home \
    --shell /usr/sbin/nologin --comment "$3" "${group[@]}" "$1"
  did created "user $1 (home $2, no login)"
}

remove_user() { # NAME
  if db_has passwd "$1"; then
    userdel ${PREFIX[@]+"${PREFIX[@]}"} "$1"
    did removed "user $1"
  fi
  if db_has group "$1"; then
    if groupdel ${PREFIX[@]+"${PREFIX[@]}"} "$1"; then did removed "group $1"; else did kept "group $1 (still in use)"; fi
  fi
}

# -- files ------------------------------------------------------------------------

owner_mode() { stat -c '%u:%g %a' "$1"; }

ensure_dir() { # PATH MODE UID GID: created if missing, else left as it is
  if [ -d "$1" ]; then
    did exists "$1/"
  else
    install -d -m "$2" -o "$3" -g "$4" "$1"
    did created "$1/ ($2)"
  fi
}

same_mode() { # PATH MODE(octal) UID GID
  [ "$(owner_mode "$1")" = "$3:$4 $(printf '%o' "$((8#$2))")" ]
}

put_file() { # SRCFILE DEST MODE UID GID; returns 0 if it wrote the file
  if [ -f "$2" ] && cmp -s "$1" "$2" && same_mode "$2" "$3" "$4" "$5"; then
    did unchanged "$2"
    return 1
  fi
  local what=installed
  [ ! -e "$2" ] || what=updated
  # Called as a condition, where set -e does not apply: fail explicitly.
  install -D -m "$3" -o "$4" -g "$5" "$1" "$2" || die "cannot install $2"
  did "$what" "$2"
}

install_rules() {
  # The udev rules are edited on the van (section 1 pins a GPS by serial number),
  # so they are handled like a dpkg conffile: replaced only while unedited.
  local src=$SRC/systemd/99-telematics.rules pristine=$SHARE/99-telematics.rules
  RULES_CHANGED=0
  if [ ! -e "$RULES" ] || { [ -f "$pristine" ] && cmp -s "$RULES" "$pristine" && ! cmp -s "$src" "$RULES"; }; then
    put_file "$src" "$RULES" 0644 0 0 && RULES_CHANGED=1
  elif cmp -s "$src" "$RULES"; then
    did unchanged "$RULES"
  elif [ -f "$RULES.new" ] && cmp -s "$src" "$RULES.new"; then
    did kept "$RULES (your edits; merge $RULES.new into it, then delete that)"
  elif [ -f "$pristine" ] && cmp -s "$src" "$pristine"; then
    did kept "$RULES (your edits)"
  else
    install -m 0644 "$src" "$RULES.new"
    did kept "$RULES (your edits); this version's rules are in $RULES.new: merge, then delete it"
  fi
  if [ ! -f "$pristine" ] || ! cmp -s "$src" "$pristine"; then
    install -D -m 0644 "$src" "$pristine"
  fi
}

rules_edited() { # whether the installed rules differ from what this script last installed
  [ -f "$RULES" ] || return 1
  ! { [ -f "$SHARE/99-telematics.rules" ] && cmp -s "$RULES" "$SHARE/99-telematics.rules"; } &&
    ! cmp -s "$RULES" "$SRC/systemd/99-telematics.rules"
}

# -- Debian packages ------------------------------------------------------------------

APT_UPDATED=0

apt_get() { # ARGS...: apt-get, waiting while another apt holds a lock
  # At first boot apt-daily and unattended-upgrades hold the dpkg lock (which
  # DPkg::Lock::Timeout waits for) or the lists or archives lock (which it does
  # not: apt-get fails at once): retry on those for up to 5 minutes too.
  local err until=$((SECONDS + 300)) said=0
  while ! err=$(DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300 "$@" 2>&1 >/dev/null); do
    if [ "$SECONDS" -lt "$until" ] && grep -q '^E: Could not get lock' <<<"$err"; then
      [ "$said" = 1 ] || say "  waiting    for another apt-get (apt-daily, unattended-upgrades) to finish ..."
      said=1
      sleep 5
    else
      printf '%s\n' "$err" >&2
      return 1
    fi
  done
}

apt_install() { # PKG...
  # The lists of a fresh Pi image are stale (the mirrors 404 on them): update
  # once per run, and only when something is to be installed.
  if [ "$APT_UPDATED" = 0 ]; then
    say "  apt-get    update"
    apt_get update || say "  note       apt-get update failed (above): trying the package lists there are"
    APT_UPDATED=1
  fi
  say "  apt-get    install $*"
  apt_get install -y "$@" || die "apt-get install $* failed (above)"
}

# -- the venv -----------------------------------------------------------------------

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
minor_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

source_hash() {
  # What `pip install .` would install: the stamp changes when any of it does.
  (cd "$SRC" && find pyproject.toml README.md agent cloud_bridge simulators -type f \
    ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
    sha256sum | cut -c1-16
}

install_venv() {
  UPGRADED=0
  local extras="" minor want had
  [ "$BRIDGE" = 0 ] || extras="[bridge]"
  minor=$(minor_of "$PY")
  if [ -e "$VENV" ]; then
    had=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo broken)
    if [ "$had" != "$minor" ]; then
      rm -rf "$VENV"
      did removed "$VENV (built on Python $had, now $minor)"
    fi
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    did created "$VENV (Python $minor, $PY)"
  fi
  want="source $(source_hash) extras $extras python $minor"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    did unchanged "$VENV (this checkout is installed)"
    return
  fi
  # Build from a copy: pip builds in the source tree, which would leave build/
  # and egg-info in the checkout (and a stale build/lib can resurrect deleted modules).
  local stage pip_args=(--quiet --disable-pip-version-check --no-warn-script-location)
  stage=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: $stage is local
  trap "rm -rf '$stage'" EXIT
  tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - \
    pyproject.toml README.md agent cloud_bridge simulators | (mkdir "$stage/src" && tar -C "$stage/src" -xf -)
  if [ -n "$WHEELHOUSE" ]; then pip_args+=(--no-index --find-links "$WHEELHOUSE"); fi
  say "  pip        installing fleet-telematics-agent$extras into $VENV${WHEELHOUSE:+ (from $WHEELHOUSE only)} ..."
  "$VENV/bin/python" -m pip install "${pip_args[@]}" "$stage/src$extras" ||
    die "pip install failed (network? use --wheelhouse DIR for an offline install)"
  rm -rf "$stage"
  trap - EXIT
  # The unit sets PYTHONDONTWRITEBYTECODE (the venv is read-only to the agent):
  # compile everything now so no start pays for it.
  "$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null ||
    say "  note       compileall reported errors (in files the agent does not import, or it would not run)"
  printf '%s\n' "$want" >"$STAMP"
  UPGRADED=1
  did installed "$("$VENV/bin/python" -m pip --disable-pip-version-check list 2>/dev/null |
    awk '$1 == "fleet-telematics-agent" { print $1 " " $2 }') in $VENV"
}

link_cli() { # NAME: $LINKDIR/NAME -> the venv's console script
  local target=/opt/telematics/venv/bin/$1 link=$LINKDIR/$1
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
    did unchanged "$link -> $target"
  elif [ -e "$link" ] || [ -L "$link" ]; then
    did kept "$link (not ours; run $target)"
  else
    mkdir -p "$LINKDIR"
    ln -s "$target" "$link"
    did created "$link -> $target"
  fi
}

unlink_cli() { # NAME
  local link=$LINKDIR/$1
  if [ -L "$link" ] && [ "$(readlink "$link")" = "/opt/telematics/venv/bin/$1" ]; then
    rm -f "$link"
    did removed "$link"
  fi
}

# -- services ---------------------------------------------------------------------

# Per unit: whether to enable it (ENABLE: yes, the default; "no": not enabled,
# and disabled and stopped if it was, while its config is the example; "keep":
# left as it is, enabled or not, while its config fails `config check`), and
# why not to start it now (HOLD; "" = start it).
declare -A ENABLE=() HOLD=()

is_enabled() { "${SYSTEMCTL[@]}" -q is-enabled "$1" 2>/dev/null; }

set_enabled() { # UNIT: ENABLE[UNIT] applied; 1 if the unit is not to be started
  # Called as a condition, where set -e does not apply: fail explicitly.
  local unit=$1 out state
  case ${ENABLE[$unit]:-yes} in
    no)
      if is_enabled "$unit"; then
        local now=() stopped=""
        if [ "$SYSTEMD_UP" = 1 ]; then now=(--now) stopped=", stopped"; fi
        out=$("${SYSTEMCTL[@]}" -q disable ${now[@]+"${now[@]}"} "$unit" 2>&1) || die "systemctl disable $unit: $out"
        did disabled "$unit (it was enabled)$stopped: ${HOLD[$unit]}"
        return 1
      fi
      if [ "$SYSTEMD_UP" = 1 ]; then state=$(systemctl show -p ActiveState --value "$unit" 2>/dev/null || true); fi
      case ${state:-inactive} in
        inactive | failed) did skipped "enabling $unit: ${HOLD[$unit]}" ;;
        *) # started by hand, or restarting every 5 s
          out=$(systemctl stop "$unit" 2>&1) || die "systemctl stop $unit: $out"
          did stopped "$unit (it was $state): ${HOLD[$unit]}"
          ;;
      esac
      return 1
      ;;
    keep)
      if is_enabled "$unit"; then did kept "$unit enabled, not (re)started: ${HOLD[$unit]}"; else
        did skipped "enabling $unit: ${HOLD[$unit]}"
      fi
      return 1
      ;;
  esac
  if is_enabled "$unit"; then did unchanged "$unit enabled"; else
    out=$("${SYSTEMCTL[@]}" -q enable "$unit" 2>&1) || die "systemctl enable $unit: $out"
    did enabled "$unit"
  fi
}

enable_units() { # UNIT... ; CHANGED=1 when a unit file or the code changed
  local unit
  if [ "$SYSTEMD_UP" = 1 ]; then
    systemctl daemon-reload
    for unit in "$@"; do
      local was_active=0
      if systemctl -q is-active "$unit"; then was_active=1; fi
      set_enabled "$unit" || continue
      if [ "$NO_START" = 1 ]; then
        did skipped "starting $unit (--no-start)"
      elif [ -n "${HOLD[$unit]:-}" ]; then
        did skipped "starting $unit: ${HOLD[$unit]}"
      elif [ "$was_active" = 1 ] && [ "$CHANGED" = 0 ]; then
        did unchanged "$unit running"
      else
        local verb=start label=started why=""
        if [ "$was_active" = 1 ]; then verb=restart label=restarted why=" (new code or unit)"; fi
        # Type=notify: this waits for READY=1 or the failure.  A failure is
        # reported, not fatal: everything is installed, the unit retries every 5 s.
        if systemctl "$verb" "$unit"; then did "$label" "$unit$why"; else
          did FAILED "$verb $unit: journalctl -u $unit -b"
          START_FAILED=1
        fi
      fi
    done
  elif [ "$HAVE_SYSTEMCTL" = 1 ]; then
    # A --root tree or a chroot: enabling is only symlinks, which systemctl can
    # make offline; starting waits for the next boot.
    for unit in "$@"; do
      set_enabled "$unit" || true
    done
    did skipped "systemctl daemon-reload/start ($([ -n "$ROOT" ] && echo "--root" || echo "systemd is not running"); enabled units start at boot)"
  else
    did skipped "enabling $* (no systemctl here)"
  fi
}

reload_udev() {
  if [ "$SYSTEMD_UP" = 1 ] && command -v udevadm >/dev/null 2>&1; then
    udevadm control --reload
    udevadm trigger --subsystem-match=tty --subsystem-match=i2c-dev
    did reloaded "udev rules (tty, i2c-dev triggered)"
  else
    did skipped "udevadm control --reload && udevadm trigger ($([ -n "$ROOT" ] && echo "--root" || echo "no running udev")); the rules apply at boot"
  fi
}

# -- install --------------------------------------------------------------------------

do_install() {
  grep -qs '^name = "fleet-telematics-agent"' "$SRC/pyproject.toml" ||
    die "$SRC is not the fleet-telematics-agent checkout this script belongs to"
  if [ -z "$PY" ]; then
    if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=$(command -v python3 || true); fi
  fi
  [ -x "${PY:-/nonexistent}" ] || die "no Python at ${PY:-(python3 not found)}: apt-get install python3 python3-venv"
  python_ok "$PY" || die "$PY is Python $(minor_of "$PY" 2>/dev/null || echo '?'); the agent needs >= 3.11 (Debian 12 bookworm or later)"
  if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ -z "$ROOT" ] && [ "$PY" = /usr/bin/python3 ] && command -v apt-get >/dev/null 2>&1; then
      say "$PY cannot make a venv (Raspberry Pi OS Lite lacks python3-venv):"
      apt_install python3-venv
      "$PY" -c 'import venv, ensurepip' 2>/dev/null || die "$PY still cannot make a venv after apt-get install python3-venv"
    else
      die "$PY cannot make a venv: apt-get install python3-venv"
    fi
  fi
  [ -z "$WHEELHOUSE" ] || [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE: no such directory"
  if [ -f "$UNITDIR/telematics-bridge.service" ] && [ "$BRIDGE" = 0 ]; then
    BRIDGE=1
    say "(the bridge was installed before: keeping it; --uninstall removes everything)"
  fi

  say "Installing the telematics agent from $SRC${ROOT:+ into $ROOT}"
  say "users and groups:"
  seed_root_db
  ensure_group i2c # the unit's SupplementaryGroups=dialout i2c; plain Debian lacks i2c
  db_has group dialout || ensure_group dialout
  ensure_user telematics /var/lib/telematics "Fleet telematics agent"
  [ "$BRIDGE" = 0 ] || ensure_user telematics-bridge /var/lib/telematics-bridge "Fleet telematics bridge"
  local uid gid
  uid=$(id_of passwd telematics)
  gid=$(id_of group telematics)

  say "venv:"
  mkdir -p "$OPT"
  install_venv
  link_cli telematics-agent
  [ "$BRIDGE" = 0 ] || link_cli telematics-bridge

  say "configuration and state:"
  ensure_dir "$ETC" 0755 0 0 # ConfigurationDirectory=: root's, read-only to the agent
  # The config starts as the example; while it is still that (this version's,
  # or the one the last run installed, kept in $SHARE) the agent is not enabled:
  # it would fail on the example's certificate paths, or worse, once they exist,
  # run as the example's device id and bind the outbox to it.
  local example=$SRC/config/agent.example.toml pristine=$SHARE/agent.example.toml
  AGENT_TEMPLATE=1
  if [ ! -e "$ETC/agent.toml" ]; then
    install -m 0640 -o 0 -g "$gid" "$example" "$ETC/agent.toml"
    did installed "$ETC/agent.toml (the example: edit it)"
  elif cmp -s "$ETC/agent.toml" "$example"; then
    did kept "$ETC/agent.toml (still the example: edit it)"
  elif [ -f "$pristine" ] && cmp -s "$ETC/agent.toml" "$pristine"; then
    # Never edited: this version's example replaces the earlier one.
    install -m 0640 -o 0 -g "$gid" "$example" "$ETC/agent.toml"
    did updated "$ETC/agent.toml (the unedited example, now this version's: edit it)"
  else
    AGENT_TEMPLATE=0
    did kept "$ETC/agent.toml (never overwritten)"
  fi
  put_file "$example" "$pristine" 0644 0 0 || true
  if [ "$AGENT_TEMPLATE" = 1 ]; then
    ENABLE[telematics-agent.service]=no
    HOLD[telematics-agent.service]="$ETC/agent.toml is still the example"
  fi
  # Secrets: owned by the agent, 0600, or the agent refuses them (agent/config.py).
  local secret fresh=""
  if [ ! -e "$ETC/mqtt-password" ]; then
    install -m 0600 -o "$uid" -g "$gid" /dev/null "$ETC/mqtt-password"
    did created "$ETC/mqtt-password (empty, 0600 telematics)"
    fresh=$ETC/mqtt-password
  fi
  for secret in "$ETC/mqtt-password" "$ETC"/*.key; do
    if [ ! -f "$secret" ] || [ "$secret" = "$fresh" ]; then continue; fi
    if same_mode "$secret" 0600 "$uid" "$gid"; then did unchanged "$secret (0600 telematics)"; else
      chown "$uid:$gid" "$secret"
      chmod 0600 "$secret"
      did fixed "$secret -> 0600 telematics (the agent refuses a secret others can read)"
    fi
  done
  ensure_dir "$STATE" 0700 "$uid" "$gid" # StateDirectory=: the outbox
  if [ "$BRIDGE" = 1 ]; then
    local buid bgid
    buid=$(id_of passwd telematics-bridge)
    bgid=$(id_of group telematics-bridge)
    ensure_dir "$BR_ETC" 0755 0 0
    if [ -e "$BR_ETC/bridge.env" ]; then did kept "$BR_ETC/bridge.env"; else
      printf '%s\n' "# telematics-bridge.service reads this (docs/SYSTEMD.md, docs/BRIDGE.md)." \
        "#TELEMATICS_BRIDGE_DB=postgresql://bridge@db.internal/telematics" \
        "#TELEMATICS_BRIDGE_ARGS=--host broker.internal --port 8883 --ca /etc/telematics-bridge/ca.pem" |
        install -m 0640 -o 0 -g "$bgid" /dev/stdin "$BR_ETC/bridge.env"
      did installed "$BR_ETC/bridge.env (commented template)"
      HOLD[telematics-bridge.service]="edit $BR_ETC/bridge.env first"
    fi
    ensure_dir "$BR_STATE" 0700 "$buid" "$bgid"
  fi

  AGENT_CHECK_FAILED=0
  if [ -z "$ROOT" ] && [ "$AGENT_TEMPLATE" = 0 ]; then
    # As the unit will read it: as user telematics (a secret root can read but
    # the agent cannot is the classic first-boot failure).
    local verdict
    if verdict=$(setpriv --reuid="$uid" --regid="$gid" --clear-groups \
      "$VENV/bin/telematics-agent" config check "$ETC/agent.toml" 2>&1); then
      did checked "$verdict"
    else
      did FAILED "config check as user telematics: $verdict"
      AGENT_CHECK_FAILED=1
      ENABLE[telematics-agent.service]=keep
      HOLD[telematics-agent.service]="$ETC/agent.toml fails config check (above)"
    fi
  fi

  say "systemd and udev:"
  CHANGED=$UPGRADED
  local units=(telematics-agent.service) unit
  [ "$BRIDGE" = 0 ] || units+=(telematics-bridge.service)
  for unit in "${units[@]}"; do
    if put_file "$SRC/systemd/$unit" "$UNITDIR/$unit" 0644 0 0; then CHANGED=1; fi
  done
  install_rules
  [ "$RULES_CHANGED" = 0 ] || reload_udev
  enable_units "${units[@]}"

  if [ "$WITH_GPSD" = 1 ]; then
    say "gpsd:"
    if [ -n "$ROOT" ]; then
      did skipped "apt-get install gpsd (--root: install it inside the image)"
    elif dpkg-query -W -f '${Status}' gpsd 2>/dev/null | grep -q 'ok installed'; then
      did exists "gpsd (package)"
    else
      apt_install gpsd
      did installed "gpsd (package)"
    fi
    say "  note       to let gpsd own the receiver: DEVICES=\"/dev/gps0\" in /etc/default/gpsd,"
    say "             systemctl restart gpsd, and in agent.toml [gps] source = \"gpsd\" (port 2947)."
    say "             The agent and gpsd must not both open /dev/gps0.  gpsd's USB hotplug"
    say "             also takes the chips ELM327 clones use (PL2303, CP210x): with an OBD"
    say "             adapter fitted set USBAUTO=\"false\" there too."
  fi

  say ""
  if [ "$AGENT_TEMPLATE" = 1 ] || [ "$AGENT_CHECK_FAILED" = 1 ]; then
    local rerun="run $PROG again (same options)" starts=" and starts" passes=" and passes config check"
    local instead="systemctl enable --now telematics-agent" enabled=0
    if [ -n "$ROOT" ]; then
      rerun="run $PROG --root $ROOT again (same options)" starts="" passes=""
      instead="systemctl --root=$ROOT enable telematics-agent"
    elif [ "$SYSTEMD_UP" = 0 ]; then
      starts="" instead="systemctl enable telematics-agent"
    fi
    [ "$NO_START" = 0 ] || starts=""
    if [ "$AGENT_TEMPLATE" = 1 ]; then
      say "Installed, but the agent is NOT enabled: $ETC/agent.toml is still the example."
    elif is_enabled telematics-agent.service; then
      enabled=1
      say "Installed, but the agent is NOT (re)started: $ETC/agent.toml fails config check (above)."
      say "It stays enabled: it runs once the config is fixed (at the latest at boot)."
    else
      say "Installed, but the agent is NOT enabled: $ETC/agent.toml fails config check (above)."
    fi
    say "  1. edit $ETC/agent.toml: device.id; [gps] device (/dev/gps0 with the"
    say "     udev rules); [mqtt] host, username and [mqtt.tls] (CA, client cert; keys 0600"
    say "     owned by telematics); the MQTT password goes in /etc/telematics/mqtt-password"
    say "     with mqtt.password_file = \"/etc/telematics/mqtt-password\"."
    say "  2. telematics-agent check -c /etc/telematics/agent.toml${ROOT:+ (on the van: it probes the GPS and the broker)}"
    if [ "$enabled" = 1 ]; then
      say "  3. $rerun${starts:+, or systemctl restart telematics-agent}"
    else
      say "  3. $rerun: once the config is no longer"
      say "     the example$passes, it enables$starts the agent"
      say "     (or: $instead)."
    fi
  else
    say "Done.  Next:"
    say "  1. telematics-agent check -c /etc/telematics/agent.toml (probes the GPS and the broker)"
    if [ "$SYSTEMD_UP" = 1 ]; then
      say "  2. systemctl status telematics-agent; journalctl -u telematics-agent -f"
    else
      say "  2. boot the van; then systemctl status telematics-agent, journalctl -u telematics-agent"
    fi
  fi
  say "Re-run this script from a newer checkout to upgrade; the config is kept."
  if [ "$START_FAILED" = 1 ]; then
    say ""
    die "installed, but a unit failed to start (above): see its journal"
  fi
}

# -- uninstall ----------------------------------------------------------------------

do_uninstall() {
  say "Uninstalling the telematics agent${ROOT:+ from $ROOT}"
  local unit dir present=()
  for unit in "${UNITS[@]}"; do
    [ ! -f "$UNITDIR/$unit" ] || present+=("$unit")
  done
  say "systemd and udev:"
  for unit in ${present[@]+"${present[@]}"}; do
    if [ "$SYSTEMD_UP" = 1 ]; then
      systemctl -q disable --now "$unit" || true
      did stopped "$unit, disabled"
    elif [ "$HAVE_SYSTEMCTL" = 1 ]; then
      "${SYSTEMCTL[@]}" -q disable "$unit" >/dev/null 2>&1 || true
      did disabled "$unit"
    fi
    rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/$unit" "$UNITDIR/$unit"
    did removed "$UNITDIR/$unit"
  done
  [ "$SYSTEMD_UP" = 0 ] || systemctl daemon-reload
  if [ -f "$RULES" ] && rules_edited && [ "$PURGE" = 0 ]; then
    did kept "$RULES (edited; --purge removes it)"
  elif [ -f "$RULES" ]; then
    rm -f "$RULES"
    did removed "$RULES"
    reload_udev
  fi
  rm -f "$RULES.new"

  say "venv:"
  unlink_cli telematics-agent
  unlink_cli telematics-bridge
  if [ -e "$OPT" ]; then
    rm -rf "$OPT"
    did removed "$OPT"
  fi

  say "configuration, state and users:"
  if [ "$PURGE" = 1 ]; then
    for dir in "$ETC" "$STATE" "$BR_ETC" "$BR_STATE"; do
      if [ -e "$dir" ]; then
        rm -rf "$dir"
        did removed "$dir"
      fi
    done
    remove_user telematics
    remove_user telematics-bridge
    did kept "group i2c (other software may use it)"
  else
    local kept=()
    for dir in "$ETC" "$STATE" "$BR_ETC" "$BR_STATE"; do
      [ ! -e "$dir" ] || kept+=("$dir")
    done
    for dir in ${kept[@]+"${kept[@]}"}; do
      did kept "$dir"
    done
    local user
    for user in telematics telematics-bridge; do
      if db_has passwd "$user"; then did kept "user $user"; fi
    done
    did kept "group i2c"
    say "The outbox (unsent records) and the config are still there; --uninstall --purge removes them."
  fi
  [ "$WITH_GPSD" = 0 ] || say "gpsd is a Debian package: apt-get purge gpsd, if nothing else uses it."
  say "Done."
}

if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
