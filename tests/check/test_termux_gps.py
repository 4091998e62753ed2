"""The installer's check on a phone (gps.source = "termux"), against a stand-in termux-location.

termux-location needs Android and the Termux:API app, so an executable of that name
first on PATH prints what the real one prints (formats: termux-api LocationAPI.java and
TermuxApiPermissionActivity.java; see tests/gps/test_termux_source.py) or hangs as it
does indoors.  The probe, the source and the rows are the agent's real code.
"""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

from agent.check.gps import probe_gps
from agent.check.report import Row
from agent.config import GpsConfig
from tests.support.termux_api import answer

FIX = answer()
MOCKED = answer(mocked=True)
PERMISSION = (
    '{\n  "error": "Please grant the following permission to use this command: '
    'android.permission.ACCESS_FINE_LOCATION"\n}\n'
)


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None) -> None:
    """PATH with only a termux-location running ``body`` (none at all when ``body`` is None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    if body is None:
        return
    exe = bin_dir / "termux-location"
    exe.write_text(f"#!{sys.executable}\n{body}")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def prints(text: str) -> str:
    return f"import sys\nsys.stdout.write({text!r})\n"


def rows(timeout: float = 10.0) -> dict[str, Row]:
    cfg = GpsConfig.model_validate({"source": "termux", "termux": {"fix_timeout_s": 30}})
    start = time.monotonic()
    out = probe_gps(cfg, start + timeout)
    assert time.monotonic() - start < timeout + 5, "the probe overran its deadline"
    assert [r.check for r in out] == ["gps.port", "gps.nmea", "gps.fix"]
    return {r.check: r for r in out}


def test_a_phone_with_a_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(tmp_path, monkeypatch, prints(FIX))
    by = rows()
    assert by["gps.port"].status == "pass" and "termux-location" in by["gps.port"].detail
    assert by["gps.nmea"].status == "pass" and "Termux:API answers" in by["gps.nmea"].detail
    fix = by["gps.fix"]
    assert fix.status == "pass", fix
    assert fix.detail.startswith("3D fix") and "HDOP 0.758" in fix.detail
    assert fix.data["lat"] == 52.37313 and "system_minus_gnss_s" in fix.data


def test_termux_api_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(tmp_path, monkeypatch, None)
    by = rows()
    port = by["gps.port"]
    assert port.status == "fail" and port.detail == "termux-location not found"
    assert "pkg install termux-api" in port.fix and "Termux:API app" in port.fix
    assert by["gps.nmea"].status == by["gps.fix"].status == "skip"


def test_location_permission_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(tmp_path, monkeypatch, prints(PERMISSION))
    by = rows()
    nmea = by["gps.nmea"]
    assert nmea.status == "fail" and "ACCESS_FINE_LOCATION" in nmea.detail
    assert "Allow all the time" in nmea.fix
    assert by["gps.fix"].status == "skip"


def test_no_fix_indoors_is_reported_by_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    stand_in(
        tmp_path,
        monkeypatch,
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(3600)\n",
    )
    by = rows(timeout=2.0)
    nmea = by["gps.nmea"]
    assert nmea.status == "fail" and "no location for 2 s: indoors" in nmea.detail
    assert "outdoors" in nmea.fix and nmea.data["timeouts"] == 1
    # the check stops its source: the one request's client is killed (and reaped), not left
    assert not Path(f"/proc/{int(pid_file.read_text())}").exists()


def test_only_mocked_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(tmp_path, monkeypatch, prints(MOCKED))
    by = rows()
    assert by["gps.nmea"].status == "pass"
    fix = by["gps.fix"]
    assert fix.status == "fail" and "mocked" in fix.detail and "accept_mock" in fix.fix
