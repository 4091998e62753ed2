"""The phone's install script, runit service and Termux:Boot script, run for real in a fake Termux.

A Termux is a prefix (``$PREFIX``, /data/data/com.termux/files/usr) and a home; the
test makes both in a temporary directory and puts stand-ins first on PATH for what
only a phone has: ``pkg`` (apt for Termux), ``sv-enable`` (termux-services' own
script: remove ``down``, ``sv up``), ``sv`` (failing, as with no runsvdir running;
runit's own where a test runs runsvdir), ``termux-wake-lock``, ``termux-location`` and
``termux-battery-status`` (Termux:API), and ``python`` (so that the venv install step
does not fetch the agent's dependencies from the network: its pip notes what it was
given and writes a ``telematics-agent`` that runs this checkout's; FAKE_PYTHON_MINOR
plays a ``pkg upgrade`` of Python).  Everything else is real: bash and sh run the
scripts as shipped, the rendered run script starts the real agent, and where runit is
installed (apt-get install runit) a real runsvdir supervises the installed service as
termux-services' service-daemon does (with its pid file), with svlogd writing its log.
shellcheck lints the scripts where installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydantic_core
import pytest

from agent.config import load_config
from simulators.broker import free_port
from tests.support.termux_api import answer
from tests.support.tools import need_tool

REPO = Path(__file__).resolve().parents[2]
TERMUX = REPO / "termux"
INSTALL = TERMUX / "install.sh"
TEMPLATES = [
    TERMUX / "sv" / "telematics-agent" / "run",
    TERMUX / "sv" / "telematics-agent" / "finish",
    TERMUX / "sv" / "telematics-agent" / "log" / "run",
    TERMUX / "boot" / "start-telematics",
]
REAL_AGENT = Path(sys.executable).parent / "telematics-agent"
PY_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"

# What termux-location prints (format of termux-api LocationAPI.locationToJson; see
# tests/support/termux_api.py) and termux-battery-status (BatteryStatusAPI.java).
FIX = json.loads(answer())
BATTERY = {"health": "GOOD", "percentage": 64, "plugged": "PLUGGED_USB", "status": "CHARGING"}


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@dataclass
class Phone:
    """A fake Termux: prefix, home, stand-ins, and the log the stand-ins write."""

    root: Path
    prefix: Path
    home: Path
    stubs: Path
    log: Path

    @property
    def venv(self) -> Path:
        return self.home / ".local/share/telematics/venv"

    @property
    def config(self) -> Path:
        return self.home / ".config/telematics/agent.toml"

    @property
    def service(self) -> Path:
        return self.prefix / "var/service/telematics-agent"

    @property
    def boot(self) -> Path:
        return self.home / ".termux/boot/start-telematics"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "PREFIX": str(self.prefix),
            "PATH": f"{self.stubs}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **extra,
        }

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def install(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(INSTALL), *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def phone(tmp_path: Path) -> Phone:
    prefix, home, stubs = tmp_path / "usr", tmp_path / "home", tmp_path / "stubs"
    log = tmp_path / "calls.log"
    for d in (prefix / "bin", prefix / "etc/profile.d", home, stubs):
        d.mkdir(parents=True)
    # The shebang of every rendered script is $PREFIX/bin/sh, as on the phone.
    (prefix / "bin/sh").symlink_to("/bin/sh")
    # Termux's etc/profile sources etc/profile.d/*.sh; termux-services' start-services.sh
    # exports SVDIR and starts runsvdir (here: notes that it would).
    (prefix / "etc/profile").write_text(
        f'for i in {prefix}/etc/profile.d/*.sh; do\n  if [ -r "$i" ]; then . "$i"; fi\ndone\n'
    )
    (prefix / "etc/profile.d/start-services.sh").write_text(
        f'export SVDIR={prefix}/var/service\necho "start-services SVDIR=$SVDIR" >> {log}\n'
    )
    write_exe(
        stubs / "pkg",
        f'#!/bin/sh\necho "pkg $*" >> {log}\n'
        'case "$*" in *python-pydantic-core*) [ -n "$FAKE_NO_PYDANTIC_CORE" ] && '
        '{ echo "E: Unable to locate package python-pydantic-core"; exit 100; } ;; esac\n'
        "exit 0\n",
    )
    # termux-services' sv-enable, as it is: remove the down file, then "sv up"
    write_exe(
        stubs / "sv-enable",
        f'#!/bin/sh\necho "sv-enable $* SVDIR=$SVDIR" >> {log}\n'
        'if [ -z "$SVDIR" ]; then echo "Error: SVDIR not set" >&2; exit 1; fi\n'
        'rm -f "$SVDIR/$1/down"\n'
        'sv up "$1"\n',
    )
    write_exe(stubs / "sv", f'#!/bin/sh\necho "sv $*" >> {log}\nexit 1\n')
    write_exe(stubs / "termux-wake-lock", f'#!/bin/sh\necho "termux-wake-lock" >> {log}\n')
    # python -m venv makes a venv (bin/ and lib/python<minor>/) whose pip "installs" a
    # telematics-agent running this checkout's agent, and notes what it was given to
    # build: the source directory and its top-level entries.  FAKE_PYTHON_MINOR plays
    # pkg having upgraded Python (the minor version python reports and makes venvs
    # with); any other use of python is the real interpreter.
    pip = (
        "#!/bin/sh\n"
        f'echo "pip $* MSGPACK_PUREPYTHON=$MSGPACK_PUREPYTHON" >> {log}\n'
        'for last in "$@"; do :; done\n'
        f'echo "pip-source $(cd "$last" && ls -A | tr "\\n" " ")" >> {log}\n'
        'bin="$(dirname "$0")"\n'
        f'printf \'#!/bin/sh\\nexec {REAL_AGENT} "$@"\\n\' > "$bin/telematics-agent"\n'
        'chmod 755 "$bin/telematics-agent"\n'
    )
    real_minor = PY_MINOR
    write_exe(
        stubs / "python",
        "#!/bin/sh\n"
        f'minor="${{FAKE_PYTHON_MINOR:-{real_minor}}}"\n'
        'case "$*" in *sys.version_info*) echo "$minor"; exit 0 ;; esac\n'
        'if [ "$1" = -m ] && [ "$2" = venv ]; then\n'
        f'  echo "python $*" >> {log}\n'
        '  for last in "$@"; do :; done\n'
        '  mkdir -p "$last/bin" "$last/lib/python$minor/site-packages"\n'
        f'  printf \'#!/bin/sh\\nexec {sys.executable} "$@"\\n\' > "$last/bin/python"\n'
        f"  cat > \"$last/bin/pip\" <<'EOF'\n{pip}EOF\n"
        '  chmod 755 "$last/bin/python" "$last/bin/pip"\n'
        "  exit 0\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n',
    )
    # Termux:API: a location and a battery report on every call.
    write_exe(
        stubs / "termux-location",
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write('termux-location ' + ' '.join(sys.argv[1:]) + '\\n')\n"
        f"print(json.dumps({FIX!r}, indent=2))\n",
    )
    write_exe(
        stubs / "termux-battery-status",
        f"#!{sys.executable}\nimport json\nprint(json.dumps({BATTERY!r}, indent=2))\n",
    )
    return Phone(tmp_path, prefix, home, stubs, log)


@pytest.fixture
def installed(phone: Phone) -> Phone:
    done = phone.install("--device-id", "phone-017")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Installed." in done.stdout
    return phone


# -- the scripts as text -----------------------------------------------------------------


def render(template: Path, prefix: str = "/data/data/com.termux/files/usr") -> str:
    return (
        template.read_text()
        .replace("@TERMUX_PREFIX@", prefix)
        .replace(
            "@AGENT@",
            "/data/data/com.termux/files/home/.local/share/telematics/venv/bin/telematics-agent",
        )
        .replace("@CONFIG@", "/data/data/com.termux/files/home/.config/telematics/agent.toml")
    )


def test_scripts_parse(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    for template in TEMPLATES:
        out = tmp_path / template.name
        out.write_text(render(template))
        subprocess.run(["sh", "-n", str(out)], check=True)
        assert template.stat().st_mode & stat.S_IXUSR, f"{template} is not executable"
        assert template.read_text().startswith("#!@TERMUX_PREFIX@/bin/sh\n"), template


def test_shellcheck(tmp_path: Path) -> None:
    shellcheck = need_tool("shellcheck", "shellcheck")
    subprocess.run([shellcheck, str(INSTALL)], check=True)
    for template in TEMPLATES:
        out = tmp_path / template.name
        out.write_text(render(template))
        subprocess.run([shellcheck, "-s", "sh", str(out)], check=True)


# -- install.sh in a fake Termux ------------------------------------------------------------


def test_install_lays_out_what_termux_services_and_boot_expect(phone: Phone) -> None:
    p = phone
    done = p.install("--device-id", "phone-017")
    assert done.returncode == 0, done.stdout + done.stderr
    calls = p.calls()
    assert "pkg install -y python python-numpy termux-api termux-services" in calls
    assert "pkg install -y python-pydantic-core" in calls
    assert not any("rust" in c for c in calls)
    assert f"python -m venv --system-site-packages {p.venv}" in calls
    assert (p.venv / ".telematics-python").read_text() == f"{PY_MINOR}\n"
    constraints = p.home / ".local/share/telematics/constraints.txt"
    # pip builds a copy of the checkout, made in $PREFIX/tmp and removed afterwards
    pip = [c for c in calls if c.startswith("pip install")]
    m = re.fullmatch(
        rf"pip install --upgrade --constraint {re.escape(str(constraints))} "
        rf"({re.escape(str(p.prefix / 'tmp'))}/telematics-build\.\w+) MSGPACK_PUREPYTHON=1",
        pip[0],
    )
    assert m is not None and len(pip) == 1, pip
    assert not Path(m.group(1)).exists()
    source = calls[calls.index(pip[0]) + 1].split()
    assert source[0] == "pip-source"
    assert sorted(source[1:]) == [
        "README.md",
        "agent",
        "cloud_bridge",
        "pyproject.toml",
        "simulators",
    ]
    # pkg's pydantic-core pins the pydantic that pip chooses
    assert constraints.read_text() == f"pydantic-core=={pydantic_core.__version__}\n"

    # the config: new, private, this phone's paths and id, and valid
    assert stat.S_IMODE(p.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.config.parent.stat().st_mode) == 0o700
    cfg = load_config(p.config, environ={})
    assert cfg.device.id == "phone-017" and cfg.mqtt.username == "phone-017"
    assert cfg.gps.source == "termux" and cfg.imu.source == "termux" and cfg.obd.source == "none"
    assert cfg.clock.source == "system"
    assert cfg.buffer.path == p.home / ".local/share/telematics/outbox.sqlite"

    # the runit service, where termux-services' runsvdir looks ($SVDIR/<name>/run)
    agent = p.venv / "bin/telematics-agent"
    run = (p.service / "run").read_text()
    assert run.startswith(f"#!{p.prefix}/bin/sh\n")
    assert "exec 2>&1\n" in run
    assert f'exec "{agent}" run --config "{p.config}"' in run
    log_run = (p.service / "log/run").read_text()
    assert f'LOGDIR="{p.prefix}/var/log/sv/telematics-agent"' in log_run
    assert 'exec svlogd -tt "$LOGDIR"' in log_run
    for f in ("run", "finish", "log/run"):
        path = p.service / f
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, f
        assert not re.search(r"@[A-Z_]+@", path.read_text()), f"placeholder left in {f}"
    # enabled (--device-id: the config is this phone's); no runsvdir runs in this session
    assert not (p.service / "down").exists()
    assert not (p.home / ".local/share/telematics/service-held").exists()
    assert "runsvdir is not running in this session yet" in done.stderr
    assert "NOT started" not in done.stdout

    # the Termux:Boot script
    boot = p.boot.read_text()
    assert stat.S_IMODE(p.boot.stat().st_mode) == 0o700
    assert boot.startswith(f"#!{p.prefix}/bin/sh\n")
    lines = [ln for ln in boot.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["termux-wake-lock", f'. "{p.prefix}/etc/profile"']
    assert not list(p.service.glob("*.tmp.*")) and not list(p.config.parent.glob("*.tmp.*"))


def test_a_second_run_keeps_the_config_and_upgrades(installed: Phone) -> None:
    p = installed
    edited = p.config.read_text().replace(
        'host = "broker.example.com"', 'host = "mqtt.fleet.example"'
    )
    p.config.write_text(edited)
    again = p.install("--skip-packages")
    assert again.returncode == 0, again.stderr
    assert f"keeping the existing {p.config}" in again.stdout
    assert p.config.read_text() == edited
    assert sum(c.startswith("pip install") for c in p.calls()) == 2
    assert sum(c.startswith("pkg ") for c in p.calls()) == 2  # only the first run's


def test_without_pydantic_core_in_the_repository_rust_is_installed(phone: Phone) -> None:
    done = phone.install(FAKE_NO_PYDANTIC_CORE="1")
    assert done.returncode == 0, done.stderr
    assert "pkg install -y rust" in phone.calls()
    assert "pip will build pydantic-core" in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"PREFIX": ""}, "run this inside Termux"),
        (("--device-id", "bad id!"), {}, "--device-id 'bad id!'"),
        (("--frobnicate",), {}, "unknown option: --frobnicate"),
    ],
)
def test_install_refuses_clearly(
    phone: Phone, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    done = phone.install(*args, **env)
    assert done.returncode != 0 and message in done.stderr
    assert not phone.config.exists() and not phone.service.exists()


# -- running what was installed ---------------------------------------------------------------


def use_local_broker(p: Phone) -> int:
    """Point the installed config at a closed port on loopback (no traffic leaves the machine)."""
    port = free_port()
    text = p.config.read_text()
    text = text.replace('host = "broker.example.com"', 'host = "127.0.0.1"')
    text = text.replace("port = 8883", f"port = {port}")
    p.config.write_text(text)
    assert tomllib.loads(text)["mqtt"]["host"] == "127.0.0.1"
    return port


class Lines:
    """Read a pipe with deadlines, keeping everything read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.text = ""

    def until(self, pattern: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while re.search(pattern, self.text) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} within {timeout} s; output:\n{self.text}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                data = os.read(self.fd, 65536)
                assert data, f"output ended before {pattern!r}:\n{self.text}"
                self.text += data.decode(errors="replace")


def test_the_run_script_starts_the_agent(installed: Phone) -> None:
    p = installed
    use_local_broker(p)
    proc = subprocess.Popen(
        [str(p.service / "run")],
        cwd=p.service,
        env=p.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the script sends stderr to stdout itself
        start_new_session=True,
    )
    try:
        out = Lines(proc)
        out.until(r"agent \S+ starting: device phone-017")
        out.until(r"gps-termux: opened termux-location -p gps -r once")
        assert "termux-wake-lock" in p.calls()
        assert "termux-location -p gps -r once" in p.calls()
        proc.send_signal(signal.SIGTERM)  # the script exec'd the agent: this is the agent
        assert proc.wait(timeout=30) == 0
        out.until(r"agent stopped")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_finish_notes_a_configuration_error_and_returns_at_once(
    installed: Phone, tmp_path: Path
) -> None:
    """finish never waits: runsv does not signal it, so a wait there would block sv restart."""
    slept = tmp_path / "slept"
    write_exe(installed.stubs / "sleep", f'#!/bin/sh\necho "$*" > {slept}\n')
    finish, marker = installed.service / "finish", installed.service / "config-error"
    ok = subprocess.run(
        [str(finish), "0", "0"],
        cwd=installed.service,
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert ok.returncode == 0 and ok.stdout == "" and not marker.exists()
    bad = subprocess.run(
        [str(finish), "2", "0"],
        cwd=installed.service,
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert bad.returncode == 0 and "configuration error" in bad.stdout
    assert str(installed.config) in bad.stdout and "sv restart telematics-agent" in bad.stdout
    assert marker.exists() and not slept.exists()


def test_run_waits_after_a_configuration_error_until_sv_restart(
    installed: Phone, tmp_path: Path
) -> None:
    """With finish's note, run waits 60 s before the agent; SIGTERM (sv restart) ends it."""
    slept = tmp_path / "slept"
    # a sleep that says which process it is, then is the real one
    write_exe(installed.stubs / "sleep", f'#!/bin/sh\necho "$$ $*" > {slept}\nexec sleep "$@"\n')
    marker = installed.service / "config-error"
    marker.touch()
    proc = subprocess.Popen(
        [str(installed.service / "run")],
        cwd=installed.service,
        env=installed.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out = Lines(proc)
        out.until(r"waiting 60 s after the configuration error")
        deadline = time.monotonic() + 10
        while not (slept.exists() and slept.read_text().endswith(" 60\n")):
            assert time.monotonic() < deadline, "run did not start its wait"
            time.sleep(0.01)
        sleeper = int(slept.read_text().split()[0])
        assert not marker.exists()  # taken: the start after an interrupted wait is at once
        proc.send_signal(signal.SIGTERM)  # what runsv does on sv restart
        assert proc.wait(timeout=10) == 143
        deadline = time.monotonic() + 10
        while Path(f"/proc/{sleeper}").exists():
            assert time.monotonic() < deadline, "run's sleep outlived it"
            time.sleep(0.01)
        assert proc.stdout is not None
        out.text += proc.stdout.read().decode(errors="replace")  # to the end: both are gone
        assert "starting" not in out.text and "termux-wake-lock" not in installed.calls()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_boot_script_takes_the_wake_lock_then_starts_the_services(installed: Phone) -> None:
    p = installed
    before = len(p.calls())
    done = subprocess.run([str(p.boot)], env=p.env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert p.calls()[before:] == [
        "termux-wake-lock",
        f"start-services SVDIR={p.prefix}/var/service",
    ]


@contextlib.contextmanager
def running_runsvdir(p: Phone) -> Iterator[subprocess.Popen[bytes]]:
    """A real runsvdir on $PREFIX/var/service, as termux-services' service-daemon starts it.

    service-daemon (start-stop-daemon -m) notes its pid in $PREFIX/var/run/service-daemon.pid,
    where install.sh looks to know that runsvdir runs.
    """
    exe = need_tool("runsvdir", "runit")
    svdir = p.prefix / "var/service"
    svdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, str(svdir)],
        env=p.env(SVDIR=str(svdir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pidfile = p.prefix / "var/run/service-daemon.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{proc.pid}\n")
    try:
        yield proc
    finally:
        sv = p.service
        subprocess.run(
            ["sv", "-w", "15", "exit", str(sv / "log"), str(sv)], capture_output=True, check=False
        )
        for path in (sv / "supervise/pid", sv / "log/supervise/pid"):
            pid = path.read_text().strip() if path.exists() else ""
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def runsvdir(installed: Phone) -> Iterator[subprocess.Popen[bytes]]:
    """runsvdir over the installed service, its config on a closed loopback port first."""
    use_local_broker(installed)
    with running_runsvdir(installed) as proc:
        yield proc


def use_real_sv(p: Phone) -> None:
    """The installer's sv is runit's (logged), to talk to a real runsv."""
    sv = need_tool("sv", "runit")
    write_exe(p.stubs / "sv", f'#!/bin/sh\necho "sv $*" >> {p.log}\nexec {sv} "$@"\n')


def agent_log(p: Phone) -> str:
    current = p.prefix / "var/log/sv/telematics-agent/current"
    return current.read_text() if current.exists() else ""


def wait_for_log(p: Phone, pattern: str, count: int = 1, timeout: float = 30.0) -> str:
    """The agent's svlogd log once ``pattern`` occurs ``count`` times in it."""
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, text := agent_log(p))) < count:
        assert time.monotonic() < deadline, f"no {count} x {pattern!r} in the log:\n{text}"
        time.sleep(0.05)
    return text


def test_runsv_supervises_the_installed_service(installed: Phone, runsvdir: object) -> None:
    p = installed
    current = p.prefix / "var/log/sv/telematics-agent/current"
    deadline = time.monotonic() + 60
    while True:
        text = current.read_text() if current.exists() else ""
        if "starting: device phone-017" in text and "gps-termux: opened" in text:
            break
        assert time.monotonic() < deadline, f"the agent did not start under runsv; log:\n{text}"
        time.sleep(0.05)
    # svlogd -tt stamps each line with UTC: 2026-03-02_08:00:00.12345
    assert re.search(r"^\d{4}-\d\d-\d\d_\d\d:\d\d:\d\d\.\d+ ", text, re.M)
    status = subprocess.run(
        ["sv", "status", str(p.service)], capture_output=True, text=True, check=False
    ).stdout
    assert status.startswith("run: ") and "(pid " in status, status
    pid = int(re.search(r"\(pid (\d+)\)", status).group(1))  # type: ignore[union-attr]
    # runsv restarts it when it dies
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        status = subprocess.run(
            ["sv", "status", str(p.service)], capture_output=True, text=True, check=False
        ).stdout
        m = re.search(r"^run: .*\(pid (\d+)\)", status)
        if m and int(m.group(1)) != pid:
            break
        assert time.monotonic() < deadline, f"runsv did not restart the agent: {status}"
        time.sleep(0.05)
    # the agent under runsv asked the stand-in for locations, as on the phone
    assert "termux-location -p gps -r once" in p.calls()


def test_sv_restart_is_not_held_back_by_a_configuration_error(
    installed: Phone, runsvdir: object
) -> None:
    """After an exit 2 the next try waits a minute; a fixed config and sv restart start it now."""
    p = installed
    wait_for_log(p, r"starting: device phone-017")
    good = p.config.read_text()
    p.config.write_text(good + "\n[frobnicate]\nknob = 1\n")  # an unknown section: exit 2
    sv = need_tool("sv", "runit")
    subprocess.run([sv, "restart", str(p.service)], capture_output=True, check=False)
    wait_for_log(p, r"waiting 60 s after the configuration error")
    p.config.write_text(good)
    restarted = time.monotonic()
    subprocess.run([sv, "restart", str(p.service)], capture_output=True, check=False)
    text = wait_for_log(p, r"starting: device phone-017", count=2, timeout=20)
    assert time.monotonic() - restarted < 20  # not the minute finish used to sleep
    assert "configuration error (exit status 2)" in text
    assert not (p.service / "config-error").exists()


def test_install_waits_for_runsvdir_to_pick_up_the_new_service(phone: Phone) -> None:
    """runsvdir runs (this session's Termux started it) but sees a new service only within 5 s."""
    p = phone
    use_real_sv(p)
    # the phone's own config, written before the install (so it is not the template)
    p.config.parent.mkdir(parents=True)
    text = (REPO / "config/agent.termux.toml").read_text()
    text = text.replace("/data/data/com.termux/files/home", str(p.home))
    p.config.write_text(text.replace('id = "phone-001"', 'id = "phone-042"'))
    use_local_broker(p)
    with running_runsvdir(p):
        done = p.install("--skip-packages")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "runsvdir is not running" not in done.stderr
        assert "enabled and started telematics-agent" in done.stdout
        assert not (p.service / "down").exists()
        wait_for_log(p, r"starting: device phone-042")
        status = subprocess.run(
            [need_tool("sv", "runit"), "status", str(p.service)], capture_output=True, text=True
        ).stdout
        assert status.startswith("run: "), status


def test_without_a_device_id_the_template_is_not_started(phone: Phone) -> None:
    """The template's phone-001 would tie the outbox to that id: the service waits for the edit."""
    p = phone
    held = p.home / ".local/share/telematics/service-held"
    done = p.install()
    assert done.returncode == 0, done.stdout + done.stderr
    assert load_config(p.config, environ={}).device.id == "phone-001"
    assert (p.service / "down").exists() and held.exists()
    assert "NOT started" in done.stdout and "is still the template" in done.stdout
    assert "sv-enable telematics-agent" in done.stdout and "[device] id" in done.stdout
    assert "runsvdir is not running" not in done.stderr  # nothing was to be started
    assert not any(c.startswith("sv up") for c in p.calls())

    again = p.install("--skip-packages")  # untouched: still held
    assert again.returncode == 0 and (p.service / "down").exists()
    assert "NOT started" in again.stdout

    edited = p.config.read_text().replace('id = "phone-001"', 'id = "phone-018"')
    p.config.write_text(edited)
    third = p.install("--skip-packages")  # edited: now it starts (when runsvdir runs)
    assert third.returncode == 0, third.stderr
    assert not (p.service / "down").exists() and not held.exists()
    assert "NOT started" not in third.stdout
    assert p.config.read_text() == edited


def test_a_rerun_leaves_a_disabled_service_disabled(installed: Phone) -> None:
    p = installed
    (p.service / "down").touch()  # sv-disable telematics-agent
    again = p.install("--skip-packages")
    assert again.returncode == 0, again.stderr
    assert (p.service / "down").exists()
    assert "stays disabled" in again.stdout and "sv-enable telematics-agent" in again.stdout
    assert not any(c.startswith(("sv up", "sv-enable")) for c in p.calls())


def test_a_device_id_for_an_existing_config_is_reported_unused(installed: Phone) -> None:
    again = installed.install("--skip-packages", "--device-id", "phone-099")
    assert again.returncode == 0, again.stderr
    assert "--device-id phone-099 not used" in again.stderr
    assert load_config(installed.config, environ={}).device.id == "phone-017"


def test_a_new_python_minor_version_makes_the_venv_again(installed: Phone) -> None:
    """pkg upgrade moved Python 3.x to 9.99: the old venv's lib/python3.x is useless."""
    p = installed
    minor = PY_MINOR
    old = p.venv / f"lib/python{minor}/site-packages/left-behind"
    old.write_text("")

    def venvs() -> int:
        return sum(c.startswith("python -m venv") for c in p.calls())

    assert venvs() == 1

    upgraded = p.install("--skip-packages", FAKE_PYTHON_MINOR="9.99")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"it was made with Python {minor}, python is now 9.99" in upgraded.stdout
    assert venvs() == 2 and not old.exists()
    assert (p.venv / "lib/python9.99/site-packages").is_dir()
    assert (p.venv / ".telematics-python").read_text() == "9.99\n"
    assert (p.venv / "bin/telematics-agent").exists()

    same = p.install("--skip-packages", FAKE_PYTHON_MINOR="9.99")
    assert same.returncode == 0 and venvs() == 2  # the same version: kept

    # a venv made before the stamp existed: its lib/python<minor> tells
    (p.venv / ".telematics-python").unlink()
    kept = p.install("--skip-packages", FAKE_PYTHON_MINOR="9.99")
    assert kept.returncode == 0 and venvs() == 2
