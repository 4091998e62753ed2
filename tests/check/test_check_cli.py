"""Acceptance: ``telematics-agent check`` as an installer runs it, the real console script.

Every source real: the NMEA GPS simulator and the ELM327 simulator on
pseudo-terminals, mosquitto over TLS (certificates from tests/support/pki)
with a password login, the outbox on disk.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from simulators.broker import free_port
from tests.check.conftest import PASSWORD, Setup, agent_cli

GREEN = (
    "gps.port",
    "gps.nmea",
    "gps.fix",
    "obd.adapter",
    "obd.vehicle",
    "broker.dns",
    "broker.tcp",
    "broker.tls",
    "broker.login",
    "buffer.file",
    "buffer.disk",
)


def run_check(config: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [agent_cli(), "check", "--config", str(config), "--timeout", "15", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """CHECK -> (RESULT, DETAIL) from the table (the lines before the first blank one)."""
    lines = stdout.split("\n\n")[0].splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"], lines[0]
    start = lines[0].index("RESULT")
    detail = lines[0].index("DETAIL")
    out = {}
    for line in lines[1:]:
        out[line[:start].strip()] = (line[start:detail].strip(), line[detail:].strip())
    return out


def test_all_green_exits_0(good: Setup) -> None:
    done = run_check(good.write())
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    for check in GREEN:
        assert rows[check][0] == "PASS", (check, rows[check], done.stdout)
    assert rows["imu"][0] == "SKIP"
    assert rows["clock"][0] in ("PASS", "WARN")  # NTP on this machine or not: never a failure
    assert "ELM327" in rows["obd.adapter"][1]
    assert "VIN WDB9066331S123456" in rows["obd.vehicle"][1]
    assert "GP: RMC VTG GGA GSA GSV" in rows["gps.nmea"][1]
    assert rows["gps.fix"][1] == "3D fix, 9 satellites used (13 in view), HDOP 0.9"
    assert "login accepted as 'van-1'" in rows["broker.login"][1]
    assert "FIX: gps" not in done.stdout and "FIX: broker" not in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("ready: ")
    assert PASSWORD not in done.stdout + done.stderr


def test_json_and_a_red_row_exit_1(good: Setup) -> None:
    """Broker down (a free port, nothing listening): that row red, --json says so, exit 1."""
    config = good.with_("mqtt", port=free_port()).write()
    done = run_check(config, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == {"check", "ok", "required", "result", "detail", "fix", "data"}
    by = {r["check"]: r for r in rows}
    tcp = by["broker.tcp"]
    assert tcp["ok"] is False and tcp["required"] is True and tcp["result"] == "fail"
    assert "refused" in tcp["detail"]
    assert "mqtt.port" in tcp["fix"]
    assert by["broker.dns"]["ok"] is True
    assert by["broker.login"]["result"] == "skip"
    for check in ("gps.port", "gps.nmea", "gps.fix", "obd.adapter", "obd.vehicle", "buffer.file"):
        assert by[check]["result"] == "pass", by[check]
    assert by["imu"] == {
        "check": "imu",
        "ok": False,
        "required": False,
        "result": "skip",
        "detail": "not configured (imu.source = none)",
        "fix": None,
        "data": {},
    }
    assert by["gps.fix"]["data"]["sats_used"] == 9
    assert PASSWORD not in done.stdout


def test_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[device]\nid = "van-1"\n\n[gps]\nbaud = 1234\n')
    done = run_check(bad)
    assert done.returncode == 2
    assert "config error" in done.stderr and "gps.baud" in done.stderr
    assert done.stdout == ""
