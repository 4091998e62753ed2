"""Vehicle kinematics along a scenario route: the true state at any time t.

Every simulator (GPS now; ELM327, CAN and IMU later) derives what it reports
from this one truth, so the devices of a test drive agree with each other.
Pure functions over immutable data: no I/O, no wall clock, the same answer
for the same scenario and t, in any order of calls.

Model, kept simple and exact:

* the vehicle drives the waypoint polyline (great circles) and covers exactly
  its haversine length;
* speed is the fastest profile that respects each segment's speed, comes to a
  full stop at stops and at both ends of the route, and never accelerates
  faster than ``accel`` nor brakes harder than ``decel`` (piecewise constant
  acceleration, so speed is continuous);
* a corner is rounded on an arc that passes at most ``corner_cut_m`` inside
  the waypoint and fits in half of each adjoining segment; the vehicle slows
  so that lateral acceleration on that arc stays within
  ``max_lateral_accel_mps2``, and the course turns smoothly along it.  The
  position stays on the polyline (a few metres off the arc at most); corners
  sharper than can be driven at 1 m/s are driven as stop-and-turn.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.scenario import Scenario

__all__ = [
    "EARTH_RADIUS_M",
    "Drive",
    "Lap",
    "StopVisit",
    "VehicleState",
    "build_drive",
    "final_bearing_deg",
    "haversine_m",
    "initial_bearing_deg",
    "interpolate",
    "local_xy_m",
    "offset_m",
    "point_in_ring",
    "state_at",
]

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
_STOP_BELOW_MPS = 1.0  # a corner that must be taken slower than this becomes a stop
_STRAIGHT_DEG = 1.0  # heading changes smaller than this are not rounded
_CLOSED_M = 1.0  # a route whose ends are this close is a round trip
_EPS = 1e-9


# --------------------------------------------------------------------------- geodesy


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def initial_bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Course in degrees true (0..360) when leaving point 1 towards point 2."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def final_bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Course in degrees true when arriving at point 2 from point 1."""
    return (initial_bearing_deg(lat2, lon2, lat1, lon1) + 180.0) % 360.0


def interpolate(
    lat1: float, lon1: float, lat2: float, lon2: float, fraction: float
) -> tuple[float, float]:
    """The point ``fraction`` of the way along the great circle from 1 to 2."""
    p1, l1, p2, l2 = map(math.radians, (lat1, lon1, lat2, lon2))
    delta = haversine_m(lat1, lon1, lat2, lon2) / EARTH_RADIUS_M
    if delta < 1e-12:
        return lat1, lon1
    a = math.sin((1 - fraction) * delta) / math.sin(delta)
    b = math.sin(fraction * delta) / math.sin(delta)
    x = a * math.cos(p1) * math.cos(l1) + b * math.cos(p2) * math.cos(l2)
    y = a * math.cos(p1) * math.sin(l1) + b * math.cos(p2) * math.sin(l2)
    z = a * math.sin(p1) + b * math.sin(p2)
    lat = math.degrees(math.atan2(z, math.hypot(x, y)))
    lon = math.degrees(math.atan2(y, x))
    return lat, (lon + 180.0) % 360.0 - 180.0


def offset_m(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """Move a point by a small north/east offset (metres; flat-earth, fine below 1 km)."""
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlon = math.degrees(east_m / (EARTH_RADIUS_M * max(1e-9, math.cos(math.radians(lat)))))
    return lat + dlat, (lon + dlon + 180.0) % 360.0 - 180.0


def local_xy_m(lat0: float, lon0: float, lat: float, lon: float) -> tuple[float, float]:
    """(east, north) metres of a point from an origin (equirectangular; fine below ~10 km)."""
    dlon = (lon - lon0 + 180.0) % 360.0 - 180.0
    east = math.radians(dlon) * EARTH_RADIUS_M * math.cos(math.radians((lat + lat0) / 2))
    return east, math.radians(lat - lat0) * EARTH_RADIUS_M


def point_in_ring(x: float, y: float, ring: Sequence[tuple[float, float]]) -> bool:
    """Whether (x, y) is inside the ring of (x, y) points (even-odd rule; closing optional).

    With ``[lon, lat]`` rings the test is the same as on a local projection
    (scaling an axis does not change which side of an edge a point is on).
    """
    inside = False
    n = len(ring)
    for k in range(n):
        x1, y1 = ring[k]
        x2, y2 = ring[(k + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _signed_turn(course_in: float, course_out: float) -> float:
    """Heading change in degrees, -180..180, positive to the right."""
    return (course_out - course_in + 180.0) % 360.0 - 180.0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class VehicleState:
    """The vehicle's true motion at one instant.

    ``t`` is seconds since the scenario's ``start_utc``.  Speed is along the
    track in m/s, ``accel_mps2`` its rate of change (negative when braking),
    ``course_deg`` degrees true, ``yaw_rate_dps`` positive turning right (the
    IMU simulator derives lateral acceleration as speed x yaw rate).
    ``stop_waypoint`` is the scenario index of the waypoint where the vehicle
    dwells (``None`` while driving); ``stop_remaining_s`` is infinite once it
    never moves again.
    """

    t: float
    lat: float
    lon: float
    alt_m: float
    speed_mps: float
    accel_mps2: float
    course_deg: float
    yaw_rate_dps: float
    moving: bool
    odometer_m: float
    lap: int
    stop_waypoint: int | None
    stop_name: str
    stopped_for_s: float
    stop_remaining_s: float


@dataclass(frozen=True, slots=True)
class StopVisit:
    """When a lap arrives at and leaves a waypoint that has ``dwell_s``."""

    waypoint: int
    name: str
    arrive_s: float
    depart_s: float


@dataclass(frozen=True, slots=True)
class _Leg:
    """One waypoint as a lap drives it, with the segment that leaves it."""

    lat: float
    lon: float
    alt: float
    speed: float  # m/s to the next waypoint; 0 on the last
    accel: float
    decel: float
    dwell: float | None
    name: str
    index: int  # the waypoint's index in the scenario


@dataclass(frozen=True, slots=True)
class _Arc:
    lo: float
    hi: float
    course_lo: float
    turn: float
    speed: float


@dataclass(frozen=True, slots=True)
class _Phase:
    t0: float
    dur: float
    s0: float
    s1: float
    v0: float
    acc: float
    seg: int
    stop: int  # lap waypoint where the vehicle dwells, -1 while driving


@dataclass(frozen=True, slots=True)
class Lap:
    """One pass over the waypoints, planned: geometry, corners and motion phases."""

    legs: tuple[_Leg, ...]
    cum: tuple[float, ...]
    seg_len: tuple[float, ...]
    bearing_out: tuple[float, ...]
    bearing_end: tuple[float, ...]
    arcs: tuple[_Arc, ...]
    arc_lo: tuple[float, ...]
    phases: tuple[_Phase, ...]
    phase_t0: tuple[float, ...]
    stops: tuple[StopVisit, ...]

    @property
    def duration(self) -> float:
        """Seconds from the first phase to the end of the last dwell."""
        last = self.phases[-1]
        return last.t0 + last.dur

    @property
    def distance(self) -> float:
        """Metres driven in the lap (the sum of the segments' haversine lengths)."""
        return self.cum[-1]


@dataclass(frozen=True, slots=True)
class Drive:
    """The whole drive: the first lap, then ``cycle`` repeated forever when looping."""

    first: Lap
    cycle: tuple[Lap, ...] = ()

    @property
    def loops(self) -> bool:
        """True when the drive repeats forever."""
        return bool(self.cycle)

    @property
    def duration(self) -> float:
        """Seconds until the vehicle parks for good; infinite when looping."""
        return math.inf if self.cycle else self.first.duration


# --------------------------------------------------------------------------- planning


def build_drive(scenario: Scenario, *, loop: bool = False) -> Drive:
    """Plan the scenario's route; ``loop`` repeats it forever.

    A round trip (last waypoint on the first) is repeated as is; any other
    route is driven out and back, so the vehicle never jumps.  Laps after the
    first skip the first waypoint's dwell: the vehicle has just dwelt there.
    """
    legs = _legs(scenario)
    v = scenario.vehicle
    cut = scenario.route.corner_cut_m
    lat_max = v.max_lateral_accel_mps2
    first = _plan_lap(legs, cut, lat_max, start_dwell=True)
    if not loop:
        return Drive(first)
    again = _plan_lap(legs, cut, lat_max, start_dwell=False)
    if haversine_m(legs[0].lat, legs[0].lon, legs[-1].lat, legs[-1].lon) < _CLOSED_M:
        return Drive(first, (again,))
    back = _plan_lap(_reversed(legs), cut, lat_max, start_dwell=False)
    return Drive(first, (back, again))


def _legs(scenario: Scenario) -> tuple[_Leg, ...]:
    route, vehicle = scenario.route, scenario.vehicle
    wps = route.waypoints
    legs = []
    for i, wp in enumerate(wps):
        last = i == len(wps) - 1
        legs.append(
            _Leg(
                lat=wp.lat,
                lon=wp.lon,
                alt=route.altitude_m if wp.alt_m is None else wp.alt_m,
                speed=0.0 if last or wp.speed_kmh is None else wp.speed_kmh / 3.6,
                accel=wp.accel_mps2 or vehicle.max_accel_mps2,
                decel=wp.decel_mps2 or vehicle.max_decel_mps2,
                dwell=wp.dwell_s,
                name=wp.name,
                index=i,
            )
        )
    return tuple(legs)


def _reversed(legs: tuple[_Leg, ...]) -> tuple[_Leg, ...]:
    """The route driven backwards; each segment keeps its speed and limits."""
    n = len(legs)
    out = []
    for k in range(n):
        here = legs[n - 1 - k]
        seg = legs[n - 2 - k] if k < n - 1 else None
        out.append(
            _Leg(
                lat=here.lat,
                lon=here.lon,
                alt=here.alt,
                speed=seg.speed if seg else 0.0,
                accel=seg.accel if seg else here.accel,
                decel=seg.decel if seg else here.decel,
                dwell=here.dwell,
                name=here.name,
                index=here.index,
            )
        )
    return tuple(out)


def _plan_lap(
    legs: tuple[_Leg, ...], corner_cut: float, lat_max: float, *, start_dwell: bool
) -> Lap:
    n = len(legs)
    seg_len = tuple(
        haversine_m(legs[i].lat, legs[i].lon, legs[i + 1].lat, legs[i + 1].lon)
        for i in range(n - 1)
    )
    cum = [0.0]
    for length in seg_len:
        cum.append(cum[-1] + length)
    b_out = tuple(
        initial_bearing_deg(legs[i].lat, legs[i].lon, legs[i + 1].lat, legs[i + 1].lon)
        for i in range(n - 1)
    )
    b_end = tuple(
        final_bearing_deg(legs[i].lat, legs[i].lon, legs[i + 1].lat, legs[i + 1].lon)
        for i in range(n - 1)
    )
    stop_at = [k in (0, n - 1) or legs[k].dwell is not None for k in range(n)]
    arcs = []
    for k in range(1, n - 1):
        if stop_at[k]:
            continue
        arc = _corner(k, legs, seg_len, cum, b_end[k - 1], b_out[k], corner_cut, lat_max)
        if arc is None:
            continue
        if arc.speed < _STOP_BELOW_MPS:
            stop_at[k] = True  # too sharp to drive through: stop and turn
        else:
            arcs.append(arc)
    phases, stops = _motion(legs, seg_len, cum, arcs, stop_at, start_dwell)
    return Lap(
        legs=legs,
        cum=tuple(cum),
        seg_len=seg_len,
        bearing_out=b_out,
        bearing_end=b_end,
        arcs=tuple(arcs),
        arc_lo=tuple(a.lo for a in arcs),
        phases=tuple(phases),
        phase_t0=tuple(p.t0 for p in phases),
        stops=tuple(stops),
    )


def _corner(
    k: int,
    legs: tuple[_Leg, ...],
    seg_len: tuple[float, ...],
    cum: list[float],
    course_in: float,
    course_out: float,
    corner_cut: float,
    lat_max: float,
) -> _Arc | None:
    """The arc that rounds waypoint k, or None when the route runs straight on."""
    turn = _signed_turn(course_in, course_out)
    half_angle = math.radians(abs(turn)) / 2
    if abs(turn) < _STRAIGHT_DEG:
        return None
    tan_half = math.tan(half_angle)
    fit = min(seg_len[k - 1], seg_len[k]) / 2 / tan_half  # largest radius that fits
    cut = corner_cut / (1 / math.cos(half_angle) - 1)  # radius passing corner_cut inside
    radius = min(fit, cut)
    speed = min(legs[k - 1].speed, legs[k].speed, math.sqrt(lat_max * radius))
    tangent = radius * tan_half
    return _Arc(cum[k] - tangent, cum[k] + tangent, course_in, turn, speed)


def _motion(
    legs: tuple[_Leg, ...],
    seg_len: tuple[float, ...],
    cum: list[float],
    arcs: list[_Arc],
    stop_at: list[bool],
    start_dwell: bool,
) -> tuple[list[_Phase], list[StopVisit]]:
    """Time-optimal speed profile under the limits, as constant-acceleration phases."""
    n = len(legs)
    # Pieces of track with one speed limit each: split at waypoints and arc ends.
    marks = sorted({*cum, *(a.lo for a in arcs), *(a.hi for a in arcs)})
    points = [marks[0]]
    for m in marks[1:]:
        if m - points[-1] > 1e-6:
            points.append(m)
    stop_point = {}  # index in points -> waypoint
    for wp, at in enumerate(cum):
        j = bisect_right(points, at + 1e-6) - 1
        if j >= 0 and abs(points[j] - at) <= 1e-6:
            stop_point[j] = wp
    arc_lo = [a.lo for a in arcs]  # arcs are sorted and never overlap
    pieces = []  # (s0, length, limit, accel, decel, seg)
    for lo, hi in pairwise(points):
        mid = (lo + hi) / 2
        seg = min(max(bisect_right(cum, mid) - 1, 0), n - 2)
        limit = legs[seg].speed
        near = bisect_right(arc_lo, mid) - 1
        if near >= 0 and mid <= arcs[near].hi:
            limit = min(limit, arcs[near].speed)
        pieces.append((lo, hi - lo, limit, legs[seg].accel, legs[seg].decel, seg))

    m = len(pieces)
    u = [math.inf] * (m + 1)
    for j in range(m + 1):
        if j > 0:
            u[j] = min(u[j], pieces[j - 1][2])
        if j < m:
            u[j] = min(u[j], pieces[j][2])
        at_wp = stop_point.get(j)
        if at_wp is not None and stop_at[at_wp]:
            u[j] = 0.0
    for j in range(m):
        u[j + 1] = min(u[j + 1], math.sqrt(u[j] ** 2 + 2 * pieces[j][3] * pieces[j][1]))
    for j in reversed(range(m)):
        u[j] = min(u[j], math.sqrt(u[j + 1] ** 2 + 2 * pieces[j][4] * pieces[j][1]))

    phases: list[_Phase] = []
    stops: list[StopVisit] = []
    t = 0.0

    def dwell(k: int, seconds: float, seg: int) -> None:
        nonlocal t
        phases.append(_Phase(t, seconds, cum[k], cum[k], 0.0, 0.0, seg, k))
        t += seconds

    def visit(k: int, arrive: float) -> None:
        if legs[k].dwell is not None:
            stops.append(StopVisit(legs[k].index, legs[k].name, arrive, t))

    first_dwell = legs[0].dwell
    if start_dwell and first_dwell:
        dwell(0, first_dwell, 0)
    if start_dwell:
        visit(0, 0.0)
    for j, (s0, length, limit, acc, dec, seg) in enumerate(pieces):
        here = stop_point.get(j)
        if j > 0 and here is not None and stop_at[here]:
            arrive = t
            seconds = legs[here].dwell
            if seconds:
                dwell(here, seconds, seg - 1)
            visit(here, arrive)
        at_s = s0
        for dur, dist, v0, rate in _piece_phases(u[j], u[j + 1], limit, acc, dec, length):
            phases.append(_Phase(t, dur, at_s, at_s + dist, v0, rate, seg, -1))
            at_s += dist
            t += dur
    arrive = t
    dwell(n - 1, legs[-1].dwell or 0.0, n - 2)
    visit(n - 1, arrive)
    return phases, stops


def _piece_phases(
    v0: float, v1: float, limit: float, acc: float, dec: float, length: float
) -> list[tuple[float, float, float, float]]:
    """(duration, distance, start speed, acceleration) for one piece of track."""
    out = []
    x_acc = max(0.0, (limit * limit - v0 * v0) / (2 * acc))
    x_dec = max(0.0, (limit * limit - v1 * v1) / (2 * dec))
    if x_acc + x_dec <= length:
        peak, x_acc_used, cruise = limit, x_acc, length - x_acc - x_dec
    else:
        x = (v1 * v1 - v0 * v0 + 2 * dec * length) / (2 * (acc + dec))
        x_acc_used = min(max(x, 0.0), length)
        peak = math.sqrt(max(0.0, v0 * v0 + 2 * acc * x_acc_used))
        cruise = 0.0
    if x_acc_used > _EPS and peak > v0:
        out.append(((peak - v0) / acc, x_acc_used, v0, acc))
    if cruise > _EPS:
        out.append((cruise / peak, cruise, peak, 0.0))
    x_dec_used = length - x_acc_used - cruise
    if x_dec_used > _EPS and peak > v1:
        out.append(((peak - v1) / dec, x_dec_used, peak, -dec))
    return out


# --------------------------------------------------------------------------- querying


def state_at(drive: Drive, t: float) -> VehicleState:
    """The vehicle's true state ``t`` seconds after the scenario start."""
    t = max(0.0, t)
    lap, lap_no, odo0, t_lap = drive.first, 0, 0.0, t
    if t >= drive.first.duration and drive.cycle:
        rest = t - drive.first.duration
        odo0, lap_no = drive.first.distance, 1
        cycle_t = sum(c.duration for c in drive.cycle)
        rounds = int(rest // cycle_t)
        rest -= rounds * cycle_t
        lap_no += rounds * len(drive.cycle)
        odo0 += rounds * sum(c.distance for c in drive.cycle)
        for i, candidate in enumerate(drive.cycle):
            lap = candidate
            if rest < candidate.duration or i == len(drive.cycle) - 1:
                break
            rest -= candidate.duration
            lap_no += 1
            odo0 += candidate.distance
        t_lap = min(rest, lap.duration)
    return _lap_state(lap, t, t_lap, lap_no, odo0, final=not drive.cycle)


def _lap_state(
    lap: Lap, t: float, t_lap: float, lap_no: int, odo0: float, *, final: bool
) -> VehicleState:
    i = min(max(bisect_right(lap.phase_t0, t_lap) - 1, 0), len(lap.phases) - 1)
    ph = lap.phases[i]
    tau = t_lap - ph.t0
    over = max(0.0, tau - ph.dur)
    tau = min(max(tau, 0.0), ph.dur)
    speed = max(0.0, ph.v0 + ph.acc * tau)
    s = min(max(ph.s0 + ph.v0 * tau + 0.5 * ph.acc * tau * tau, ph.s0), ph.s1)
    seg = ph.seg
    frac = min(max((s - lap.cum[seg]) / lap.seg_len[seg], 0.0), 1.0)
    a, b = lap.legs[seg], lap.legs[seg + 1]
    lat, lon = interpolate(a.lat, a.lon, b.lat, b.lon, frac)
    alt = a.alt + frac * (b.alt - a.alt)

    yaw = 0.0
    if ph.stop >= 0:
        course = lap.bearing_out[0] if ph.stop == 0 else lap.bearing_end[ph.stop - 1]
    else:
        course, yaw = _course(lap, seg, s, frac, lat, lon, speed)

    dwelling = ph.stop >= 0
    last = i == len(lap.phases) - 1
    leg = lap.legs[ph.stop] if dwelling else None
    return VehicleState(
        t=t,
        lat=lat,
        lon=lon,
        alt_m=alt,
        speed_mps=speed,
        accel_mps2=0.0 if dwelling or over > 0 else ph.acc,
        course_deg=course,
        yaw_rate_dps=yaw,
        moving=speed > 0.0,
        odometer_m=odo0 + s,
        lap=lap_no,
        stop_waypoint=leg.index if leg else None,
        stop_name=leg.name if leg else "",
        stopped_for_s=tau + over if dwelling else 0.0,
        stop_remaining_s=(math.inf if final and last else ph.dur - tau) if dwelling else 0.0,
    )


def _course(
    lap: Lap, seg: int, s: float, frac: float, lat: float, lon: float, speed: float
) -> tuple[float, float]:
    """Course and yaw rate while driving: smooth through arcs, great circle between."""
    k = bisect_right(lap.arc_lo, s) - 1
    if k >= 0 and s <= lap.arcs[k].hi:
        arc = lap.arcs[k]
        span = arc.hi - arc.lo
        course = (arc.course_lo + arc.turn * (s - arc.lo) / span) % 360.0
        return course, speed * arc.turn / span
    if frac >= 1.0 - 1e-12:
        return lap.bearing_end[seg], 0.0
    nxt = lap.legs[seg + 1]
    return initial_bearing_deg(lat, lon, nxt.lat, nxt.lon), 0.0
