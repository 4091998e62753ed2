"""Turn a stream of fixes into the position records worth sending.

A 10 Hz receiver gives 36,000 fixes an hour; a fleet map needs a point a
second while moving, a point where the road turns, and a slow heartbeat while
parked.  Commercial trackers also send a point when the speed changes by
more than a set amount, so a speed profile (braking into a queue, pulling
away) survives a long period; ``speed_change_kmh`` does that, off unless set.
Pure and deterministic: intervals are measured on the fixes' own
receiver time, so a replayed drive samples exactly as the live one did,
whatever the replay speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.gps.fix import Fix
from agent.gps.geo import haversine_m
from agent.gps.motion import WindowSpeed
from agent.messages import PositionData

KMH = 1 / 3.6

#: Why a point sent for a speed change was kept (PositionData.reason).
SPEED_REASON = "speed"


def heading_delta(a: float, b: float) -> float:
    """Smallest absolute difference between two courses, degrees (0..180)."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


def _in_range(value: int | None, low: int, high: int) -> int | None:
    """A receiver's quality figure outside any sane range is unknown, not an error."""
    return value if value is not None and low <= value <= high else None


def position_from_fix(fix: Fix, reason: str) -> PositionData:
    """The record for one fix (caller ensures it has a time and a position)."""
    assert fix.time is not None and fix.lat is not None and fix.lon is not None
    course = None if fix.course is None else round(fix.course % 360.0, 1) % 360.0
    return PositionData.model_validate(
        {
            "ts": fix.time,
            "lat": round(fix.lat, 7),
            "lon": round(fix.lon, 7),
            "alt": None if fix.alt_msl is None else round(fix.alt_msl, 1),
            "speed": None if fix.speed is None else round(max(fix.speed, 0.0), 2),
            "course": course,
            "mode": 3 if fix.mode >= 3 else 2,
            "sats": _in_range(fix.sats_used, 0, 255),
            "hdop": None if fix.hdop is None or fix.hdop < 0 else round(fix.hdop, 2),
            "reason": reason,
        }
    )


@dataclass(slots=True)
class _Last:
    time: datetime
    lat: float
    lon: float
    course: float | None
    speed: float | None
    moving: bool


class PositionSampler:
    """``feed(fix) -> [PositionData]``: periodic while moving, extra on turns,
    distance and (if set) speed change, heartbeat while stopped; ``every_fix``
    passes every fix through.  A criterion set to ``math.inf`` never fires.
    """

    def __init__(
        self,
        *,
        period_s: float = 1.0,
        heading_change_deg: float = 15.0,
        distance_m: float = 100.0,
        heartbeat_s: float = 300.0,
        moving_speed_kmh: float = 5.0,
        speed_change_kmh: float | None = None,
        every_fix: bool = False,
    ) -> None:
        self.period_s = period_s
        self.heading_change_deg = heading_change_deg
        self.distance_m = distance_m
        self.heartbeat_s = heartbeat_s
        self.moving_speed = moving_speed_kmh * KMH
        self.speed_change = None if speed_change_kmh is None else speed_change_kmh * KMH
        self.every_fix = every_fix
        self._last: _Last | None = None
        self._last_time: datetime | None = None
        self._window = WindowSpeed()

    def feed(self, fix: Fix) -> list[PositionData]:
        if fix.time is None or not fix.has_position:
            return []
        if fix.time == self._last_time:
            # The parser re-sends an epoch when its guess of the cycle's last
            # sentence proves wrong; one point per receiver time is enough.
            return []
        self._last_time = fix.time
        assert fix.lat is not None and fix.lon is not None
        moving = self._moving(fix)
        reason = self._reason(fix, moving)
        if reason is None:
            return []
        self._last = _Last(fix.time, fix.lat, fix.lon, fix.course, fix.speed, moving)
        return [position_from_fix(fix, reason)]

    def _moving(self, fix: Fix) -> bool:
        """Speed over ground against the threshold.

        Receivers that send only GGA/GLL give no speed; then the average
        speed over a window of fixes stands in (agent.gps.motion).
        """
        assert fix.time is not None and fix.lat is not None and fix.lon is not None
        if fix.speed is not None:
            self._window.reset()
            return fix.speed >= self.moving_speed
        speed = self._window.update(fix.time.timestamp(), fix.lat, fix.lon)
        if speed is None:
            # Too short to tell: keep the previous state, and at start-up err
            # towards sending points rather than losing the first seconds.
            return self._last.moving if self._last is not None else True
        return speed >= self.moving_speed

    def _reason(self, fix: Fix, moving: bool) -> str | None:
        assert fix.time is not None and fix.lat is not None and fix.lon is not None
        last = self._last
        if self.every_fix:
            return "fix"
        if last is None:
            return "first"
        elapsed = (fix.time - last.time).total_seconds()
        if elapsed < 0:
            # Receiver time stepped back (rollover fix-up, restart): start afresh.
            return "first"
        if moving != last.moving:
            return "periodic"  # the point where the vehicle starts or stops
        if not moving:
            return "heartbeat" if elapsed >= self.heartbeat_s else None
        if elapsed >= self.period_s:
            return "periodic"
        if (
            fix.course is not None
            and last.course is not None
            and heading_delta(fix.course, last.course) >= self.heading_change_deg
        ):
            return "heading"
        if (
            self.speed_change is not None
            and fix.speed is not None
            and last.speed is not None
            and abs(fix.speed - last.speed) >= self.speed_change
        ):
            # Needs a receiver that reports speed (RMC/VTG): a window average
            # over GGA-only fixes lags a braking event by seconds.
            return SPEED_REASON
        if haversine_m(last.lat, last.lon, fix.lat, fix.lon) >= self.distance_m:
            return "distance"
        return None
