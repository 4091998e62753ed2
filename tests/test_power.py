"""Battery-aware sampling: the pure policy, the motion tracker, termux-battery-status parsing,
and the command runner against real (stand-in) executables.

termux-battery-status cannot run here (it needs Android and the Termux:API app), so the
reader is run against small executables on PATH that print what the real one prints:
the JSON formats come from termux-api's BatteryStatusAPI.java (both the old field set
and the newer one with present/technology/voltage/level/scale/charge_counter/energy/cycle)
and a published sample of its output (gotermux docs, with temperature as a string and
energy null).  No mocks; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.power import (
    MAX_OUTPUT,
    UNKNOWN_BATTERY,
    BatteryState,
    BatteryStatusError,
    CommandTimeout,
    MotionTracker,
    PowerPolicy,
    parse_battery_status,
    read_battery,
    run_termux_command,
)

# Newer app versions (BatteryStatusAPI.java with JsonUtils.put*IfSet), as published in the
# gotermux docs for termux-battery-status; "temperature" was a string in that version.
NEW_FORMAT = """{
  "present": true,
  "technology": "Li-ion",
  "health": "GOOD",
  "plugged": "UNPLUGGED",
  "status": "DISCHARGING",
  "temperature": "22.3",
  "voltage": 4099,
  "current": -820000,
  "current_average": -576,
  "percentage": 85,
  "level": 85,
  "scale": 100,
  "charge_counter": 3194654,
  "energy": null
}
"""

# The older field set (health, percentage, plugged, status, temperature as a float, current).
OLD_FORMAT_CHARGING = """{
  "health": "GOOD",
  "percentage": 41,
  "plugged": "PLUGGED_USB",
  "status": "CHARGING",
  "temperature": 31.899999618530273,
  "current": 1200000
}
"""

# Current app: percentage absent on some phones (getIntProperty unsupported); level/scale kept.
LEVEL_ONLY = """{
  "present": true,
  "technology": "Li-poly",
  "health": "GOOD",
  "plugged": "UNPLUGGED",
  "status": "DISCHARGING",
  "temperature": 29.5,
  "voltage": 3702,
  "level": 37,
  "scale": 50,
  "cycle": 412
}
"""


def low(percent: float, *, temp: float | None = None) -> BatteryState:
    return BatteryState(percent=percent, powered=False, temperature_c=temp)


CHARGING = BatteryState(percent=50, powered=True)


# -- the policy: every cell of the documented table ----------------------------------


@pytest.mark.parametrize(
    ("battery", "motion", "gps_s", "imu_on", "imu_ms", "band"),
    [
        (CHARGING, "moving", 1.0, True, 10, "charging"),
        (CHARGING, "stopped", 1.0, True, 10, "charging"),
        (CHARGING, "parked", 15.0, True, 10, "charging"),
        (low(80), "moving", 1.0, True, 10, "ok"),
        (low(80), "paused", 1.0, True, 10, "ok"),  # a traffic light keeps the moving rate
        (low(80), "unknown", 1.0, True, 10, "ok"),  # no fix yet: full rate to find one
        (low(80), "stopped", 15.0, False, 10, "ok"),
        (low(80), "parked", 60.0, False, 10, "ok"),
        (low(15), "moving", 3.0, True, 30, "low"),
        (low(15), "stopped", 45.0, False, 30, "low"),
        (low(15), "parked", 180.0, False, 30, "low"),
        (low(5), "moving", 10.0, False, 10, "critical"),
        (low(5), "stopped", 150.0, False, 10, "critical"),
        (low(5), "parked", 300.0, False, 10, "critical"),  # 600 s capped at max_s
        (UNKNOWN_BATTERY, "moving", 1.0, True, 10, "unknown"),
        (UNKNOWN_BATTERY, "parked", 60.0, False, 10, "unknown"),
        (low(20), "moving", 1.0, True, 10, "ok"),  # the threshold itself is not low
        (low(10), "moving", 3.0, True, 30, "low"),
    ],
)
def test_plan_table(
    battery: BatteryState, motion: str, gps_s: float, imu_on: bool, imu_ms: int, band: str
) -> None:
    plan = PowerPolicy().plan(battery, motion)  # type: ignore[arg-type]
    assert (plan.gps_interval_s, plan.imu_on, plan.imu_delay_ms) == (gps_s, imu_on, imu_ms)
    assert plan.battery == band and plan.motion == motion and not plan.hot
    assert plan.reason == f"battery {band}, {motion}"


def test_a_hot_phone_slows_down_whatever_else_holds() -> None:
    policy = PowerPolicy()
    hot_charging = BatteryState(percent=90, powered=True, temperature_c=47.5)
    plan = policy.plan(hot_charging, "moving")
    assert plan.hot and plan.gps_interval_s == 5.0 and plan.imu_delay_ms == 30
    assert "hot 47.5 °C" in plan.reason
    # never faster than hot_min_s, but a slower plan stays slower
    assert policy.plan(low(80, temp=50), "parked").gps_interval_s == 60.0
    assert not policy.plan(low(80, temp=44.9), "moving").hot


def test_plan_is_deterministic_and_custom_figures_apply() -> None:
    policy = PowerPolicy(moving_s=2, stopped_s=20, parked_s=120, low_pct=30, critical_pct=15)
    assert policy.plan(low(25), "moving") == policy.plan(low(25), "moving")
    assert policy.plan(low(25), "moving").gps_interval_s == 6.0
    assert policy.plan(low(14), "stopped").gps_interval_s == 200.0
    assert policy.plan(CHARGING, "parked").gps_interval_s == 20.0


def test_the_configured_imu_rate_is_the_full_rate_the_plan_scales() -> None:
    """imu.rate_hz = 50 (20 ms): the plan never falls back to the policy's default 10 ms."""
    cfg = parse_config(
        {
            "device": {"id": "p1"},
            "gps": {"source": "termux"},
            "imu": {"source": "termux", "rate_hz": 50},
        },
        {},
    )
    delay = max(1, round(1000 / cfg.imu.rate_hz))  # as agent.imu.sources opens termux-sensor
    policy = cfg.gps.termux.options(imu_delay_ms=delay).policy
    assert policy.plan(CHARGING, "moving").imu_delay_ms == 20
    assert policy.plan(low(80), "moving").imu_delay_ms == 20
    assert policy.plan(low(15), "moving").imu_delay_ms == 60  # low battery: x3
    assert policy.plan(low(80, temp=50), "moving").imu_delay_ms == 60  # hot: x3
    assert policy.plan(low(15, temp=50), "moving").imu_delay_ms == 180
    # without it, the default 10 ms (the default 100 Hz); the GPS figures are the same
    default = cfg.gps.termux.options().policy
    assert default.imu_delay_ms == 10 and replace(default, imu_delay_ms=20) == policy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"moving_s": 0},
        {"moving_s": 20, "stopped_s": 15},
        {"parked_s": 400},  # above max_s
        {"low_pct": 10, "critical_pct": 10},
        {"low_factor": 0.5},
        {"critical_factor": 2.0},  # below low_factor
        {"imu_delay_ms": 0},
    ],
)
def test_policy_refuses_inconsistent_figures(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PowerPolicy(**kwargs)  # type: ignore[arg-type]


# -- motion from fix speeds, with the times passed in ------------------------------------


def test_motion_states_follow_the_speed_and_the_time_stopped() -> None:
    m = MotionTracker(moving_speed_mps=1.4, stopped_after_s=120, parked_after_s=900)
    assert m.state(0.0) == "unknown"
    m.feed(10.0, 12.0)
    assert m.state(10.0) == "moving" and m.stopped_for(10.0) == 0.0
    m.feed(20.0, 0.3)  # slowing to a halt at t = 20
    assert m.state(20.0) == "paused"
    m.feed(60.0, 0.0)  # still stopped: the stop began at 20, not 60
    assert m.state(139.9) == "paused"
    assert m.state(140.0) == "stopped" and m.stopped_for(140.0) == 120.0
    assert m.state(920.0) == "parked"
    m.feed(1000.0, None)  # no speed: changes nothing
    m.feed(1000.0, float("nan"))
    m.feed(1000.0, -1.0)
    assert m.no_speed == 3 and m.state(1000.0) == "parked"
    m.feed(1001.0, 1.4)  # at the threshold: moving
    assert m.state(1001.0) == "moving"


# -- parsing termux-battery-status ------------------------------------------------------


def test_new_format_with_string_temperature_and_null_energy() -> None:
    b = parse_battery_status(NEW_FORMAT)
    assert b == BatteryState(
        percent=85.0,
        powered=False,
        status="DISCHARGING",
        plugged="UNPLUGGED",
        temperature_c=22.3,
        health="GOOD",
    )
    assert PowerPolicy().band(b) == "ok"


def test_old_format_charging() -> None:
    b = parse_battery_status(OLD_FORMAT_CHARGING)
    assert b.powered is True and b.percent == 41.0 and b.plugged == "PLUGGED_USB"
    assert b.temperature_c == pytest.approx(31.9)
    assert PowerPolicy().band(b) == "charging"


def test_level_and_scale_when_percentage_is_absent() -> None:
    b = parse_battery_status(LEVEL_ONLY)
    assert b.percent == 74.0 and b.powered is False
    assert PowerPolicy().band(b) == "ok"


@pytest.mark.parametrize(
    ("fields", "powered"),
    [
        ('"plugged": "PLUGGED_AC", "status": "NOT_CHARGING"', True),  # charge limit reached
        ('"plugged": "PLUGGED_WIRELESS", "status": "FULL"', True),
        ('"plugged": "PLUGGED_DOCK"', True),
        ('"plugged": "PLUGGED_16"', True),  # a source the API does not name
        ('"plugged": "PLUGGED_-1", "status": "CHARGING"', True),  # extra absent: status decides
        ('"plugged": "PLUGGED_-1", "status": "DISCHARGING"', False),
        ('"plugged": "PLUGGED_-1", "status": "UNKNOWN"', None),
        ('"status": "FULL"', True),
        ('"status": "NOT_CHARGING"', False),
    ],
)
def test_powered_from_plugged_then_status(fields: str, powered: bool | None) -> None:
    b = parse_battery_status(f'{{"percentage": 50, {fields}}}')
    assert b.powered is powered


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no output"),
        ("   \n", "no output"),
        ("termux-battery-status: illegal option -x", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"error": "something went wrong"}', "Termux:API: something went wrong"),
        ('{"API_ERROR": "Failed"}', "Termux:API: Failed"),
        ('{"health": "GOOD", "temperature": 20.0}', "no percentage, plugged or status"),
        ('{"percentage": 140, "temperature": 20.0}', "no percentage, plugged or status"),
        ('{"percentage": true}', "no percentage, plugged or status"),
    ],
)
def test_what_is_not_a_battery_report(text: str, message: str) -> None:
    with pytest.raises(BatteryStatusError, match=message):
        parse_battery_status(text)


def test_unset_temperature_is_none() -> None:
    # Integer.MIN_VALUE / 10 when the extra is missing
    b = parse_battery_status('{"percentage": 60, "temperature": -214748364.8}')
    assert b.temperature_c is None and b.percent == 60.0


# -- the command runner and the reader against stand-in executables -------------------------


def write_exe(bin_dir: Path, name: str, body: str) -> Path:
    """A small Python program named ``name`` in ``bin_dir`` (first on PATH in these tests)."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def printer(text: str, code: int = 0) -> str:
    return f"import sys\nsys.stdout.write({text!r})\nsys.exit({code})\n"


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (the SIGKILL arrived)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(cond: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_read_battery_from_the_stand_in(tmp_path: Path) -> None:
    exe = write_exe(tmp_path, "termux-battery-status", printer(NEW_FORMAT))
    state = asyncio.run(read_battery(str(exe), timeout_s=10))
    assert state.percent == 85.0 and state.powered is False


def test_read_battery_exit_status_and_garbage(tmp_path: Path) -> None:
    exe = write_exe(tmp_path, "termux-battery-status", printer("timeout: invalid number\n", 125))
    with pytest.raises(BatteryStatusError, match="exit status 125: timeout: invalid number"):
        asyncio.run(read_battery(str(exe), timeout_s=10))


def test_read_battery_missing_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(read_battery(str(tmp_path / "termux-battery-status"), timeout_s=1))


def test_a_hanging_command_is_killed_with_its_children(tmp_path: Path) -> None:
    """The Termux:API app missing: the client waits for ever.  The whole group must go."""
    pids = tmp_path / "pids"
    body = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '3600'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "child.wait()\n"
    )
    exe = write_exe(tmp_path, "termux-battery-status", body)
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"no answer within 0\.5 s"):
        asyncio.run(read_battery(str(exe), timeout_s=0.5))
    assert time.monotonic() - start < 5
    parent, child = (int(p) for p in pids.read_text().split())
    wait_until(lambda: dead(parent) and dead(child), "the process group to die")


def test_cancelling_a_command_kills_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    body = (
        "import os, subprocess\n"
        "child = subprocess.Popen(['sleep', '3600'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "child.wait()\n"
    )
    exe = write_exe(tmp_path, "termux-location", body)

    async def main() -> None:
        task = asyncio.create_task(run_termux_command([str(exe)], 60))
        deadline = time.monotonic() + 10
        while not pids.exists() or len(pids.read_text().split()) < 2:
            assert time.monotonic() < deadline, "the stand-in never started"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    parent, child = (int(p) for p in pids.read_text().split())
    wait_until(lambda: dead(parent) and dead(child), "the process group to die")


def test_endless_output_is_cut_and_the_command_stopped(tmp_path: Path) -> None:
    exe = write_exe(
        tmp_path, "termux-sensor", "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n"
    )
    result = asyncio.run(run_termux_command([str(exe)], 20))
    assert len(result.output) == MAX_OUTPUT
    assert result.code == -9


def test_output_and_exit_code_of_a_normal_command(tmp_path: Path) -> None:
    exe = write_exe(
        tmp_path,
        "termux-location",
        "import sys\nsys.stderr.write('on stderr\\n')\nsys.stdout.write('é\\xff')\nsys.exit(3)\n",
    )
    result = asyncio.run(run_termux_command([str(exe)], 20))
    assert result.code == 3
    assert "on stderr" in result.output and "é" in result.output
    assert os.path.basename(str(exe)) == "termux-location"


def test_without_a_deadline_a_late_answer_is_waited_for(tmp_path: Path) -> None:
    """timeout_s None (termux-location -r once): no kill however long it takes, only on cancel."""
    gate, started = tmp_path / "gate", tmp_path / "started"
    body = (
        "import os, time\n"
        f"open({str(started)!r}, 'w').write(str(os.getpid()))\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.005)\n"
        "print('late')\n"
    )
    exe = write_exe(tmp_path, "termux-location", body)

    async def main() -> None:
        task = asyncio.create_task(run_termux_command([str(exe)], None))
        deadline = time.monotonic() + 10
        while not started.exists():
            assert time.monotonic() < deadline, "the stand-in never started"
            await asyncio.sleep(0.01)
        assert not task.done()
        gate.touch()
        async with asyncio.timeout(10):
            result = await task
        assert (result.code, result.output) == (0, "late\n")

    asyncio.run(main())
