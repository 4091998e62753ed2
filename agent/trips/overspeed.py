"""Speeding episodes, reported once each.

A driver hovering around the limit must not produce an event per second:
an episode starts at the first fix above the limit, continues until the
speed falls to ``hysteresis_kmh`` below it, and counts only if it lasted
``min_duration_s``.  It is reported once, when it ends (only then are its
duration and maximum known), dated from its start.  A gap in the fixes
longer than ``max_gap_s`` ends an episode at its last fix rather than
guessing what happened in between.

The limit is ``limit_at(lat, lon)`` where that gives one (e.g. a geofence
speed limit, :meth:`GeofenceDetector.limits_at`), else ``limit_kmh``; each
fix is judged against the limit where it is.  Fixes without a receiver
speed are skipped.  Pure and deterministic: the only clock is the fixes'
own UTC time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from agent.gps.fix import Fix
from agent.messages import EventData, utc_iso
from agent.trips.stops import KMH_PER_MPS, event


@dataclass(slots=True)
class _Episode:
    start: datetime
    pos: tuple[float, float]
    limit_kmh: float
    last: datetime  # last fix still inside the episode
    max_kmh: float
    max_over_kmh: float


class OverspeedDetector:
    """``overspeed`` events from fixes: one per episode."""

    def __init__(
        self,
        limit_kmh: float | None,
        min_duration_s: float = 10.0,
        hysteresis_kmh: float = 3.0,
        *,
        limit_at: Callable[[float, float], float | None] | None = None,
        max_gap_s: float = 10.0,
    ) -> None:
        self.limit_kmh = limit_kmh
        self.min_duration_s = min_duration_s
        self.hysteresis_kmh = hysteresis_kmh
        self.limit_at = limit_at
        self.max_gap_s = max_gap_s
        self._ep: _Episode | None = None
        self._last_t: datetime | None = None

    @property
    def speeding(self) -> bool:
        """Whether an episode (of any length so far) is in progress."""
        return self._ep is not None

    def limit_for(self, lat: float, lon: float) -> float | None:
        """The limit (km/h) that applies at a point, None when there is none."""
        if self.limit_at is not None:
            local = self.limit_at(lat, lon)
            if local is not None:
                return local
        return self.limit_kmh

    def feed(self, fix: Fix) -> list[EventData]:
        if not fix.has_position or fix.time is None or fix.speed is None:
            return []
        t = fix.time
        if self._last_t is not None and t <= self._last_t:
            return []
        assert fix.lat is not None and fix.lon is not None
        events: list[EventData] = []
        ep = self._ep
        if (
            ep is not None
            and self._last_t is not None
            and (t - self._last_t).total_seconds() > self.max_gap_s
        ):
            self._close(ep.last, events)
            ep = None
        self._last_t = t
        kmh = fix.speed * KMH_PER_MPS
        limit = self.limit_for(fix.lat, fix.lon)
        if ep is None:
            if limit is not None and kmh > limit:
                self._ep = _Episode(t, (fix.lat, fix.lon), limit, t, kmh, kmh - limit)
        elif limit is None or kmh <= limit - self.hysteresis_kmh:
            self._close(t, events)
        else:
            ep.last = t
            ep.max_kmh = max(ep.max_kmh, kmh)
            ep.max_over_kmh = max(ep.max_over_kmh, kmh - limit)
        return events

    def _close(self, end: datetime, events: list[EventData]) -> None:
        ep = self._ep
        assert ep is not None
        self._ep = None
        duration = (end - ep.start).total_seconds()
        if duration < self.min_duration_s:
            return
        data = {
            "start": utc_iso(ep.start),
            "end": utc_iso(end),
            "duration_s": round(duration, 1),
            "max_speed_kmh": round(ep.max_kmh, 1),
            "limit_kmh": ep.limit_kmh,
            "max_over_kmh": round(ep.max_over_kmh, 1),
        }
        events.append(event("overspeed", ep.start, ep.pos, data))
