"""Acceptance: ``telematics-agent status`` against the real agent, and its logs.

Every piece is the real program: the GPS simulator on a pty, the agent, a
real mosquitto (anonymous for the drive; with a password file for the log
test), the bridge storing in SQLite.  ``status`` is the installed console
script, run as an operator would.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.status import observe
from simulators.broker import Mosquitto, password_file, wait_for
from simulators.stack import Stack, command

pytestmark = pytest.mark.slow

PASSWORD = "Pw-4-status-test-9f3b"  # must appear in no log line and no status output


def run_status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("telematics-agent"), "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )


def status_json(config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = run_status(config, "--json", *extra)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def file_doc(outbox: Path) -> dict[str, Any]:
    """The status file as the agent wrote it last (empty before the first)."""
    return observe(outbox).doc or {}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack", scenario="urban_delivery", speed=10.0)
    try:
        yield s
    finally:
        s.stop()
        log = s.workdir / "agent.log"
        if log.exists():
            print("--- tail of agent.log:\n" + "\n".join(log.read_text().splitlines()[-20:]))


def test_status_follows_the_agent_through_an_outage_a_stop_and_a_kill(
    stack: Stack, figures: list[str]
) -> None:
    stack.start()
    config, outbox = stack.agent_config, stack.outbox_db

    # Running: a fix, and a publish the bridge really holds.
    def delivered() -> bool:
        up = file_doc(outbox).get("uplink") or {}
        seq = up.get("last_acked_seq")
        at_bridge = stack.bridge_seqs()
        return (
            seq is not None
            and seq in {q for _, q in at_bridge}
            and any(s == "telemetry" for s, _ in at_bridge)
        )

    wait_for(delivered, 30, "positions acknowledged and at the bridge", poll=0.2)
    done = run_status(config)
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.splitlines()
    assert re.match(r"van-demo: running, pid \d+, up [\d.]+ s \(version ", table[0]), table[0]
    assert stack.agent is not None and f"pid {stack.agent.popen.pid}," in table[0]
    gps = next(line for line in table if line.startswith("  gps "))
    assert gps.split()[1] == "fix", gps
    lat, lon = map(float, re.search(r"at (-?[\d.]+), (-?[\d.]+);", gps).groups())  # type: ignore[union-attr]
    uplink = next(line for line in table if line.startswith("  uplink "))
    assert uplink.split()[1] == "connected", uplink
    seq = int(re.search(r"last publish [\d.]+ s ago \(seq (\d+)\)", uplink)[1])  # type: ignore[index]
    assert seq in {q for _, q in stack.bridge_seqs()}  # the seq shown did reach the cloud
    assert re.search(r"  outbox  \d+ waiting", done.stdout), done.stdout
    assert table[-1] == "problems: none"

    code, got = status_json(config)
    assert (code, got["state"], got["running"]) == (0, "running", True)
    doc = got["status"]
    assert doc["device"] == "van-demo" and doc["sources"]["gps"]["state"] == "fix"
    assert doc["last_fix"]["age_s"] < 5
    # The position shown is where the van is: the bridge's latest position is at most the
    # telemetry hold behind (30 simulated s: a few hundred metres in town).
    last = stack._query(
        stack.bridge_db,
        "SELECT lat, lon FROM positions WHERE device = 'van-demo' ORDER BY ts DESC LIMIT 1",
    )[0]
    assert abs(last[0] - lat) < 0.02 and abs(last[1] - lon) < 0.02, (last, lat, lon)
    assert 0 <= doc["outbox"]["total"] <= stack.outbox_high_water()
    assert doc["uplink"]["connected"] and doc["uplink"]["reconnects"] == 0

    # The broker dies: not connected, and the backlog grows.
    port = stack.broker.port
    stack.broker.kill()
    wait_for(lambda: not file_doc(outbox)["uplink"]["connected"], 15, "agent sees the link down")
    wait_for(
        lambda: status_json(config, "--offline-after", "1")[0] == 1, 15, "status: degraded", 0.5
    )
    code, got = status_json(config, "--offline-after", "1")
    assert (code, got["state"]) == (1, "degraded"), got
    assert any(p.startswith(f"not connected to 127.0.0.1:{port} for ") for p in got["problems"])
    before = got["status"]["outbox"]["total"]
    wait_for(
        lambda: file_doc(outbox)["outbox"]["total"] > before + 5, 20, "backlog growing", poll=0.5
    )
    done = run_status(config, "--offline-after", "1")
    assert done.returncode == 1
    assert re.search(rf"  uplink  offline +127\.0\.0\.1:{port}, down ", done.stdout), done.stdout
    assert "problems:\n  - not connected to" in done.stdout

    # Stopped cleanly: exit 3, and the backlog read from the outbox itself.
    assert stack.agent.stop() == 0
    done = run_status(config)
    assert done.returncode == 3, done.stdout + done.stderr
    assert re.match(
        r"van-demo: agent not running \(last seen \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ, [\d.]+ s ago; "
        r"stopped cleanly\)",
        done.stdout,
    ), done.stdout
    left = stack.outbox_depth()
    assert left > before
    assert f"  outbox  {left} waiting" in done.stdout, done.stdout
    code, got = status_json(config)
    assert (code, got["state"], got["backlog"]["total"]) == (3, "not running", left)
    assert got["status"]["state"] == "stopped"

    # Killed (kill -9): the file still says running, the process is gone.
    stack.start_agent()
    agent = stack.agent
    assert agent is not None
    wait_for(
        lambda: file_doc(outbox).get("pid") == agent.popen.pid, 30, "the new agent's status", 0.2
    )
    assert status_json(config, "--offline-after", "600", "--backlog-after", "1e6")[0] == 0
    agent.send(signal.SIGKILL)
    agent.popen.wait(10)
    done = run_status(config)
    assert done.returncode == 3
    assert "it did not stop cleanly" in done.stdout.splitlines()[0], done.stdout
    figures.append(f"status live: running 0, broker down 1, stopped 3 with {left} records left")


class PasswordBroker(Mosquitto):
    """mosquitto on plain TCP (loopback) that admits only ``van-1`` with ``PASSWORD``."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        passwd = password_file(workdir / "passwd", {"van-1": PASSWORD})
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            "persistence false\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            f"listener {self.port} 127.0.0.1\n"
        )


def run_agent(config: Path, stderr: Path) -> subprocess.Popen[bytes]:
    """The agent with stderr on a file that ``$JOURNAL_STREAM`` names, as systemd does."""
    err = stderr.open("wb")
    st = os.fstat(err.fileno())
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "PYTHONUNBUFFERED": "1"}
    env.pop("TELEMATICS_LOG_FORMAT", None)
    try:
        return subprocess.Popen(
            [command("telematics-agent"), "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    finally:
        err.close()


def stop(agent: subprocess.Popen[bytes]) -> int:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    try:
        return agent.wait(20)
    except subprocess.TimeoutExpired:
        agent.kill()
        return agent.wait(5)


def test_debug_logs_on_the_journal_never_show_the_password(tmp_path: Path) -> None:
    broker = PasswordBroker(tmp_path / "broker").start()
    sim = Stack(tmp_path / "sim", speed=10.0)  # only its GPS simulator on a pty
    sim.start_sim()
    assert sim.pty is not None
    pw = tmp_path / "mqtt-password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    outbox = tmp_path / "outbox.sqlite"

    def config(host: str) -> Path:
        path = tmp_path / "agent.toml"
        path.write_text(
            '[device]\nid = "van-1"\n'
            f'[gps]\nsource = "serial"\ndevice = "{sim.pty}"\nrollover_floor = 2020-01-01\n'
            f'[buffer]\npath = "{outbox}"\ncommit_interval_s = 0.5\n'
            f'[mqtt]\nhost = "{host}"\nport = {broker.port}\nplaintext = true\n'
            f'username = "van-1"\npassword_file = "{pw}"\n'
            "backoff_min_s = 0.2\nbackoff_max_s = 1.0\ntelemetry_hold_s = 1\n"
            '[log]\nlevel = "DEBUG"\n'
        )
        return path

    agents: list[subprocess.Popen[bytes]] = []
    try:
        # 1. The right password, DEBUG logs: the broker admits the agent, records flow.
        cfg = config("127.0.0.1")
        err1 = tmp_path / "agent-1.stderr"
        agents.append(run_agent(cfg, err1))
        wait_for(
            lambda: (file_doc(outbox).get("uplink") or {}).get("last_acked_seq") is not None,
            30,
            "records acknowledged by the password broker",
            poll=0.2,
        )
        shown = run_status(cfg, "--json").stdout + run_status(cfg).stdout
        status_file = (tmp_path / "outbox.sqlite.status.json").read_text()
        assert stop(agents[0]) == 0
        text1 = err1.read_text()

        # 2. A host pasted with the credentials in it: the agent logs the host, masked.
        cfg = config(f"van-1:{PASSWORD}@127.0.0.1")
        err2 = tmp_path / "agent-2.stderr"
        agents.append(run_agent(cfg, err2))
        wait_for(lambda: "connect to van-1:" in err2.read_text(), 30, "the failure logged", 0.2)
        wait_for(
            lambda: "van-1:***@127.0.0.1" in str(file_doc(outbox).get("uplink")),
            10,
            "the status file with the masked host",
            poll=0.2,
        )
        shown += run_status(cfg, "--json").stdout
        status_file += (tmp_path / "outbox.sqlite.status.json").read_text()
        assert stop(agents[1]) == 0
        text2 = err2.read_text()
    finally:
        for agent in agents:
            stop(agent)
        if sim.sim is not None:
            sim.sim.stop()
        broker.stop()
        for name in ("agent-1.stderr", "agent-2.stderr"):
            if (tmp_path / name).exists():
                print(f"--- {name}:\n" + (tmp_path / name).read_text()[-3000:])

    for text in (text1, text2, shown, status_file):
        assert PASSWORD not in text
    # Journald's shape: a priority on every line, no timestamp (journald adds its own).
    lines = (text1 + text2).splitlines()
    assert lines and all(re.match(r"<[2-7]>\S+ [A-Z]+ ", line) for line in lines), lines[:5]
    assert "<6>agent.uplink INFO connected to 127.0.0.1:" in text1
    assert any(line.startswith("<7>") for line in lines)  # DEBUG was on
    failure = next(line for line in text2.splitlines() if "connect to van-1:" in line)
    assert failure.startswith(
        f"<4>agent.uplink WARNING connect to van-1:***@127.0.0.1:{broker.port} "
    )
