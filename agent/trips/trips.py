"""Trips: from moving off to parking, with the numbers a fleet bills on.

With engine data the ignition defines a trip: it starts when the engine
starts and ends when it goes OFF; a stop while the engine is known to be
RUNNING is idling inside the trip (counted in ``idle_s``), not its end.
Without engine data (phones) GNSS alone decides: a trip starts once the
vehicle has moved more than ``start_distance_m`` from where it was parked
(dated from when it moved off), and ends once it has been stopped for
``end_stop_s``, dated from when it stopped, not from when the timeout
fired.  Movement also starts a trip when the engine reads OFF, in case
the bus is silent while the vehicle is towed or the sample is stale.

Distance counts only fixes the :class:`~agent.trips.stops.StopDetector`
does not consider stationary and whose speed is above its stop speed, so
parked drift never adds up; the first moving fix after a stop is measured
from the stop's mean position.  Crawling below the stop speed is counted
when the vehicle moves on (displacement, not path).  Pure and
deterministic: times are the fixes' and samples' own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.gps.fix import Fix
from agent.gps.geo import haversine_m
from agent.messages import EventData, utc_iso
from agent.obd.state import EngineSample, EngineState
from agent.trips.stops import KMH_PER_MPS, StopDetector, event


@dataclass(slots=True)
class _Stats:
    """What a trip accumulates while it runs (or before it is confirmed)."""

    start: datetime
    start_pos: tuple[float, float] | None
    distance_m: float = 0.0
    driving_s: float = 0.0
    idle_s: float = 0.0
    engine_known: bool = False
    max_mps: float = 0.0


class TripDetector:
    """``trip_start`` / ``trip_end`` events from fixes and engine samples.

    Without ``stops`` the detector owns a StopDetector and feeds it from
    :meth:`feed_fix`; with a shared one, the caller feeds it each fix
    *before* calling :meth:`feed_fix`.
    """

    def __init__(
        self,
        start_distance_m: float = 200.0,
        end_stop_s: float = 300.0,
        *,
        stops: StopDetector | None = None,
    ) -> None:
        self.start_distance_m = start_distance_m
        self.end_stop_s = end_stop_s
        self._own = stops is None
        self.stops = StopDetector() if stops is None else stops
        self.engine = EngineState.UNKNOWN
        self._now: datetime | None = None
        self._trip: _Stats | None = None  # the trip in progress
        self._pending: _Stats | None = None  # moving since departure, trip not yet confirmed
        self._anchor: tuple[float, float] | None = None  # where it was parked
        self._prev_pos: tuple[float, float] | None = None  # last position counted
        self._prev_t: datetime | None = None  # last fix time
        self._last_pos: tuple[float, float] | None = None  # last fix position
        self._was_stopped = False
        self._recent_idle: deque[tuple[datetime, float]] = deque(maxlen=64)

    @property
    def in_trip(self) -> bool:
        return self._trip is not None

    def feed_engine(self, sample: EngineSample) -> list[EventData]:
        events: list[EventData] = []
        self._tick(sample.time)
        was, self.engine = self.engine, sample.state
        if sample.state is EngineState.RUNNING and was is not EngineState.RUNNING:
            if self._trip is None:
                pos = self.stops.position or self._last_pos
                self._begin(_Stats(sample.time, pos), "engine", events)
        elif sample.state is EngineState.OFF and self._trip is not None:
            end = max(sample.time, self._trip.start)
            self._finish(end, self.stops.position or self._last_pos, "engine_off", events)
        self._check_timeout(events)
        return events

    def feed_fix(self, fix: Fix) -> list[EventData]:
        stops = self.stops
        if self._own:
            stops.feed(fix)
        events: list[EventData] = []
        if fix.time is None or stops.last_time != fix.time:
            return events  # the stop detector did not use this fix
        assert fix.lat is not None and fix.lon is not None
        t, pos = fix.time, (fix.lat, fix.lon)
        self._tick(t)
        speed = stops.last_speed or 0.0
        dt = 0.0 if self._prev_t is None else (t - self._prev_t).total_seconds()
        self._prev_t, self._last_pos = t, pos

        if stops.stopped:
            self._prev_pos = stops.position
            if self._trip is None:
                self._pending, self._anchor = None, stops.position
        elif self._was_stopped:
            last = stops.last_stop
            assert last is not None
            dt = (t - last.end).total_seconds()  # driving since it moved off
            stats = self._trip or self._pending
            if stats is not None:  # those seconds were counted as idle while unconfirmed
                stats.idle_s -= sum(s for ts, s in self._recent_idle if ts > last.end)
            self._recent_idle.clear()
            if self._trip is None:
                self._pending = _Stats(last.end, (last.lat, last.lon))
        self._was_stopped = stops.stopped
        if self._anchor is None:
            self._anchor = pos
        if self._trip is None and self._pending is None and not stops.stopped:
            self._pending = _Stats(t, self._anchor)

        stats = self._trip or self._pending
        moving = not stops.stopped and speed > stops.stop_speed_mps
        if stats is not None:
            if moving:
                if self._prev_pos is not None:
                    stats.distance_m += haversine_m(*self._prev_pos, *pos)
                stats.driving_s += dt
                stats.max_mps = max(stats.max_mps, speed)
            elif self.engine is EngineState.RUNNING:
                stats.idle_s += dt
                self._recent_idle.append((t, dt))
            if self.engine is not EngineState.UNKNOWN:
                stats.engine_known = True
        if moving or self._prev_pos is None:
            self._prev_pos = pos

        pending = self._pending
        if (
            self._trip is None
            and pending is not None
            and self._anchor is not None
            and haversine_m(*self._anchor, *pos) > self.start_distance_m
        ):
            self._begin(pending, "movement", events)
        self._check_timeout(events)
        return events

    def _tick(self, t: datetime) -> None:
        if self._now is None or t > self._now:
            self._now = t

    def _begin(self, stats: _Stats, reason: str, events: list[EventData]) -> None:
        self._trip, self._pending = stats, None
        stats.engine_known = stats.engine_known or self.engine is not EngineState.UNKNOWN
        events.append(event("trip_start", stats.start, stats.start_pos, {"reason": reason}))

    def _check_timeout(self, events: list[EventData]) -> None:
        trip, stops, now = self._trip, self.stops, self._now
        if trip is None or now is None or not stops.stopped:
            return
        if self.engine is EngineState.RUNNING:
            return  # idling inside the trip
        assert stops.stopped_since is not None
        end = max(stops.stopped_since, trip.start)
        if (now - end).total_seconds() >= self.end_stop_s:
            self._finish(end, stops.position, "stopped", events)

    def _finish(
        self,
        end: datetime,
        end_pos: tuple[float, float] | None,
        reason: str,
        events: list[EventData],
    ) -> None:
        trip = self._trip
        assert trip is not None
        duration = (end - trip.start).total_seconds()
        data: dict[str, Any] = {
            "reason": reason,
            "start": utc_iso(trip.start),
            "distance_m": round(trip.distance_m, 1),
            "duration_s": round(duration, 1),
            "driving_s": round(min(trip.driving_s, duration), 1),
            "max_speed_kmh": round(trip.max_mps * KMH_PER_MPS, 1),
            "mean_speed_kmh": round(
                trip.distance_m / trip.driving_s * KMH_PER_MPS if trip.driving_s > 0 else 0.0, 1
            ),
        }
        if trip.engine_known:
            data["idle_s"] = round(min(trip.idle_s, duration), 1)
        if trip.start_pos is not None:
            data["start_lat"], data["start_lon"] = trip.start_pos
        if end_pos is not None:
            data["end_lat"], data["end_lon"] = end_pos
        events.append(event("trip_end", end, end_pos, data))
        self._trip, self._pending = None, None
        self._anchor = end_pos or self._last_pos
