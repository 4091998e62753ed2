"""IMU rows of the installer's check: the chip answers, samples flow at its rate, mounting.

The agent's own sources do the work (``I2cImuSource``: probe by WHO_AM_I,
configure, read the FIFO; ``TermuxSensorSource`` on a phone) and their
health monitor measures the rate and spots a frozen or clipping sensor.
The mounting calibration is what the agent persisted beside the outbox
(``state:imu_mounting``), read read-only and restored into the agent's own
``MountingCalibrator`` to tell whether it is usable.

Three rows: ``imu.chip``, ``imu.rate``, ``imu.mounting`` (a warning until
the agent has calibrated the mounting on a first drive; it does so by
itself, and harsh events come from GNSS speed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.backoff import Backoff
from agent.buffer.peek import read_state
from agent.check.report import Row, Status
from agent.config import ImuConfig
from agent.imu.i2c import I2cBus, I2cImuSource
from agent.imu.source_base import ImuSource

SAMPLE_S = 2.5  # long enough for the health monitor's rate verdict (20 intervals at 50 Hz)
_NO_RETRY = Backoff(min_s=60.0, max_s=60.0)  # the first failure is the answer

_WIRING = (
    "check the wiring (3.3 V, GND, SDA to pin 3, SCL to pin 5 on a Pi) and "
    "imu.i2c_address; 'i2cdetect -y {bus}' lists what answers (0x68/0x69: MPU/ICM, "
    "0x6a/0x6b: LSM6)"
)


def no_bus_rows(bus: int) -> list[Row]:
    """The I2C device node is absent: the bus is not enabled (or this is not a Pi)."""
    return [
        Row(
            "imu.chip",
            "fail",
            f"not probed (no I2C bus /dev/i2c-{bus})",
            "enable the I2C bus (sudo raspi-config nonint do_i2c 0, or dtparam=i2c_arm=on "
            "in /boot/firmware/config.txt) and reboot; if the IMU is on another bus set "
            'imu.i2c_bus; on a phone use imu.source = "termux"',
            data={"bus": f"/dev/i2c-{bus}"},
        ),
        Row("imu.rate", "skip", "not checked: no I2C bus"),
    ]


def chip_error_rows(cfg: ImuConfig, error: str) -> list[Row]:
    """The bus opened but no supported chip answered (or the bus failed)."""
    if "Permission denied" in error:
        return [
            Row(
                "imu.chip",
                "fail",
                f"permission denied on /dev/i2c-{cfg.i2c_bus}",
                "sudo usermod -aG i2c <agent user> and log in again, or run the check as "
                "the agent's user",
                data={"error": error},
            ),
            Row("imu.rate", "skip", "not checked: the bus did not open"),
        ]
    return [
        Row(
            "imu.chip",
            "fail",
            error.removeprefix("ChipError: "),
            _WIRING.format(bus=cfg.i2c_bus),
            data={"error": error},
        ),
        Row("imu.rate", "skip", "not checked: no chip"),
    ]


def termux_missing_rows() -> list[Row]:
    return [
        Row(
            "imu.chip",
            "fail",
            "termux-sensor not found",
            "install the Termux:API app (from F-Droid, like Termux) and run: pkg install termux-api",
        ),
        Row("imu.rate", "skip", "not checked: no termux-sensor"),
    ]


def sampled_rows(kind: str, status: dict[str, Any], waited_s: float) -> list[Row]:
    """Chip and rate rows from a source's status after sampling for ``waited_s``."""
    chip = status.get("chip")
    if kind == "i2c" and isinstance(chip, dict):
        detail = f"{chip.get('chip')} at {chip.get('address')} (WHO_AM_I {chip.get('who_am_i')})"
        data: dict[str, Any] = {k: v for k, v in chip.items() if k != "registers"}
    elif kind == "i2c":
        return [
            Row(
                "imu.chip",
                "fail",
                f"no chip answered within {waited_s:.0f} s",
                "the bus is slow or hung: power the device off and on, then check the wiring",
            ),
            Row("imu.rate", "skip", "not checked: no chip"),
        ]
    else:
        detail = f"phone sensors through {status.get('target')}"
        data = {"target": status.get("target")}
    chip_row = Row("imu.chip", "pass", detail, data=data)
    health = status.get("health") or {}
    problems: list[dict[str, str]] = list(status.get("problems") or [])
    samples = int(status.get("samples") or 0)
    rate = health.get("rate_hz")
    expected = health.get("expected_rate_hz")
    rate_data = {"samples": samples, "waited_s": round(waited_s, 1), **health, "problems": problems}
    if not samples:
        return [
            chip_row,
            Row(
                "imu.rate",
                "fail",
                f"no samples in {waited_s:.1f} s",
                "the sensor answers but delivers nothing: check its power and wiring; "
                "see the agent's status (imu.last_error)",
                data=rate_data,
            ),
        ]
    shown = "?" if rate is None else f"{rate:g} Hz"
    want = "" if not expected else f" (configured {expected:g} Hz)"
    detail = f"{samples} samples in {waited_s:.1f} s, {shown}{want}"
    if problems:
        worst = problems[0]
        status_: Status = (
            "fail" if worst["code"].startswith("stuck") or worst["code"] == "silent" else "warn"
        )
        return [
            chip_row,
            Row(
                "imu.rate",
                status_,
                f"{detail}; {worst['message']}",
                worst["advice"],
                data=rate_data,
            ),
        ]
    return [chip_row, Row("imu.rate", "pass", detail, data=rate_data)]


def mounting_row(cfg: ImuConfig, stored: str | None) -> Row:
    """Whether the agent has a usable mounting calibration persisted (a warning until then)."""
    calibrator = cfg.processor().calibrator
    learn = (
        "nothing to set up: on the first drive the agent learns how the IMU is mounted. "
        "Stop for a few seconds with the engine running, then drive on a straight road, "
        "speed up and brake firmly once or twice; it keeps the result across restarts. "
        "Until then harsh events come from GNSS speed"
    )
    if stored is None:
        return Row("imu.mounting", "warn", "not calibrated yet", learn, data={"state": "none"})
    try:
        snapshot = json.loads(stored)
        if snapshot is None:
            return Row(
                "imu.mounting",
                "warn",
                "the IMU moved since it was calibrated: being re-learnt",
                learn,
                data={"state": "moved"},
            )
        assert calibrator is not None
        calibrator.restore(snapshot)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return Row(
            "imu.mounting",
            "warn",
            f"stored calibration unusable ({exc}): it will be re-learnt",
            learn,
            data={"state": "unusable"},
        )
    status = calibrator.status()
    if status["state"] != "calibrated":
        return Row(
            "imu.mounting", "warn", "not calibrated yet", learn, data={"state": status["state"]}
        )
    mount = status.get("mount_deg") or {}
    angles = ", ".join(f"{k} {v + 0.0:g}°" for k, v in mount.items())  # no "-0°"
    return Row(
        "imu.mounting",
        "pass",
        f"calibrated (mounting {angles}); verified again at the next stop",
        data={"state": "calibrated", "mount_deg": mount},
    )


async def _sample(source: ImuSource, deadline: float) -> tuple[dict[str, Any], float]:
    """Run ``batches()`` until ``SAMPLE_S`` of samples, a failure or the deadline; the status."""
    start = time.monotonic()
    first: list[float] = []

    async def collect() -> None:
        async for _batch in source.batches():
            if not first:
                first.append(time.monotonic())

    task = asyncio.create_task(collect())
    try:
        while time.monotonic() < deadline and not task.done():
            st = source.status()
            if st["last_error"] and not st["connected"]:
                break
            if first and time.monotonic() - first[0] >= SAMPLE_S:
                break
            await asyncio.sleep(0.05)
        status = source.status()
    finally:
        await source.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return status, time.monotonic() - (first[0] if first else start)


def probe_imu(
    cfg: ImuConfig,
    outbox: Path,
    deadline: float,
    *,
    bus_factory: Callable[[], I2cBus] | None = None,
) -> list[Row]:
    """The IMU rows; ``bus_factory`` replaces ``/dev/i2c-N`` (an emulated bus in tests)."""
    mounting = mounting_row(cfg, read_state(outbox, "imu_mounting"))
    source: ImuSource
    if cfg.source == "i2c":
        node = f"/dev/i2c-{cfg.i2c_bus}"
        if bus_factory is None and not os.path.exists(node):
            return [*no_bus_rows(cfg.i2c_bus), mounting]
        source = I2cImuSource.from_config(cfg, bus_factory=bus_factory, backoff=_NO_RETRY)
    else:
        from agent.imu.termux import TermuxSensorSource

        if shutil.which("termux-sensor") is None:
            return [*termux_missing_rows(), mounting]
        source = TermuxSensorSource.from_config(cfg, backoff=_NO_RETRY)
    status, waited = asyncio.run(_sample(source, deadline))
    if not status["samples"] and status["last_error"]:
        error = str(status["last_error"])
        if cfg.source == "i2c":
            return [*chip_error_rows(cfg, error), mounting]
        return [
            Row(
                "imu.chip",
                "fail",
                f"termux-sensor failed: {error}",
                "open the Termux:API app once and allow the sensors",
            ),
            Row("imu.rate", "skip", "not checked: no samples"),
            mounting,
        ]
    return [*sampled_rows(cfg.source, status, waited), mounting]
