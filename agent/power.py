"""Battery-aware sampling on a phone: how often to ask for a GPS fix, and whether the IMU runs.

A phone in a van is often on a charger, but not always (a cigarette-lighter
socket that is off with the ignition, a driver who unplugs it), and a GPS
kept on at 1 Hz empties a phone battery in a few hours.  So the rate
follows two things the phone can tell: its battery (``termux-battery-status``)
and whether the vehicle moves (the fixes' own Doppler speed).

``PowerPolicy.plan(battery, motion)`` is pure: same inputs, same plan.  The
figures (all configurable, see docs/TERMUX.md for the reasoning):

================================  ==============  ===============  ===============
battery                           moving          stopped >= 2 min  parked >= 15 min
================================  ==============  ===============  ===============
on a charger                      1 s, IMU 10 ms  1 s, IMU 10 ms   15 s, IMU 10 ms
>= 20 % (or unknown)              1 s, IMU 10 ms  15 s, IMU off    60 s, IMU off
10-20 %, not charging (low)       3 s, IMU 30 ms  45 s, IMU off    180 s, IMU off
< 10 %, not charging (critical)   10 s, IMU off   150 s, IMU off   300 s, IMU off
================================  ==============  ===============  ===============

* "moving" includes a short stop (a traffic light: slow for less than
  ``stopped_after_s``) and "unknown" (no fix yet): the full rate finds a fix
  and the moment of departure soonest.
* low and critical multiply the intervals by ``low_factor`` (3) and
  ``critical_factor`` (10), capped at ``max_s`` (300 s, the sampler's
  default heartbeat); a charger lifts the penalty and keeps the full rate
  until the vehicle has been parked for ``parked_after_s``.
* battery at or above ``hot_c`` (45 °C: a phone charging in the sun on a
  dashboard) stretches the GPS to at least ``hot_min_s`` (5 s) and the IMU
  print interval threefold, whatever else holds: Android throttles a hot
  phone anyway, and the GNSS chip is one of its largest loads.
* The IMU is off while stopped or parked (not on a charger) and on
  critical battery; its interval is how often ``termux-sensor`` prints
  (``-d``), the phone's sensor rate itself being fixed by Termux:API.
  "10 ms" stands for ``imu_delay_ms``, the full-rate interval: the IMU's
  configured one (``imu.rate_hz``: 100 Hz is 10 ms), passed in through
  ``TermuxGpsConfig.options(imu_delay_ms=...)`` or
  ``TermuxLocationSource.use_imu_interval``; the plan only multiplies it.

``MotionTracker`` turns fix speeds with their monotonic times into the
motion state; ``parse_battery_status`` turns the JSON of
``termux-battery-status`` into a ``BatteryState``.  Both are pure.  The one
piece of I/O is ``read_battery`` (and ``run_termux_command`` beneath it,
shared with the Termux GPS source): a subprocess with a deadline whose
process group is killed on timeout or cancellation, because termux-api
commands hang for ever when the Termux:API app is missing or stopped (the
GPS source runs it without a deadline and keeps the time itself: see
agent.gps.termux_source on why a location request is never abandoned).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
from dataclasses import asdict, dataclass
from typing import Any, Literal

BatteryBand = Literal["charging", "ok", "low", "critical", "unknown"]
Motion = Literal["moving", "paused", "stopped", "parked", "unknown"]

MAX_OUTPUT = 64 * 1024  # a termux-api JSON answer is a few hundred bytes
# BatteryManager's sources by name, or "PLUGGED_<n>" for a newer constant the API does not name.
_POWER_SOURCE = re.compile(r"PLUGGED_(AC|USB|WIRELESS|DOCK|[1-9][0-9]*)")


# -- battery -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatteryState:
    """What ``termux-battery-status`` said; ``None`` where it said nothing usable.

    ``powered``: an external supply is connected (``plugged`` is one of the
    ``PLUGGED_*`` values, or, without ``plugged``, ``status`` is ``CHARGING``
    or ``FULL``).  ``NOT_CHARGING`` while plugged (a charge limit, or a hot
    battery) still counts as powered: the battery is not being drained.
    """

    percent: float | None = None
    powered: bool | None = None
    status: str | None = None  # CHARGING | DISCHARGING | FULL | NOT_CHARGING | UNKNOWN
    plugged: str | None = None  # UNPLUGGED | PLUGGED_AC | PLUGGED_USB | PLUGGED_WIRELESS | ...
    temperature_c: float | None = None
    health: str | None = None  # GOOD | OVERHEAT | COLD | DEAD | ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


UNKNOWN_BATTERY = BatteryState()


class BatteryStatusError(ValueError):
    """termux-battery-status printed something that is not a battery report."""


def _number(value: object) -> float | None:
    """A finite number; the API printed temperature as a string ("22.3") in some versions."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _text(value: object) -> str | None:
    return value.strip().upper() if isinstance(value, str) and value.strip() else None


def parse_battery_status(text: str) -> BatteryState:
    """The JSON object termux-battery-status prints, as a ``BatteryState``.

    Accepts every format the API has printed (BatteryStatusAPI.java): the
    old one (health, percentage, plugged, status, temperature, current) and
    the newer one with present, technology, voltage, level, scale,
    charge_counter, energy (which may be null) and cycle.  ``percentage``
    is absent on some phones: ``level`` / ``scale`` then.  Raises
    ``BatteryStatusError`` saying what was wrong; never anything else.
    """
    stripped = text.strip()
    if not stripped:
        raise BatteryStatusError(
            "no output (is the Termux:API app installed, and has it been opened once?)"
        )
    try:
        obj = json.loads(stripped)
    except ValueError:
        raise BatteryStatusError(f"not JSON: {stripped.splitlines()[0][:120]!r}") from None
    if not isinstance(obj, dict):
        raise BatteryStatusError(f"not a JSON object: {stripped[:120]!r}")
    for key in ("error", "API_ERROR"):
        if isinstance(obj.get(key), str):
            raise BatteryStatusError(f"Termux:API: {obj[key][:200]}")
    percent = _number(obj.get("percentage"))
    if percent is None:
        level, scale = _number(obj.get("level")), _number(obj.get("scale"))
        if level is not None and scale is not None and scale > 0 and level >= 0:
            percent = 100.0 * level / scale
    if percent is not None and not 0 <= percent <= 100:
        percent = None
    status = _text(obj.get("status"))
    plugged = _text(obj.get("plugged"))
    powered: bool | None = None
    if plugged == "UNPLUGGED":
        powered = False
    elif (plugged is not None and _POWER_SOURCE.fullmatch(plugged)) or status in (
        "CHARGING",  # no or an unknown "plugged" ("PLUGGED_-1": the extra was absent)
        "FULL",
    ):
        powered = True
    elif status in ("DISCHARGING", "NOT_CHARGING"):
        powered = False
    temperature = _number(obj.get("temperature"))
    if temperature is not None and not -40 <= temperature <= 120:  # Integer.MIN_VALUE / 10: unset
        temperature = None
    if percent is None and powered is None:
        raise BatteryStatusError(f"no percentage, plugged or status in {stripped[:120]!r}")
    return BatteryState(
        percent=percent,
        powered=powered,
        status=status,
        plugged=plugged,
        temperature_c=temperature,
        health=_text(obj.get("health")),
    )


# -- motion --------------------------------------------------------------------------


@dataclass
class MotionTracker:
    """Fix speeds in, motion state out.  Pure: the caller passes the monotonic times.

    Moving at or above ``moving_speed_mps`` (5 km/h, the sampler's default).
    Below it since ``t``: ``paused`` (a traffic light) until
    ``stopped_after_s``, then ``stopped``, and ``parked`` from
    ``parked_after_s``.  No speed seen yet: ``unknown``.  Fixes without a
    speed change nothing (counted).  When fixes stop coming (a garage) the
    last state goes on ageing, so a parked van stays parked.
    """

    moving_speed_mps: float = 5.0 / 3.6
    stopped_after_s: float = 120.0
    parked_after_s: float = 900.0
    no_speed: int = 0
    _seen: bool = False
    _slow_since: float | None = None

    def feed(self, mono: float, speed: float | None) -> None:
        if speed is None or not math.isfinite(speed) or speed < 0:
            self.no_speed += 1
            return
        self._seen = True
        if speed >= self.moving_speed_mps:
            self._slow_since = None
        elif self._slow_since is None:
            self._slow_since = mono

    def stopped_for(self, now: float) -> float:
        """Seconds below the moving speed (0 while moving or unknown)."""
        return 0.0 if self._slow_since is None else max(0.0, now - self._slow_since)

    def state(self, now: float) -> Motion:
        if not self._seen:
            return "unknown"
        if self._slow_since is None:
            return "moving"
        slow = self.stopped_for(now)
        if slow >= self.parked_after_s:
            return "parked"
        if slow >= self.stopped_after_s:
            return "stopped"
        return "paused"


# -- the policy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """How to sample now: the GPS poll interval and the IMU's print interval (or off)."""

    gps_interval_s: float
    imu_on: bool
    imu_delay_ms: int
    battery: BatteryBand
    motion: Motion
    hot: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PowerPolicy:
    """The figures of the module docstring; ``plan()`` applies them.  Validated on creation."""

    moving_s: float = 1.0
    stopped_s: float = 15.0
    parked_s: float = 60.0
    low_pct: float = 20.0
    critical_pct: float = 10.0
    low_factor: float = 3.0
    critical_factor: float = 10.0
    hot_c: float = 45.0
    hot_min_s: float = 5.0
    max_s: float = 300.0
    imu_delay_ms: int = 10  # the full-rate IMU print interval: the configured one

    def __post_init__(self) -> None:
        if not 0 < self.moving_s <= self.stopped_s <= self.parked_s <= self.max_s:
            raise ValueError(
                "need 0 < moving_s <= stopped_s <= parked_s <= max_s, got "
                f"{self.moving_s:g}, {self.stopped_s:g}, {self.parked_s:g}, {self.max_s:g}"
            )
        if not 0 <= self.critical_pct < self.low_pct <= 100:
            raise ValueError(
                f"need 0 <= critical_pct < low_pct <= 100, got {self.critical_pct:g}, "
                f"{self.low_pct:g}"
            )
        if self.low_factor < 1 or self.critical_factor < self.low_factor:
            raise ValueError("need 1 <= low_factor <= critical_factor")
        if self.hot_min_s <= 0 or self.imu_delay_ms < 1:
            raise ValueError("hot_min_s must be > 0 and imu_delay_ms >= 1")

    def band(self, battery: BatteryState) -> BatteryBand:
        if battery.powered:
            return "charging"
        if battery.percent is None:
            return "unknown"
        if battery.percent < self.critical_pct:
            return "critical"
        if battery.percent < self.low_pct:
            return "low"
        return "ok"

    def plan(self, battery: BatteryState, motion: Motion) -> Plan:
        band = self.band(battery)
        slow = motion in ("stopped", "parked")
        if band == "charging":
            base = self.stopped_s if motion == "parked" else self.moving_s
            factor = 1.0
        else:
            base = {"stopped": self.stopped_s, "parked": self.parked_s}.get(motion, self.moving_s)
            factor = {"low": self.low_factor, "critical": self.critical_factor}.get(band, 1.0)
        interval = min(self.max_s, base * factor)
        imu_on = band == "charging" or (not slow and band != "critical")
        imu_delay = self.imu_delay_ms * (3 if band == "low" else 1)
        hot = battery.temperature_c is not None and battery.temperature_c >= self.hot_c
        reasons = [f"battery {band}", motion]
        if hot:
            interval = max(interval, self.hot_min_s)
            imu_delay *= 3
            reasons.append(f"hot {battery.temperature_c:g} °C")
        return Plan(
            gps_interval_s=interval,
            imu_on=imu_on,
            imu_delay_ms=imu_delay,
            battery=band,
            motion=motion,
            hot=hot,
            reason=", ".join(reasons),
        )


# -- running termux-api commands -----------------------------------------------------


class CommandTimeout(Exception):
    """The command gave no complete answer in time; its process group was killed."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    code: int
    output: str  # stdout and stderr together, decoded leniently


async def run_termux_command(argv: list[str], timeout_s: float | None) -> CommandResult:
    """Run a termux-api command with a deadline; its output (at most 64 kB) and exit code.

    The command runs in its own process group (the script and the
    termux-api client it forks) so that a timeout or a cancellation kills
    all of it: a termux-api command whose app does not answer waits for ever.
    Raises ``FileNotFoundError`` (and other ``OSError``) when it cannot start,
    ``CommandTimeout`` when the deadline passes.  ``timeout_s`` None: no
    deadline, only a cancellation ends it early (the caller keeps the
    time: ``termux-location -r once``, whose request the Termux:API app
    keeps open whatever happens to the client, see agent.gps.termux_source).
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while size < MAX_OUTPUT:
                data = await proc.stdout.read(MAX_OUTPUT - size)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
            if size >= MAX_OUTPUT:  # not a termux-api answer: stop it
                kill_group(proc.pid)
            code = await proc.wait()
    except TimeoutError:
        kill_group(proc.pid)
        await proc.wait()
        raise CommandTimeout(f"no answer within {timeout_s:g} s") from None
    except asyncio.CancelledError:
        kill_group(proc.pid)
        with contextlib.suppress(TimeoutError):  # reap it: SIGKILL ends it at once
            async with asyncio.timeout(2.0):
                await proc.wait()
        raise
    return CommandResult(code, b"".join(chunks).decode("utf-8", errors="replace"))


def kill_group(pgid: int) -> None:
    """SIGKILL a process group started with ``start_new_session``, if it is still there.

    A termux-api client holds no state worth a graceful stop: the request it
    made lives in the Termux:API app, which finds the socket closed.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def read_battery(
    executable: str = "termux-battery-status", timeout_s: float = 10.0
) -> BatteryState:
    """One ``termux-battery-status``; raises ``BatteryStatusError``, ``OSError`` or ``CommandTimeout``."""
    result = await run_termux_command([executable], timeout_s)
    try:
        return parse_battery_status(result.output)
    except BatteryStatusError:
        if result.code != 0:
            first = result.output.strip().splitlines()[:1]
            raise BatteryStatusError(
                f"exit status {result.code}" + (f": {first[0][:160]}" if first else "")
            ) from None
        raise
