"""Idling: the engine running while the vehicle stands still.

Idling wastes fuel, so fleets want it reported, but only when it is real:
the engine must be known to be RUNNING (from OBD) while a
:class:`~agent.trips.stops.StopDetector` says the vehicle is stopped.  A
phone has no engine data (state UNKNOWN), and then there are never idle
events: a stop alone does not prove the engine was on.

Idling is dated from when the vehicle actually stopped or the engine
started, whichever is later.  ``idle_start`` (dated then) is emitted once
that idling has lasted ``threshold_s``, ``excessive_idle`` (dated at the
moment it became excessive) at ``excessive_s``, and ``idle_end`` when the
vehicle moves off or the engine is no longer RUNNING, with the full
duration, the stop's mean position and the fuel burnt when the vehicle
reports its fuel rate for the whole idle.  Pure and deterministic: times
are the fixes' and samples' own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.gps.fix import Fix
from agent.messages import EventData, utc_iso
from agent.obd.state import EngineSample, EngineState
from agent.trips.stops import StopDetector, event


@dataclass(frozen=True, slots=True)
class _FuelPoint:
    """Cumulative fuel (litres) and unknown-rate time (s) at one engine sample."""

    t: float
    litres: float
    unknown_s: float
    rate_lph: float | None


class FuelIntegrator:
    """Fuel burnt between two times, from fuel-rate samples (zero-order hold).

    A rate holds until the next sample, for at most ``max_gap_s``; time not
    covered by a known rate is counted as unknown, so callers report fuel
    only when it is complete.  Old points are pruned by :meth:`prune`.
    """

    def __init__(self, max_gap_s: float = 10.0) -> None:
        self.max_gap_s = max_gap_s
        self._points: deque[_FuelPoint] = deque()

    def add(self, t: float, rate_lph: float | None) -> None:
        pts = self._points
        if pts and t <= pts[-1].t:
            return
        litres, unknown = self._hold(pts[-1], t) if pts else (0.0, 0.0)
        self._points.append(_FuelPoint(t, litres, unknown, rate_lph))

    def at(self, t: float) -> tuple[float, float]:
        """Cumulative (litres, unknown seconds) at time ``t``."""
        pts = self._points
        if not pts:
            return 0.0, 0.0
        if t <= pts[0].t:
            return pts[0].litres, pts[0].unknown_s + (pts[0].t - t)
        prev = pts[0]
        for p in pts:
            if p.t > t:
                break
            prev = p
        return self._hold(prev, t)

    def _hold(self, prev: _FuelPoint, t: float) -> tuple[float, float]:
        dt = t - prev.t
        held = min(dt, self.max_gap_s) if prev.rate_lph is not None else 0.0
        rate = prev.rate_lph or 0.0
        return prev.litres + rate * held / 3600.0, prev.unknown_s + (dt - held)

    def burnt(self, start: float, end: float) -> float | None:
        """Litres between two times, or None when the rate was not always known."""
        l0, u0 = self.at(start)
        l1, u1 = self.at(end)
        return None if u1 - u0 > 1e-6 else l1 - l0

    def prune(self, before: float) -> None:
        """Forget points not needed for times at or after ``before``."""
        pts = self._points
        while len(pts) >= 2 and pts[1].t <= before:
            pts.popleft()


class IdleDetector:
    """Idle events from fixes and engine samples.

    Without ``stops`` the detector owns a StopDetector and feeds it from
    :meth:`feed_fix`.  With a shared one, the caller feeds that detector
    each fix *before* calling :meth:`feed_fix`.  Only idle events are
    returned; stop events belong to whoever reads the StopDetector.
    """

    def __init__(
        self,
        threshold_s: float = 60.0,
        excessive_s: float = 300.0,
        *,
        stops: StopDetector | None = None,
        fuel_max_gap_s: float = 10.0,
    ) -> None:
        self.threshold_s = threshold_s
        self.excessive_s = excessive_s
        self._own = stops is None
        self.stops = StopDetector() if stops is None else stops
        self.engine = EngineState.UNKNOWN
        self._engine_since: datetime | None = None  # when the engine last became RUNNING
        self._engine_until: datetime | None = None  # when it last stopped RUNNING
        self._fuel = FuelIntegrator(fuel_max_gap_s)
        self._now: datetime | None = None
        self._since: datetime | None = None  # start of the current idle
        self._pos: tuple[float, float] | None = None
        self._started = False
        self._excessive = False

    @property
    def idling(self) -> bool:
        """Whether an idle has started (lasted ``threshold_s``) and not ended."""
        return self._started

    def feed_fix(self, fix: Fix) -> list[EventData]:
        if self._own:
            self.stops.feed(fix)
        if fix.time is None:
            return []
        self._tick(fix.time)
        return self._update()

    def feed_engine(self, sample: EngineSample) -> list[EventData]:
        if sample.state is EngineState.RUNNING and self.engine is not EngineState.RUNNING:
            self._engine_since = sample.time
        if sample.state is not EngineState.RUNNING and self.engine is EngineState.RUNNING:
            # Engine-state changes arrive back-dated to the first sample that
            # showed them, possibly after later fixes: the idle ends then.
            self._engine_until = sample.time
        self.engine = sample.state
        self._fuel.add(sample.time.timestamp(), sample.fuel_rate_lph)
        self._tick(sample.time)
        return self._update()

    def _tick(self, t: datetime) -> None:
        if self._now is None or t > self._now:
            self._now = t

    def _update(self) -> list[EventData]:
        now = self._now
        assert now is not None
        stops = self.stops
        events: list[EventData] = []
        if stops.stopped and self.engine is EngineState.RUNNING:
            assert stops.stopped_since is not None and self._engine_since is not None
            if self._since is None:
                self._since = max(stops.stopped_since, self._engine_since)
            self._pos = stops.position
            self._thresholds(now, events)
        elif self._since is not None:
            last = stops.last_stop
            end = now
            if not stops.stopped and last is not None and last.end >= self._since:
                end = min(last.end, now)
            if self.engine is not EngineState.RUNNING and self._engine_until is not None:
                end = min(end, max(self._engine_until, self._since))
            self._thresholds(end, events)
            if self._started:
                events.append(self._end(end))
            self._since, self._started, self._excessive = None, False, False
        horizon = self._since if self._since is not None else now - timedelta(seconds=600)
        self._fuel.prune(horizon.timestamp())
        return events

    def _thresholds(self, upto: datetime, events: list[EventData]) -> None:
        since = self._since
        assert since is not None
        lasted = (upto - since).total_seconds()
        if not self._started and lasted >= self.threshold_s:
            self._started = True
            events.append(event("idle_start", since, self._pos, {"threshold_s": self.threshold_s}))
        if self._started and not self._excessive and lasted >= self.excessive_s:
            self._excessive = True
            at = since + timedelta(seconds=self.excessive_s)
            data = {"start": utc_iso(since), "excessive_s": self.excessive_s}
            events.append(event("excessive_idle", at, self._pos, data))

    def _end(self, end: datetime) -> EventData:
        since = self._since
        assert since is not None
        data: dict[str, Any] = {
            "start": utc_iso(since),
            "duration_s": round((end - since).total_seconds(), 1),
            "excessive": self._excessive,
        }
        fuel = self._fuel.burnt(since.timestamp(), end.timestamp())
        if fuel is not None:
            data["fuel_l"] = round(fuel, 3)
        return event("idle_end", end, self._pos, data)
