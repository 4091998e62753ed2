"""The check against states a van is often in: no sky, ignition off, no I2C bus, an IMU on the
bus, a backlog in the outbox, the agent already running.

Real simulators and real files throughout; the IMU chip is the register-level
emulation tests/imu uses (there is no I2C bus on this machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer.outbox import Outbox
from agent.check import CheckOptions, rows_by_check, run_checks
from agent.check.report import Row, exit_status
from agent.config import load_config
from agent.imu.calibration import SNAPSHOT_VERSION
from agent.messages import EventData, record_body
from simulators.stack import command
from tests.check.conftest import DEVICE, Setup, _sim, _stop, agent_cli
from tests.imu.test_i2c import ADDRESS, FakeBus, FakeMpu, drive

BUNDLED = Path(__file__).resolve().parents[2] / "simulators" / "scenarios" / "urban_delivery.toml"


def check(setup: Setup, timeout: float = 10.0, **options: object) -> dict[str, Row]:
    rows = run_checks(load_config(setup.write()), CheckOptions(timeout=timeout, **options))  # type: ignore[arg-type]
    return rows_by_check(rows)


@pytest.fixture
def no_sky(tmp_path: Path) -> Iterator[str]:
    """The GPS simulator with the whole drive in an outage: NMEA flows, GGA quality 0."""
    text = BUNDLED.read_text()
    assert "outages" not in text
    scenario = tmp_path / "no_sky.toml"
    scenario.write_text(
        text.replace("[gnss]\n", "[gnss]\noutages = [{ start_s = 0.0, duration_s = 86400.0 }]\n", 1)
    )
    proc, path = _sim(["gps", "--scenario", str(scenario), "--pty"], tmp_path / "sim.log")
    try:
        yield path
    finally:
        _stop(proc)


def test_gps_without_a_fix(good: Setup, no_sky: str) -> None:
    by = check(good.with_("gps", device=no_sky).without("obd"), timeout=6)
    assert by["gps.port"].status == by["gps.nmea"].status == "pass"
    fix = by["gps.fix"]
    assert fix.status == "fail"
    assert fix.detail.startswith("no position fix within 6 s (receiver says no fix, 0 used")
    assert "open sky" in fix.fix
    assert fix.data["quality"] == 0
    assert by["broker.login"].status == "pass"


@pytest.fixture
def ignition_off(tmp_path: Path) -> Iterator[str]:
    """The ELM327 simulator whose vehicle never answers (UNABLE TO CONNECT): the adapter does."""
    scenario = tmp_path / "ignition_off.toml"
    scenario.write_text(
        BUNDLED.read_text()
        + '\n[[obd.faults]]\nat_s = 0\nduration_s = 86400\nkind = "unable_to_connect"\n'
    )
    proc, path = _sim(["elm327", "--scenario", str(scenario), "--pty"], tmp_path / "elm.log")
    try:
        yield path
    finally:
        _stop(proc)


def test_obd_vehicle_not_answering(good: Setup, ignition_off: str) -> None:
    by = check(good.with_("obd", port=ignition_off).without("gps"), timeout=15)
    adapter, vehicle = by["obd.adapter"], by["obd.vehicle"]
    assert adapter.status == "pass" and adapter.detail.startswith("adapter answers on")
    assert vehicle.status == "fail" and "the vehicle does not answer" in vehicle.detail
    assert "switch the ignition on" in vehicle.fix


# -- IMU -------------------------------------------------------------------------------------


def test_imu_without_an_i2c_bus_cli(good: Setup) -> None:
    """No /dev/i2c-1 here: the installer is told the IMU was not probed, and why; exit 1."""
    assert not os.path.exists("/dev/i2c-1")
    config = good.with_("imu", source="i2c").without("obd").write()
    done = subprocess.run(
        [agent_cli(), "check", "--config", str(config), "--timeout", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    by = {r["check"]: r for r in json.loads(done.stdout)}
    chip = by["imu.chip"]
    assert chip["result"] == "fail" and chip["required"] is True
    assert chip["detail"] == "not probed (no I2C bus /dev/i2c-1)"
    assert "enable the I2C bus" in chip["fix"]
    assert by["imu.rate"]["result"] == "skip"
    assert by["imu.mounting"]["result"] == "warn"
    assert by["gps.fix"]["result"] == by["broker.login"]["result"] == "pass"


def emulated_mpu6050() -> FakeBus:
    """An MPU-6050 at 0x68 sampling in real time (its registers and FIFO as the datasheet says)."""
    return FakeBus({ADDRESS["MPU-6050"]: FakeMpu(0x68, drive, time.monotonic)})


def test_imu_chip_on_an_emulated_bus(good: Setup) -> None:
    bus = emulated_mpu6050()
    setup = good.with_("imu", source="i2c", rate_hz=100).without("obd").without("gps")
    by = check(setup, i2c_bus_factory=lambda: bus)
    chip, rate, mounting = by["imu.chip"], by["imu.rate"], by["imu.mounting"]
    assert chip.status == "pass" and chip.detail == "MPU-6050 at 0x68 (WHO_AM_I 0x68)"
    assert rate.status == "pass", rate
    assert 80 <= rate.data["rate_hz"] <= 120
    assert rate.detail.endswith("(configured 100 Hz)")
    assert mounting.status == "warn" and mounting.detail == "not calibrated yet"
    assert "brake" in mounting.fix
    assert bus.closed  # the chip was powered down and the bus released


def test_imu_nothing_on_the_bus(good: Setup) -> None:
    setup = good.with_("imu", source="i2c").without("obd").without("gps")
    by = check(setup, i2c_bus_factory=lambda: FakeBus({}))
    chip = by["imu.chip"]
    assert chip.status == "fail" and chip.detail.startswith("no supported IMU found")
    assert "i2cdetect -y 1" in chip.fix
    assert by["imu.rate"].status == "skip"


def test_imu_mounting_calibrated(good: Setup) -> None:
    """The agent stored a calibrated mounting beside the outbox: the check reads it back."""
    path = Path(str(good.sections["buffer"]["path"]))
    outbox = Outbox(path, DEVICE)
    snapshot = {
        "version": SNAPSHOT_VERSION,
        "state": "calibrated",
        "rotation": [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
        "gravity_mps2": 9.81,
        "gyro_bias": None,
        "quality": {"angle_uncertainty_deg": 1.5},
        "moved_count": 0,
    }
    outbox.set_state("imu_mounting", json.dumps(snapshot))
    outbox.close()
    bus = emulated_mpu6050()
    setup = good.with_("imu", source="i2c").without("obd").without("gps")
    mounting = check(setup, i2c_bus_factory=lambda: bus)["imu.mounting"]
    assert mounting.status == "pass"
    assert mounting.detail.startswith("calibrated (mounting roll 0°, pitch 0°, yaw -90°)")
    assert mounting.data["state"] == "calibrated"


# -- buffer, and the agent already running ---------------------------------------------------


def event() -> str:
    from datetime import UTC, datetime, timedelta

    ts = datetime.now(UTC) - timedelta(hours=3)
    return record_body(EventData(ts=ts, type="agent_started"))


def test_outbox_backlog_read_only(good: Setup) -> None:
    path = Path(str(good.sections["buffer"]["path"]))
    outbox = Outbox(path, DEVICE)
    for _ in range(3):
        outbox.add("events", event())
    outbox.commit()
    outbox.close()
    before = path.read_bytes()
    by = check(good.without("obd").without("gps"))
    row = by["buffer.file"]
    assert row.status == "pass"
    assert row.detail == f"{path}: intact, 3 records waiting, oldest 3.0 h old"
    assert row.data["waiting"] == {"events": 3} and row.data["quick_check"] == ["ok"]
    assert path.read_bytes() == before  # read-only: not a byte changed
    assert not path.with_name(path.name + ".lock").exists() or row.data["agent_pid"] is None


def test_outbox_of_another_device(good: Setup) -> None:
    path = Path(str(good.sections["buffer"]["path"]))
    Outbox(path, "van-other").close()
    row = check(good.without("obd").without("gps"))["buffer.file"]
    assert row.status == "fail" and "belongs to device 'van-other'" in row.detail
    assert "buffer.path" in row.fix


def test_agent_running_is_left_alone(good: Setup, tmp_path: Path) -> None:
    """A real agent holds the outbox, the GPS port and its broker session: the check reports
    that, does not take the port, and does not log in (which would knock the agent off)."""
    config = good.without("obd").write("running.toml")
    log = (tmp_path / "agent.log").open("ab")
    agent = subprocess.Popen(
        [command("telematics-agent"), "run", "--config", str(config)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        path = Path(str(good.sections["buffer"]["path"]))
        lock = path.with_name(path.name + ".lock")
        deadline = time.monotonic() + 20
        from agent.buffer.peek import lock_holder

        while lock_holder(path) != agent.pid:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent never took its outbox lock"
            time.sleep(0.05)
        rows = run_checks(load_config(config), CheckOptions(timeout=6))
        by = rows_by_check(rows)
        assert by["buffer.file"].status == "pass"
        assert f"in use by the agent (pid {agent.pid})" in by["buffer.file"].detail
        for name in ("gps.port", "gps.nmea", "gps.fix", "broker.login"):
            assert by[name].status == "fail", by[name]
            assert (
                by[name].detail
                == f"not checked: the agent (pid {agent.pid}) is running and uses it"
            )
            assert "sudo systemctl stop telematics-agent" in by[name].fix
        assert by["broker.tls"].status == "pass"
        assert exit_status(rows) == 1
        assert agent.poll() is None and lock.exists()
    finally:
        agent.terminate()
        agent.wait(20)
        log.close()


# -- OBD over CAN (python-can's in-process virtual bus; there is no vcan module here) ---------


@pytest.fixture
def can_ecu() -> Iterator[str]:
    """The CAN ECU simulator answering on a virtual channel; the channel's name."""
    import uuid

    import can

    from simulators.can_ecu import CanEcu
    from simulators.ecu import EcuModel
    from simulators.scenario import load_scenario

    channel = f"check-{uuid.uuid4().hex[:8]}"
    bus = can.Bus(interface="virtual", channel=channel)
    ecu = CanEcu(bus, EcuModel(load_scenario("urban_delivery")), lambda: 0.0)
    ecu.start()
    try:
        yield channel
    finally:
        ecu.stop()
        bus.shutdown()


def test_obd_over_can(good: Setup, can_ecu: str) -> None:
    setup = good.without("gps").with_("obd", source="can", can_interface="virtual")
    by = check(setup.with_("obd", can_channel=can_ecu))
    assert by["obd.adapter"].status == "pass", by["obd.adapter"]
    vehicle = by["obd.vehicle"]
    assert vehicle.status == "pass" and "VIN WDB9066331S123456" in vehicle.detail


def test_obd_can_interface_missing(good: Setup) -> None:
    setup = good.without("gps").with_("obd", source="can", can_channel="can9")
    adapter = check(setup)["obd.adapter"]
    assert adapter.status == "fail"
    assert adapter.detail.startswith("CAN interface socketcan can9 not usable: cannot open")
    assert "sudo ip link set can9 up type can bitrate 500000" in adapter.fix
