"""Stopped or moving, from noisy GNSS, with hysteresis.

A parked receiver reports 5–30 m of slowly wandering position and 1–5 km/h
of speed, so neither speed nor fix-to-fix distance alone can tell a parked
vehicle from a crawling one.  Both must agree, for long enough:

* stopped: every fix of a run has speed at most ``stop_speed_kmh`` and lies
  within ``radius_m + uere_m * hdop`` of the run's mean position, and the run
  lasts ``min_stop_s``.  The stop is dated from the run's first fix (when the
  vehicle actually stopped), not from when it was confirmed;
* moving again: for ``move_confirm_s`` every fix shows speed above
  ``move_speed_kmh`` or lies outside that radius of the stop's mean.  The
  gap between the two speed thresholds is the hysteresis.  The departure is
  dated from the first fix of the unbroken run above ``stop_speed_kmh``.

The stop position is the running mean of the stationary fixes, which is
steadier than any single fix.  Fixes worse than ``max_hdop`` are ignored.
With ``min_stop_s = 30`` a 40 s traffic light is a stop; trips and idling
decide what a stop means to them.  Pure and deterministic: the only clock
is the fixes' own UTC time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.gps.fix import Fix
from agent.gps.geo import haversine_m
from agent.gps.motion import WindowSpeed
from agent.messages import EventData, utc_iso

KMH_PER_MPS = 3.6


def event(
    kind: str,
    ts: datetime,
    pos: tuple[float, float] | None,
    data: dict[str, Any] | None = None,
) -> EventData:
    """One event at a time and maybe a place (shared by the trip detectors)."""
    lat, lon = pos if pos is not None else (None, None)
    return EventData(ts=ts.astimezone(UTC), type=kind, lat=lat, lon=lon, data=data or {})


@dataclass(slots=True)
class _Run:
    """Fixes believed stationary: first time and running mean position."""

    start: datetime
    lat: float
    lon: float
    n: int = 1

    def add(self, lat: float, lon: float) -> None:
        self.n += 1
        self.lat += (lat - self.lat) / self.n
        self.lon += (lon - self.lon) / self.n


@dataclass(frozen=True, slots=True)
class Stop:
    """A finished stop: when it began and ended, and its mean position."""

    start: datetime
    end: datetime
    lat: float
    lon: float

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()


class StopDetector:
    """``stop_start`` / ``stop_end`` events from fixes; state for other detectors."""

    def __init__(
        self,
        *,
        stop_speed_kmh: float = 5.0,
        move_speed_kmh: float = 10.0,
        move_confirm_s: float = 3.0,
        radius_m: float = 25.0,
        uere_m: float = 5.0,
        min_stop_s: float = 30.0,
        max_hdop: float = 10.0,
        default_hdop: float = 2.0,
    ) -> None:
        self.stop_speed_mps = stop_speed_kmh / KMH_PER_MPS
        self.move_speed_mps = move_speed_kmh / KMH_PER_MPS
        self.move_confirm_s = move_confirm_s
        self.radius_m = radius_m
        self.uere_m = uere_m
        self.min_stop_s = min_stop_s
        self.max_hdop = max_hdop
        self.default_hdop = default_hdop
        self.last_stop: Stop | None = None  # the most recent finished stop
        self.last_time: datetime | None = None  # time of the last fix used
        self.last_speed: float | None = None  # m/s of the last fix used (window if none)
        self.ignored = 0
        self._window = WindowSpeed(window_s=30.0)
        self._cand: _Run | None = None  # stationary run not yet long enough
        self._stop: _Run | None = None  # the confirmed stop
        self._leave: datetime | None = None  # first fix of the moving evidence
        self._rolling: datetime | None = None  # first fix of the run above stop speed
        self._still: datetime | None = None  # last fix at or below it, while stopped

    @property
    def stopped(self) -> bool:
        return self._stop is not None

    @property
    def stopped_since(self) -> datetime | None:
        return None if self._stop is None else self._stop.start

    @property
    def position(self) -> tuple[float, float] | None:
        """Mean position of the current stop, None while moving."""
        return None if self._stop is None else (self._stop.lat, self._stop.lon)

    def feed(self, fix: Fix) -> list[EventData]:
        """Use one fix; return the stop events it confirmed."""
        if not fix.has_position or fix.time is None:
            self.ignored += 1
            return []
        hdop = self.default_hdop if fix.hdop is None else fix.hdop
        if hdop > self.max_hdop or (self.last_time is not None and fix.time <= self.last_time):
            self.ignored += 1
            return []
        assert fix.lat is not None and fix.lon is not None
        lat, lon, t = fix.lat, fix.lon, fix.time
        speed = fix.speed
        if speed is None:
            speed = self._window.update(t.timestamp(), lat, lon) or 0.0
        self.last_time, self.last_speed = t, speed
        radius = self.radius_m + self.uere_m * hdop
        if self._stop is not None:
            return self._while_stopped(t, lat, lon, speed, radius)
        slow = speed <= self.stop_speed_mps
        cand = self._cand
        if not slow:
            self._cand = None
            return []
        if cand is None or haversine_m(cand.lat, cand.lon, lat, lon) > radius:
            self._cand = _Run(t, lat, lon)
            return []
        cand.add(lat, lon)
        if (t - cand.start).total_seconds() < self.min_stop_s:
            return []
        self._stop, self._cand, self._leave, self._rolling = cand, None, None, None
        self._still = None
        return [event("stop_start", cand.start, (cand.lat, cand.lon))]

    def _while_stopped(
        self, t: datetime, lat: float, lon: float, speed: float, radius: float
    ) -> list[EventData]:
        stop = self._stop
        assert stop is not None
        outside = haversine_m(stop.lat, stop.lon, lat, lon) > radius
        if speed <= self.stop_speed_mps:
            self._rolling = None
            self._still = t
        elif self._rolling is None:
            self._rolling = t
        if not (outside or speed > self.move_speed_mps):
            self._leave = None
            if speed <= self.stop_speed_mps:
                stop.add(lat, lon)
            return []
        if self._leave is None:
            self._leave = t
        if (t - self._leave).total_seconds() < self.move_confirm_s:
            return []
        # Dated from the last fix before the unbroken run above the stop
        # speed: the vehicle left between that fix and the next, and pulling
        # away it is still slow one fix later, so the earlier one is closer.
        end = min(self._leave, self._rolling or self._leave)
        if self._still is not None and stop.start <= self._still < end:
            end = self._still
        self.last_stop = Stop(stop.start, end, stop.lat, stop.lon)
        self._stop, self._leave, self._cand, self._rolling = None, None, None, None
        self._still = None
        data = {"start": utc_iso(stop.start), "duration_s": round(self.last_stop.duration_s, 1)}
        return [event("stop_end", end, (stop.lat, stop.lon), data)]
