"""Geofence arrivals and departures a dispatcher can trust.

Per zone a small state machine turns noisy fixes into ``geofence_enter``,
``geofence_dwell`` (arrived), ``geofence_exit`` and ``geofence_approach``
events.  Three guards keep a parked van on a border from flapping:

* hysteresis: a fix only counts for a side when it is beyond the margin
  ``max(min_margin_m, hdop * uere_m)`` from the border;
* persistence: the new side must hold for ``min_side_s`` of receiver time
  (any fix beyond the margin on the old side restarts the count);
* motion: a crossing needs the receiver's own (Doppler) speed to show the
  vehicle travelled at least ``min_margin_m`` since it was last seen on the
  old side.  A parked vehicle cannot cross a border, whatever its position
  noise says.  Fixes without a speed do not block a crossing.

Events carry the true times: the border crossing interpolated between the
last fix on the old side and the first on the new, not the moment the
guards were satisfied.  Pure and deterministic: the only clock is the
fixes' own UTC time.  docs/GEOFENCES.md has the details.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.geofence.geometry import (
    M_PER_DEG,
    CompiledZone,
    center_distance_m,
    compile_zone,
    signed_distance_m,
    wrap_dlon,
)
from agent.geofence.index import ZoneIndex
from agent.geofence.model import ZoneSet
from agent.gps.fix import Fix
from agent.gps.motion import WindowSpeed
from agent.messages import EventData, utc_iso

UNKNOWN, OUTSIDE, INSIDE = 0, 1, 2
#: Without a receiver speed, window speeds below this are drift, not travel.
SPEEDLESS_TRAVEL_MPS = 3.0

#: Receiver speeds below this are parked jitter, not travel.
STATIONARY_MPS = 0.5
#: Approach needs the vehicle moving at least this fast, and closing in.
APPROACH_MIN_SPEED_MPS = 1.0
#: Interpolating a crossing across a longer gap would be a guess.
INTERP_MAX_GAP_S = 10.0
#: Undecided and not moving: a side must hold this long, unbroken, to count.
INITIAL_HOLD_S = 60.0
#: Accuracy assumed for fixes that carry no HDOP.
DEFAULT_HDOP = 2.0
#: At most this much receiver time counts towards the odometer between two fixes.
MAX_ODO_STEP_S = 5.0


@dataclass(slots=True)
class _Obs:
    """One fix as seen from one zone."""

    t: float
    lat: float
    lon: float
    d: float


@dataclass(slots=True)
class _State:
    side: int
    anchor_odo: float  # odometer when last seen beyond the margin on the current side
    run: _Obs | None = None  # first fix of the run beyond the margin on the other side
    run_side: int = UNKNOWN
    run_cross: float = 0.0  # estimated true crossing time of that run
    last_old: _Obs | None = None  # last fix on the current side of the border
    first_new: _Obs | None = None  # first fix past the border after last_old
    prev_d: float | None = None
    entered_at: float | None = None
    dwelled: bool = False
    approach_d: float | None = None  # set while approach is disarmed
    visited: bool = False  # entered since approach last fired


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(round(t, 3), UTC)


def _iso(t: float) -> str:
    return utc_iso(_dt(t), "milliseconds")


class GeofenceDetector:
    """Geofence events from fixes; plug beside the sampler in the pipeline."""

    def __init__(
        self,
        zoneset: ZoneSet,
        *,
        default_dwell_s: float = 30.0,
        uere_m: float = 5.0,
        min_margin_m: float = 5.0,
        min_side_s: float = 3.0,
        max_hdop: float = 5.0,
        approach_m: float = 1000.0,
        approach_s: float = 300.0,
        approach: bool = True,
        approach_max_m: float = 3000.0,
    ) -> None:
        self.default_dwell_s = default_dwell_s
        self.uere_m = uere_m
        self.min_margin_m = min_margin_m
        self.min_side_s = min_side_s
        self.max_hdop = max_hdop
        self.approach_m = approach_m
        self.approach_s = approach_s
        self.approach = approach
        self.approach_max_m = approach_max_m
        self.fixes = 0  # fixes used
        self.ignored = 0  # fixes without position/time, too poor, or out of order
        self._odo = 0.0  # metres travelled by receiver speed
        self._window = WindowSpeed(window_s=30.0)
        self._last_t: float | None = None
        self._prev_pos: tuple[float, float] | None = None
        self._states: dict[str, _State] = {}
        self._zones: list[CompiledZone] = []
        self._by_id: dict[str, CompiledZone] = {}
        self._index = ZoneIndex([])
        self._fresh: set[str] = set()
        self.version = -1
        self.set_zones(zoneset)

    # -- zones ---------------------------------------------------------------

    def set_zones(self, zoneset: ZoneSet) -> None:
        """Swap the zone set without losing visits in progress.

        A zone whose id is kept keeps its visit and approach state; when its
        shape changed, the pending evidence is dropped and the new shape
        decides the next transition with the usual guards.  A removed zone is forgotten
        without an exit event: the vehicle did not leave, the zone did.  A
        new zone starts undecided, so a vehicle already inside it gets an
        ``initial`` enter once the guards agree.
        """
        zones = [compile_zone(z, i) for i, z in enumerate(zoneset.zones)]
        old = self._by_id
        states: dict[str, _State] = {}
        for z in zones:
            st = self._states.get(z.id)
            prev = old.get(z.id)
            if st is not None and prev is not None and prev.zone.shape != z.zone.shape:
                st.run, st.last_old, st.first_new, st.prev_d = None, None, None, None
                st.anchor_odo = self._odo
            if st is not None:
                states[z.id] = st
        self._fresh = {z.id for z in zones if z.id not in old} | (
            self._fresh & {z.id for z in zones}
        )
        self._states = states
        self._zones = zones
        self._by_id = {z.id: z for z in zones}
        self._index = ZoneIndex(zones)
        self.version = zoneset.version

    def limits_at(self, lat: float, lon: float) -> float | None:
        """The lowest ``speed_limit_kmh`` of the zones containing the point, if any."""
        best: float | None = None
        for z in self._index.near(lat, lon, 0.0):
            lim = z.zone.speed_limit_kmh
            if (
                lim is not None
                and (best is None or lim < best)
                and signed_distance_m(z, lat, lon) < 0.0
            ):
                best = lim
        return best

    def inside(self) -> list[str]:
        """Ids of the zones the vehicle is currently (confirmed) inside."""
        return [zid for zid, st in self._states.items() if st.side == INSIDE]

    # -- fixes ---------------------------------------------------------------

    def feed(self, fix: Fix) -> list[EventData]:
        """Evaluate one fix; return the events it confirmed, in time order."""
        if not fix.has_position or fix.time is None:
            self.ignored += 1
            return []
        hdop = fix.hdop
        if hdop is not None and hdop > self.max_hdop:
            self.ignored += 1
            return []
        t = fix.time.timestamp()
        if self._last_t is not None and t <= self._last_t:
            self.ignored += 1
            return []
        assert fix.lat is not None and fix.lon is not None
        lat, lon = fix.lat, fix.lon
        speed: float | None = fix.speed
        if speed is None:
            # GGA-only receivers: the displacement over a 30 s window stands
            # in, counted as travel only above 11 km/h, so even 15 m of
            # correlated drift is not taken for motion (agent.gps.motion).
            # Until the window can tell, assume no travel.
            estimate = self._window.update(t, lat, lon)
            speed = estimate if estimate is not None and estimate >= SPEEDLESS_TRAVEL_MPS else 0.0
        else:
            self._window.reset()
        if self._last_t is not None and speed >= STATIONARY_MPS:
            self._odo += speed * min(t - self._last_t, MAX_ODO_STEP_S)
        self._last_t = t
        self.fixes += 1

        margin = max(self.min_margin_m, (DEFAULT_HDOP if hdop is None else hdop) * self.uere_m)
        spd = speed or 0.0
        # Zones within ``ring`` run the state machine; beyond it (up to
        # ``reach``) only an approach can happen, judged without keeping state.
        ring = max(margin, 50.0 + 10.0 * spd)
        reach = ring
        eta_range = 0.0
        heading: tuple[float, float] | None = None
        if self.approach:
            if spd >= APPROACH_MIN_SPEED_MPS:
                eta_range = min(spd * self.approach_s, self.approach_max_m)
                heading = self._heading(fix, lat, lon)
            reach = max(ring, self.approach_m, eta_range)
        self._prev_pos = (lat, lon)

        states = self._states
        todo = {z.index: (z, cd) for z, cd in self._index.near_d(lat, lon, reach)}
        for zid in states:
            z = self._by_id[zid]
            if z.index not in todo:
                todo[z.index] = (z, center_distance_m(z, lat, lon))

        events: list[EventData] = []
        fresh = self._fresh
        for k in sorted(todo):
            z, cd = todo[k]
            lb = cd - z.bound_m  # the border is at least this far
            st = states.get(z.id)
            if lb > ring and (st is None or (st.side == OUTSIDE and st.run is None)):
                if st is not None:  # only kept while its approach waits to re-arm
                    if st.approach_d is None or self._rearm(st, lb):
                        del states[z.id]
                    continue
                if heading is None or (lb > self.approach_m and lb > eta_range):
                    continue
                if not self._toward(heading, z, lat, lon):
                    continue
                d = cd - z.radius_m if not z.rings else signed_distance_m(z, lat, lon)
                if d <= self.approach_m or d <= eta_range:
                    st = states[z.id] = _State(OUTSIDE, self._odo, prev_d=d)
                    self._fire_approach(z, st, _Obs(t, lat, lon, d), spd, fix, events)
                continue
            d = cd - z.radius_m if not z.rings else signed_distance_m(z, lat, lon)
            if st is None:
                side = UNKNOWN if z.id in fresh else OUTSIDE
                st = states[z.id] = _State(side, self._odo)
            obs = _Obs(t, lat, lon, d)
            self._step(z, st, obs, margin, fix, events)
            if self.approach:
                self._approach(z, st, obs, margin, spd, eta_range, heading, fix, events)
            st.prev_d = d
            if (
                st.side != INSIDE
                and st.run is None
                and st.approach_d is None
                and lb > ring
                and (st.side == OUTSIDE or d > margin)
            ):
                del states[z.id]  # far and idle: implicitly outside
        self._fresh = set()
        events.sort(key=lambda e: e.ts)  # stable: zone order within one instant
        return events

    def _heading(self, fix: Fix, lat: float, lon: float) -> tuple[float, float] | None:
        """Unit (east, north) direction of travel: the course, else the last step."""
        if fix.course is not None:
            c = math.radians(fix.course)
            return math.sin(c), math.cos(c)
        if self._prev_pos is None:
            return None
        plat, plon = self._prev_pos
        dx = wrap_dlon(lon - plon) * M_PER_DEG * math.cos(math.radians(lat))
        dy = (lat - plat) * M_PER_DEG
        n = math.hypot(dx, dy)
        return (dx / n, dy / n) if n > 0.5 else None

    @staticmethod
    def _toward(heading: tuple[float, float], z: CompiledZone, lat: float, lon: float) -> bool:
        """Is the zone's centre ahead (within 90 degrees of the direction of travel)?"""
        dx = wrap_dlon(z.lon0 - lon) * math.cos(math.radians(lat))
        dy = z.lat0 - lat
        return dx * heading[0] + dy * heading[1] > 0.0

    def _rearm(self, st: _State, d: float) -> bool:
        """Far enough (or gone after a visit) for the next approach to count."""
        assert st.approach_d is not None
        far = max(1.5 * self.approach_m, 1.2 * st.approach_d)
        return d > far or (st.visited and d > self.approach_m)

    def _step(
        self, z: CompiledZone, st: _State, obs: _Obs, margin: float, fix: Fix, out: list[EventData]
    ) -> None:
        d = obs.d
        cls = INSIDE if d < -margin else OUTSIDE if d > margin else UNKNOWN
        if st.side != UNKNOWN:
            if (d < 0.0) == (st.side == INSIDE):
                st.last_old, st.first_new = obs, None
            elif st.first_new is None:
                st.first_new = obs
        if cls == UNKNOWN:
            if st.side == UNKNOWN:
                st.run = None  # undecided: only an unbroken run decides
        elif cls == st.side:
            st.run = None
            st.anchor_odo = self._odo
        elif st.run is None or st.run_side != cls:
            st.run, st.run_side, st.run_cross = obs, cls, self._crossing(st, obs)
            if st.side == UNKNOWN:
                st.anchor_odo = self._odo
        if st.side == INSIDE:
            self._dwell(z, st, obs, fix, out)
        run = st.run
        if run is None or obs.t - run.t < self.min_side_s or cls != st.run_side:
            return
        moved = self._odo - st.anchor_odo >= self.min_margin_m or (
            st.side == UNKNOWN and obs.t - run.t >= INITIAL_HOLD_S
        )
        if not moved:
            return
        was, cross = st.side, st.run_cross
        st.side = st.run_side
        st.run, st.last_old, st.first_new = None, None, None
        st.anchor_odo = self._odo
        if st.side == INSIDE:
            st.entered_at, st.dwelled = cross, False
            st.visited = True
            if st.approach_d is None:
                st.approach_d = 0.0  # disarmed until the vehicle has left the area
            out.append(
                self._event(
                    "geofence_enter", z, cross, run, fix,
                    entered_at=_iso(cross), dwell_s=0.0, initial=was == UNKNOWN,
                )
            )  # fmt: skip
            self._dwell(z, st, obs, fix, out)
        elif was == INSIDE:
            entered = st.entered_at if st.entered_at is not None else cross
            cross = max(cross, entered)
            out.append(
                self._event(
                    "geofence_exit", z, cross, run, fix,
                    entered_at=_iso(entered), exited_at=_iso(cross),
                    dwell_s=round(cross - entered, 1), arrived=st.dwelled,
                )
            )  # fmt: skip
            st.entered_at, st.dwelled = None, False

    def _crossing(self, st: _State, obs: _Obs) -> float:
        """Best estimate of when the border was crossed, for a run starting at ``obs``."""
        a, b = st.last_old, st.first_new
        if st.side == UNKNOWN or b is None:
            return obs.t
        if a is not None and b.t - a.t <= INTERP_MAX_GAP_S and a.d != b.d:
            return a.t + (b.t - a.t) * a.d / (a.d - b.d)
        return b.t

    def _dwell(
        self, z: CompiledZone, st: _State, obs: _Obs, fix: Fix, out: list[EventData]
    ) -> None:
        if st.dwelled or st.entered_at is None:
            return
        dwell = z.zone.dwell_s if z.zone.dwell_s is not None else self.default_dwell_s
        due = st.entered_at + dwell
        if obs.t < due or (st.run is not None and st.run_cross < due):
            return  # not yet, or it may have left before: wait for the exit to decide
        st.dwelled = True
        out.append(
            self._event(
                "geofence_dwell", z, due, obs, fix,
                entered_at=_iso(st.entered_at), dwell_s=round(dwell, 1),
            )
        )  # fmt: skip

    def _approach(
        self,
        z: CompiledZone,
        st: _State,
        obs: _Obs,
        margin: float,
        spd: float,
        eta_range: float,
        heading: tuple[float, float] | None,
        fix: Fix,
        out: list[EventData],
    ) -> None:
        d = obs.d
        if st.approach_d is not None:
            if st.side == OUTSIDE and self._rearm(st, d):
                st.approach_d, st.visited = None, False
            return
        if st.side != OUTSIDE or st.run is not None or d <= margin or heading is None:
            return
        if d > self.approach_m and d > eta_range:
            return
        closing = (
            d < st.prev_d if st.prev_d is not None else self._toward(heading, z, obs.lat, obs.lon)
        )
        if closing:
            self._fire_approach(z, st, obs, spd, fix, out)

    def _fire_approach(
        self, z: CompiledZone, st: _State, obs: _Obs, spd: float, fix: Fix, out: list[EventData]
    ) -> None:
        st.approach_d, st.visited = obs.d, False
        out.append(
            self._event(
                "geofence_approach", z, obs.t, obs, fix,
                distance_m=round(obs.d, 1), eta_s=round(obs.d / spd, 1),
            )
        )  # fmt: skip

    @staticmethod
    def _event(
        kind: str, z: CompiledZone, ts: float, at: _Obs, fix: Fix, **extra: Any
    ) -> EventData:
        zone = z.zone
        data: dict[str, Any] = {"zone_id": zone.id, "name": zone.name, "tags": list(zone.tags)}
        data.update(extra)
        data["fix"] = {
            "ts": _iso(fix.time.timestamp()) if fix.time is not None else None,
            "lat": fix.lat,
            "lon": fix.lon,
            "speed": fix.speed,
            "hdop": fix.hdop,
        }
        return EventData(ts=_dt(ts), type=kind, lat=at.lat, lon=at.lon, data=data)
