"""GPS over the network: an NMEA TCP stream (phone apps) and gpsd, both fed by the simulator."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.check import CheckOptions, rows_by_check, run_checks
from agent.check.report import Row
from agent.config import load_config
from simulators.broker import free_port, wait_for
from simulators.stack import command, stop_group
from tests.check.conftest import Setup, _sim, _stop
from tests.support.tools import must_not_skip


def gps_rows(setup: Setup, timeout: float = 10.0) -> dict[str, Row]:
    rows = run_checks(load_config(setup.write()), CheckOptions(timeout=timeout))
    return rows_by_check(rows)


@pytest.fixture
def nmea_tcp(tmp_path: Path) -> Iterator[int]:
    proc = subprocess.Popen(
        [command("telematics-sim"), "gps", "--scenario", "urban_delivery", "--tcp", "0", "--loop"],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "sim.log").open("ab"),
        start_new_session=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        yield port
    finally:
        _stop(proc)


def test_nmea_over_tcp(good: Setup, nmea_tcp: int) -> None:
    gps = {"source": "tcp", "host": "127.0.0.1", "port": nmea_tcp}
    by = gps_rows(Setup({**good.without("obd").sections, "gps": gps}, good.workdir))
    assert by["gps.port"].detail == f"connected to 127.0.0.1:{nmea_tcp}"
    assert by["gps.nmea"].status == by["gps.fix"].status == "pass"


def test_nmea_over_tcp_refused(good: Setup) -> None:
    port = free_port()
    gps = {"source": "tcp", "host": "127.0.0.1", "port": port}
    by = gps_rows(Setup({**good.without("obd").sections, "gps": gps}, good.workdir))
    row = by["gps.port"]
    assert row.status == "fail" and row.detail == f"connection to 127.0.0.1:{port} refused"
    assert "NMEA server" in row.fix


@pytest.fixture
def gpsd(tmp_path: Path) -> Iterator[int]:
    """A real gpsd (read-only, -b) reading the GPS simulator's pty; its port."""
    exe = shutil.which("gpsd") or "/usr/sbin/gpsd"
    if not os.path.exists(exe):
        why = "gpsd not installed (Debian package gpsd; scripts/ensure-deps.sh installs it)"
        if must_not_skip():
            pytest.fail(why)
        pytest.skip(why)
    sim, pty = _sim(["gps", "--scenario", "urban_delivery", "--pty", "--loop"], tmp_path / "s.log")
    port = free_port()
    sockdir = tempfile.mkdtemp(prefix="gpsd-")  # the control socket path must be short
    shm = f"0x4770{port:04X}"
    proc = subprocess.Popen(
        [exe, "-N", "-n", "-b", "-S", str(port), "-F", f"{sockdir}/ctl", pty],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "gpsd.log").open("ab"),
        start_new_session=True,
        env={**os.environ, "GPSD_SHM_KEY": shm},
    )
    try:
        wait_for(lambda: _accepts(port), 10, "gpsd listening")
        yield port
    finally:
        stop_group(proc, timeout=5)
        _stop(sim)
        shutil.rmtree(sockdir, ignore_errors=True)
        subprocess.run(["ipcrm", "-M", shm], capture_output=True, check=False)


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_gpsd(good: Setup, gpsd: int) -> None:
    gps = {"source": "gpsd", "host": "127.0.0.1", "port": gpsd}
    by = gps_rows(Setup({**good.without("obd").sections, "gps": gps}, good.workdir), timeout=15)
    assert by["gps.port"].status == "pass" and by["gps.port"].detail.startswith("gpsd ")
    assert by["gps.nmea"].status == "pass" and "/dev/pts/" in by["gps.nmea"].detail
    fix = by["gps.fix"]
    assert fix.status == "pass" and fix.detail.startswith("3D fix, 9 satellites used"), fix


def test_gpsd_not_running(good: Setup) -> None:
    gps = {"source": "gpsd", "host": "127.0.0.1", "port": free_port()}
    by = gps_rows(Setup({**good.without("obd").sections, "gps": gps}, good.workdir))
    row = by["gps.port"]
    assert row.status == "fail" and "refused" in row.detail
    assert "systemctl start gpsd" in row.fix


def test_tcp_source_pointed_at_gpsd(good: Setup, gpsd: int) -> None:
    """gps.source = tcp on gpsd's port: bytes arrive, JSON not NMEA; the fix names gpsd."""
    gps = {"source": "tcp", "host": "127.0.0.1", "port": gpsd}
    by = gps_rows(Setup({**good.without("obd").sections, "gps": gps}, good.workdir), timeout=6)
    nmea = by["gps.nmea"]
    assert nmea.status == "fail" and "no valid NMEA" in nmea.detail
    assert nmea.fix == 'that is gpsd\'s JSON, not NMEA: set gps.source = "gpsd"'
