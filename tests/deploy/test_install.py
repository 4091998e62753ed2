"""scripts/install.sh into a clean directory tree; then the installed agent drives.

Issue 8's acceptance for the install script: ``install.sh --root DIR`` builds
the whole installation in an empty directory (users and groups in
DIR/etc/passwd through ``useradd --prefix``, the venv in DIR/opt/telematics,
config, units, udev rules) and leaves this machine's /etc alone; the agent
unit is enabled only once its config is no longer the example (an agent
enabled meanwhile is disabled again); a repeated run changes nothing (content,
mode, owner, mtime), keeps an edited config and udev rules; the agent from
DIR/opt/telematics/venv, run as the ``telematics`` user of DIR with the unit's
umask, takes a simulated drive from a pty through a real mosquitto to the
bridge; ``--uninstall`` keeps the outbox and config, ``--uninstall --purge``
removes them and the users.

The script runs from a copy of the checkout (what it installs is then fixed,
whatever else is being edited meanwhile) with ``--wheelhouse``: the wheels
are built once by ``pip wheel`` for the Python the venv is made from and kept
in .pytest_cache under a hash of the requirements, so later runs are offline.
useradd and chown need root (CI runs as root); elsewhere the test skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.broker import wait_for
from simulators.scenario import load_scenario
from simulators.stack import Stack, stop_group
from tests.support.tools import must_not_skip

REPO = Path(__file__).resolve().parents[2]
# What the script needs from the checkout: itself, what it installs, what pip builds.
SOURCE_PARTS = (
    "scripts/install.sh",
    "systemd",
    "config/agent.example.toml",
    "pyproject.toml",
    "README.md",
    "agent",
    "cloud_bridge",
    "simulators",
)
DEVICE = "van-installed"
SCENARIO = "urban_delivery"
SPEED = 10.0
MIN_POSITIONS = 40  # ~4 s of wall time at 10x once the agent has a fix
# This machine's side of the installation, which --root must never touch.
HOST_PATHS = (
    "/opt/telematics",
    "/etc/telematics",
    "/var/lib/telematics",
    "/etc/systemd/system/telematics-agent.service",
    "/etc/systemd/system/multi-user.target.wants/telematics-agent.service",
    "/etc/udev/rules.d/99-telematics.rules",
    "/usr/local/bin/telematics-agent",
)
OUR_NAMES = ("telematics", "telematics-bridge", "i2c")


@pytest.fixture(scope="module")
def as_root() -> None:
    if os.geteuid() != 0:
        why = "install.sh needs root (useradd --prefix, chown to the service users)"
        if must_not_skip():
            pytest.fail(f"{why}; CI must run this test as root")
        pytest.skip(f"{why}; run the tests as root (CI does)")
    if shutil.which("useradd") is None:
        pytest.fail("useradd not found (Debian package passwd)")


def venv_python() -> str:
    """The Python install.sh builds the venv on by default; passed to it explicitly."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    found = shutil.which("python3")
    assert found, "no python3 on PATH"
    return found


@pytest.fixture(scope="module")
def wheelhouse(
    as_root: None, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Wheels of the build requirements, dependencies and [bridge] extras, for ``venv_python``."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    reqs = [
        *meta["build-system"]["requires"],
        *meta["project"]["dependencies"],
        *meta["project"]["optional-dependencies"]["bridge"],
    ]
    py = venv_python()
    tag = subprocess.run(
        [py, "-c", "import sys, sysconfig; print(sys.version_info[:2], sysconfig.get_platform())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    key = hashlib.sha256(json.dumps([reqs, tag]).encode()).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None:
        home = Path(cache.mkdir("install-wheelhouse")) / key
    else:
        home = tmp_path_factory.mktemp("wheelhouse") / key
    if (home / ".complete").exists():
        return home
    build = home.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    # pip --python: resolve and pick wheels for the venv's Python, not this one.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "wheel", "-q", "-w", str(build), *reqs],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (build / ".complete").write_text("\n".join(reqs) + "\n")
    if home.exists() and not (home / ".complete").exists():
        shutil.rmtree(home)  # an interrupted build
    try:
        build.rename(home)
    except OSError:  # another session got there first: keep its (identical) wheels
        shutil.rmtree(build, ignore_errors=True)
    assert (home / ".complete").exists(), f"no wheelhouse at {home}"
    return home


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the service user can traverse (pytest's own tmp root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="telematics-install-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def source(base: Path) -> Path:
    """A copy of the checkout's parts the script uses."""
    src = base / "src"
    for part in SOURCE_PARTS:
        origin = REPO / part
        if origin.is_dir():
            shutil.copytree(
                origin, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            (src / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, src / part)
    return src


# -- helpers -------------------------------------------------------------------------


def install(src: Path, *args: str) -> tuple[str, float]:
    """Run the copied install.sh; its output and how long it took."""
    began = time.monotonic()
    done = subprocess.run(
        [str(src / "scripts" / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    took = time.monotonic() - began
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"install.sh {' '.join(args)} exited {done.returncode}:\n{out}"
    return out, took


def entries(root: Path, db: str) -> dict[str, list[str]]:
    """DIR/etc/passwd or group, by name."""
    path = root / "etc" / db
    if not path.exists():
        return {}
    rows = [line.split(":") for line in path.read_text().splitlines() if line]
    return {row[0]: row for row in rows}


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path in the tree: type, mode, owner, size, mtime; content hash outside the venv."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            detail: object = None
            if path.is_symlink():
                detail = os.readlink(path)
            elif path.is_file() and not rel.startswith("opt/telematics/venv/"):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, detail)
    return seen


def host_state() -> dict[str, object]:
    """This machine's paths and users that an install would create or change."""
    state: dict[str, object] = {}
    for name in HOST_PATHS:
        path = Path(name)
        st = path.lstat() if path.is_symlink() or path.exists() else None
        state[name] = None if st is None else (st.st_mtime_ns, st.st_size)
    for db in ("passwd", "group"):  # other users may come and go meanwhile: only ours
        rows = entries(Path("/"), db)
        state[db] = sorted(":".join(rows[name]) for name in OUR_NAMES if name in rows)
    return state


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the bridge has not created its tables yet
    finally:
        con.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the test ------------------------------------------------------------------------


def test_install_refuses_without_root_and_bad_arguments(base: Path, source: Path) -> None:
    script = str(source / "scripts" / "install.sh")
    # As root, the test drops to nobody for this one run.
    nobody = os.geteuid() == 0
    done = subprocess.run(
        [script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        user=65534 if nobody else None,
        group=65534 if nobody else None,
        extra_groups=[] if nobody else None,
    )
    assert done.returncode == 1
    assert "must be run as root" in done.stderr
    done = subprocess.run([script, "--purge"], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr.strip()) == (
        1,
        "install.sh: --purge goes with --uninstall",
    )
    done = subprocess.run([script, "--frobnicate"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "unknown argument --frobnicate" in done.stderr
    assert not (base / "opt").exists()  # nothing was done


@pytest.mark.slow
def test_install_into_a_clean_tree_drive_and_uninstall(
    base: Path, source: Path, wheelhouse: Path, figures: list[str]
) -> None:
    root = base / "root"
    args = ["--root", str(root), "--bridge", "--wheelhouse", str(wheelhouse)]
    args += ["--python", venv_python()]
    host_before = host_state()

    # -- first run: the whole installation, in root only ------------------------------
    out, first_s = install(source, *args)
    venv = root / "opt/telematics/venv"
    agent_exe = venv / "bin/telematics-agent"
    assert os.access(agent_exe, os.X_OK), out
    assert os.access(venv / "bin/telematics-bridge", os.X_OK)
    # The [bridge] extras are in, and the code is the copied checkout's.
    done = subprocess.run(
        [str(venv / "bin/python"), "-c", "import fastapi, psycopg, agent; print(agent.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # not the checkout: python -c puts the working directory on sys.path
    )
    assert done.stdout.startswith(str(venv / "lib")), done.stdout
    version = subprocess.run(
        [str(agent_exe), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.startswith("telematics-agent "), version

    passwd, group = entries(root, "passwd"), entries(root, "group")
    assert passwd["root"][2] == "0"  # seeded from base-passwd, as debootstrap does
    agent_user, bridge_user = passwd["telematics"], passwd["telematics-bridge"]
    assert agent_user[5:] == ["/var/lib/telematics", "/usr/sbin/nologin"]
    assert bridge_user[5:] == ["/var/lib/telematics-bridge", "/usr/sbin/nologin"]
    uid, gid = int(agent_user[2]), int(agent_user[3])
    assert 0 < uid < 1000 and group["telematics"][2] == str(gid)  # a system user
    assert {"i2c", "dialout"} <= group.keys()  # the unit's SupplementaryGroups=

    etc = root / "etc/telematics"
    config = etc / "agent.toml"
    assert config.read_bytes() == (REPO / "config/agent.example.toml").read_bytes()
    st = config.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, gid)
    st = (etc / "mqtt-password").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, uid)
    st = (root / "var/lib/telematics").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, uid)
    units = root / "etc/systemd/system"
    for unit in ("telematics-agent.service", "telematics-bridge.service"):
        assert (units / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
        assert (units / unit).stat().st_mode & 0o777 == 0o644
    # The bridge is enabled offline (systemctl --root); the agent is not while its
    # config is the example: at boot it would fail, or run as the example's van.
    agent_wants = units / "multi-user.target.wants/telematics-agent.service"
    if shutil.which("systemctl"):
        wants = units / "multi-user.target.wants/telematics-bridge.service"
        assert os.readlink(wants) == "/etc/systemd/system/telematics-bridge.service"
    assert not agent_wants.is_symlink(), out
    assert f"the agent is NOT enabled: {config} is still the example" in " ".join(out.split())
    rules = root / "etc/udev/rules.d/99-telematics.rules"
    assert rules.read_bytes() == (REPO / "systemd/99-telematics.rules").read_bytes()
    assert os.readlink(root / "usr/local/bin/telematics-agent") == (
        "/opt/telematics/venv/bin/telematics-agent"
    )
    assert "telematics-agent check -c /etc/telematics/agent.toml" in out
    assert host_state() == host_before, "install.sh --root touched this machine"

    # -- still the example: an agent enabled meanwhile is disabled again -------------------
    # As after an upgrade from a version whose example differed, and whose
    # install.sh enabled the agent whatever its config.
    example = config.read_text()
    pristine = root / "opt/telematics/share/agent.example.toml"
    assert pristine.read_text() == example
    older = example.replace("# Fleet telematics agent", "# Telematics agent", 1)
    assert older != example
    for path in (config, pristine):
        path.write_text(older)
    if shutil.which("systemctl"):
        agent_wants.symlink_to("/etc/systemd/system/telematics-agent.service")
    out, _ = install(source, *args)
    said = " ".join(out.split())
    assert config.read_text() == example, "the unedited example is this version's"
    assert pristine.read_text() == example
    assert (config.stat().st_mode & 0o777, config.stat().st_gid) == (0o640, gid)
    assert f"updated {config} (the unedited example" in said
    assert not agent_wants.is_symlink(), out
    if shutil.which("systemctl"):
        assert "disabled telematics-agent.service (it was enabled)" in said, out
    before = snapshot(root)
    out, _ = install(source, *args)
    after = snapshot(root)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == [], f"a run on the unedited example changed {changed}\n{out}"
    assert f"kept {config} (still the example: edit it)" in " ".join(out.split())
    assert "skipped enabling telematics-agent.service" in " ".join(out.split())

    # -- the config edited: the agent is enabled; the installer's edits stay -------------
    config.write_text(config.read_text().replace('id = "van-042"', 'id = "van-007"'))
    with rules.open("a") as f:  # a pinned GPS, as section 1 of the file invites
        f.write('ENV{ID_SERIAL_SHORT}=="0123456789", ENV{TELEMATICS_ROLE}="gps"\n')
    out, _ = install(source, *args)
    said = " ".join(out.split())
    assert f"kept {config} (never overwritten)" in said
    if shutil.which("systemctl"):
        assert "enabled telematics-agent.service" in said, out
        assert os.readlink(agent_wants) == "/etc/systemd/system/telematics-agent.service"
    assert "NOT enabled" not in said
    assert not rules.with_name(rules.name + ".new").exists()
    assert 'id = "van-007"' in config.read_text()

    # -- and once more: nothing changes ---------------------------------------------------
    before = snapshot(root)
    out, second_s = install(source, *args)
    after = snapshot(root)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == [], f"a second run changed {changed}\n{out}"
    assert f"kept {config} (never overwritten)" in " ".join(out.split())
    if shutil.which("systemctl"):
        assert "unchanged telematics-agent.service enabled" in " ".join(out.split())

    # -- the installed agent drives, as the unit runs it ----------------------------------
    positions, outbox_seq = drive(base, root, uid, gid)
    route = load_scenario(SCENARIO).route.waypoints
    lat_lo, lat_hi = min(w.lat for w in route) - 0.005, max(w.lat for w in route) + 0.005
    lon_lo, lon_hi = min(w.lon for w in route) - 0.005, max(w.lon for w in route) + 0.005
    assert len(positions) >= MIN_POSITIONS
    for lat, lon, _speed in positions:
        assert lat_lo <= float(lat) <= lat_hi and lon_lo <= float(lon) <= lon_hi, (lat, lon)
    assert max(float(s or 0) for _, _, s in positions) > 10.0  # km/h: it drove, not parked
    assert len({(la, lo) for la, lo, _ in positions}) > MIN_POSITIONS // 2
    assert outbox_seq >= len(positions)
    outbox = root / "var/lib/telematics/outbox.sqlite"
    st = outbox.stat()
    assert (st.st_uid, st.st_mode & 0o077) == (uid, 0), "the outbox is the agent's, private"
    outbox_hash = sha256(outbox)
    config_text = config.read_text()

    # -- uninstall keeps the outbox and the config; --purge does not ----------------------
    out, _ = install(source, "--root", str(root), "--uninstall")
    for gone in (
        "opt/telematics",
        "usr/local/bin/telematics-agent",
        "etc/systemd/system/telematics-agent.service",
        "etc/systemd/system/telematics-bridge.service",
        "etc/systemd/system/multi-user.target.wants/telematics-agent.service",
    ):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert rules.exists(), "edited udev rules are kept without --purge"
    assert sha256(outbox) == outbox_hash
    assert config.read_text() == config_text
    assert {"telematics", "telematics-bridge"} <= entries(root, "passwd").keys()
    install(source, "--root", str(root), "--uninstall")  # again: nothing left to do, no error

    out, _ = install(source, "--root", str(root), "--uninstall", "--purge")
    for gone in (
        "etc/telematics",
        "var/lib/telematics",
        "etc/telematics-bridge",
        "etc/udev/rules.d/99-telematics.rules",
    ):
        assert not (root / gone).exists(), gone
    assert not {"telematics", "telematics-bridge"} & entries(root, "passwd").keys()
    assert not {"telematics", "telematics-bridge"} & entries(root, "group").keys()
    assert "i2c" in entries(root, "group")  # maybe not only ours: kept
    assert host_state() == host_before, "install.sh --root touched this machine"
    figures.append(
        f"install.sh --root (agent + bridge, wheelhouse): first run {first_s:.1f} s, "
        f"second {second_s:.2f} s (no change); installed agent as user telematics: "
        f"{len(positions)} positions at the bridge"
    )


def drive(base: Path, root: Path, uid: int, gid: int) -> tuple[list[tuple[Any, ...]], int]:
    """GPS simulator on a pty -> the installed agent -> mosquitto -> bridge.

    The agent runs from DIR/opt/telematics/venv with DIR/etc/telematics/agent.toml
    as the unit runs it: user and group telematics, no supplementary groups,
    umask 0077, the unit's environment.  Returns the bridge's positions of the
    device and the outbox's high-water seq.
    """
    stack = Stack(base / "stack", scenario=SCENARIO, speed=SPEED, device=DEVICE)
    config = root / "etc/telematics/agent.toml"
    outbox = root / "var/lib/telematics/outbox.sqlite"
    log = base / "agent.log"
    agent: subprocess.Popen[bytes] | None = None
    try:
        stack.start_broker()
        stack.start_bridge()
        stack.start_sim()
        assert stack.pty is not None
        os.chown(stack.pty, uid, -1)  # udev gives /dev/gps0 to dialout; here, the user
        (root / "etc/telematics/mqtt-password").write_text("secret\n")  # read as telematics
        config.write_text(
            f'[device]\nid = "{DEVICE}"\n\n'
            f'[gps]\nsource = "serial"\ndevice = "{stack.pty}"\nbaud = 9600\n'
            "rollover_floor = 2020-01-01\n\n"
            f'[buffer]\npath = "{outbox}"\ncommit_interval_s = 0.5\n\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {stack.broker.port}\nusername = "{DEVICE}"\n'
            f'password_file = "{root}/etc/telematics/mqtt-password"\n'
            "backoff_min_s = 0.5\nbackoff_max_s = 4.0\ntelemetry_hold_s = 1.0\n\n"
            '[log]\nlevel = "INFO"\n'
        )
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(root / "var/lib/telematics"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        with log.open("wb") as out:
            agent = subprocess.Popen(
                [str(root / "opt/telematics/venv/bin/telematics-agent"), "run", "-c", str(config)],
                user=uid,
                group=gid,
                extra_groups=[],
                umask=0o077,
                env=env,
                cwd="/",
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def positions() -> list[tuple[Any, ...]]:
            return query(
                stack.bridge_db, "SELECT lat, lon, speed FROM positions WHERE device = ?", DEVICE
            )

        running = agent
        wait_for(
            lambda: len(positions()) >= MIN_POSITIONS or running.poll() is not None,
            90,
            f"{MIN_POSITIONS} positions of {DEVICE} at the bridge",
            poll=0.2,
        )
        assert agent.poll() is None, f"the installed agent exited:\n{log.read_text()[-3000:]}"
        code = stop_group(agent, signal.SIGTERM)
        assert code == 0, f"agent exit {code}:\n{log.read_text()[-3000:]}"
        found = positions()
        events = dict(
            query(
                stack.bridge_db,
                "SELECT type, COUNT(*) FROM events WHERE device = ? GROUP BY type",
                DEVICE,
            )
        )
        assert events.get("agent_started") == 1, events
        assert query(stack.bridge_db, "SELECT reason, COUNT(*) FROM rejects GROUP BY reason") == []
        high = query(outbox, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        return found, int(high[0][0]) if high else 0
    except BaseException:
        if log.exists():
            print("--- tail of the installed agent's log:\n" + log.read_text()[-3000:])
        raise
    finally:
        if agent is not None and agent.poll() is None:
            stop_group(agent, signal.SIGKILL)
        stack.stop()


# -- without --root: the running system's paths, in a private mount namespace --------

# The running system's paths the script writes, each bound to a directory of the
# test's own: inside the namespace they are the real /etc, /opt, ... to the script
# (getent, the config check as user telematics, no --prefix), outside untouched.
# /run/systemd is hidden so systemctl works offline, as in a chroot: it must not
# reach the host's systemd.
NAMESPACE = """
set -euo pipefail
for pair in etc:/etc opt:/opt varlib:/var/lib bin:/usr/local/bin; do
  mount --bind "$BASE/${pair%%:*}" "${pair#*:}"
done
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi
cmp -s "$BASE/etc/.telematics-test" /etc/.telematics-test  # the copy, or stop here
exec "$@"
"""


def in_namespace(base: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", NAMESPACE, "ns", *argv],
        env={**os.environ, "BASE": str(base), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{out}"
    return out


# apt-get and dpkg-query for --with-gpsd: apt-get logs how it was called, fails
# its first `update` as apt-get does while apt-daily holds the lists lock (which
# DPkg::Lock::Timeout does not wait for), and `install` makes gpsd "installed".
FAKE_APT_GET = """#!/bin/bash
printf '%s|%s\\n' "${DEBIAN_FRONTEND:-}" "$*" >>"$FAKE_APT/log"
case " $* " in
  *" update "*)
    if [ ! -e "$FAKE_APT/lists-locked" ]; then
      touch "$FAKE_APT/lists-locked"
      echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2
      echo "E: Unable to lock directory /var/lib/apt/lists/" >&2
      exit 100
    fi ;;
  *" install "*) touch "$FAKE_APT/gpsd" ;;
esac
"""
FAKE_DPKG_QUERY = """#!/bin/bash
[ -e "$FAKE_APT/gpsd" ] && printf 'install ok installed'
"""


@pytest.mark.slow
def test_install_without_root_option_in_a_mount_namespace(
    base: Path, source: Path, wheelhouse: Path, figures: list[str], tmp_path: Path
) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare not found (Debian package util-linux)")
    host_before = host_state()
    subprocess.run(["cp", "-a", "/etc", str(base / "etc")], check=True)
    (base / "etc/.telematics-test").write_text(str(base))
    for name in ("opt", "varlib", "bin"):
        (base / name).mkdir()
    fake = tmp_path / "fake-apt"
    (fake / "bin").mkdir(parents=True)
    for name, text in (("apt-get", FAKE_APT_GET), ("dpkg-query", FAKE_DPKG_QUERY)):
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    env = {"PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE_APT": str(fake)}
    script = str(source / "scripts/install.sh")
    args = (script, "--wheelhouse", str(wheelhouse), "--python", venv_python(), "--with-gpsd")

    def apt_calls() -> list[str]:
        log = fake / "log"
        return log.read_text().splitlines() if log.exists() else []

    def run(*argv: str) -> str:
        return in_namespace(base, *argv, env=env)

    began = time.monotonic()
    out = run(*args)
    took = time.monotonic() - began
    users = entries(base, "passwd")
    assert users["telematics"][5:] == ["/var/lib/telematics", "/usr/sbin/nologin"], out
    uid, gid = int(users["telematics"][2]), int(users["telematics"][3])
    # Real paths: the console script's interpreter is /opt/telematics/venv's.
    agent_exe = base / "opt/telematics/venv/bin/telematics-agent"
    assert agent_exe.read_text().splitlines()[0].startswith("#!/opt/telematics/venv/bin/python")
    st = (base / "varlib/telematics").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o700)
    assert (base / "etc/systemd/system/telematics-agent.service").is_file()
    assert "systemd is not running" in out
    # gpsd: the package lists refreshed once (after waiting out the lock), then installed.
    lock = "noninteractive|-qq -o DPkg::Lock::Timeout=300"
    assert apt_calls() == [f"{lock} update", f"{lock} update", f"{lock} install -y gpsd"], out
    assert "waiting for another apt-get" in " ".join(out.split())

    # The config is the example: the agent is not enabled, and says what to do.
    wants = base / "etc/systemd/system/multi-user.target.wants/telematics-agent.service"
    said = " ".join(out.split())
    assert not wants.is_symlink(), out
    assert "the agent is NOT enabled: /etc/telematics/agent.toml is still the example" in said
    assert "telematics-agent check -c /etc/telematics/agent.toml" in said
    assert "systemctl enable telematics-agent" in said

    # Edited, but it fails `config check` (the example's TLS files are not there):
    # still not enabled, and why.
    config = base / "etc/telematics/agent.toml"
    config.write_text(config.read_text().replace('id = "van-042"', 'id = "van-ns"'))
    said = " ".join(run(*args).split())
    assert "FAILED config check as user telematics" in said and "ca.crt" in said, said
    assert "skipped enabling telematics-agent.service" in said
    assert "the agent is NOT enabled: /etc/telematics/agent.toml fails config check" in said
    assert not wants.is_symlink()
    assert len(apt_calls()) == 3, "gpsd is installed: no apt-get, no update"

    # The installer's own config, and a password file copied in with mode 0644: the
    # script makes the secret the agent's, checks the config as the agent would,
    # and enables the agent.
    config.write_text(
        '[device]\nid = "van-ns"\n\n[gps]\nsource = "tcp"\nport = 10110\n\n'
        '[mqtt]\nhost = "127.0.0.1"\nusername = "van-ns"\n'
        'password_file = "/etc/telematics/mqtt-password"\n'
    )
    password = base / "etc/telematics/mqtt-password"
    password.write_text("secret\n")
    os.chown(password, 0, 0)
    password.chmod(0o644)
    out = " ".join(run(*args).split())
    assert "fixed /etc/telematics/mqtt-password -> 0600 telematics" in out
    st = password.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o600)
    assert "checked /etc/telematics/agent.toml: ok: device van-ns" in out, out
    if shutil.which("systemctl"):
        assert "enabled telematics-agent.service" in out, out
        assert os.readlink(wants) == "/etc/systemd/system/telematics-agent.service"
    assert "NOT enabled" not in out

    before = snapshot(base)
    out = run(*args)
    after = snapshot(base)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == [], f"a second run changed {changed}\n{out}"
    version = in_namespace(base, "/usr/local/bin/telematics-agent", "--version")
    assert version.startswith("telematics-agent ")

    assert len(apt_calls()) == 3
    out = run(script, "--uninstall", "--purge")
    assert "telematics" not in entries(base, "passwd"), out
    for gone in ("opt/telematics", "etc/telematics", "varlib/telematics", "bin/telematics-agent"):
        assert not (base / gone).exists() and not (base / gone).is_symlink(), gone
    assert host_state() == host_before, "the namespace leaked: this machine was touched"
    figures.append(f"install.sh on / (private mount namespace, agent only): first run {took:.1f} s")
