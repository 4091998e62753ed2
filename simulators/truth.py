"""Ground truth for geofence tests: when the TRUE vehicle enters and leaves each zone.

Pure: a scenario goes in, answers come out; no I/O, no wall clock.  The truth
is taken from the noise-free kinematics (``route.state_at``), never from the
rendered NMEA, so a detector fed the noisy stream can be scored against it.

Visits are found by sampling the route every ``step_s`` (0.1 s by default;
at 50 km/h that is 1.4 m of road) and refining every change of inside/outside
by bisection to ``tolerance_s`` (1 ms by default).  A pass that clips a zone
for less than one step (a chord of well under a metre through a circle's
edge) can be missed; nothing else can.

Engine truth for the idle and trip detectors comes from the same schedule the
ECU model answers from (``ecu.engine_schedule``): ``engine_periods`` (running
intervals) and ``idle_periods`` (engine running, vehicle stopped).

Also renders a scenario's zones for the agent: as GeoJSON (circles as Point
features with ``properties.radius_m``, polygons as Polygon features with
closed ``[lon, lat]`` rings) and as a zone set (``{version, zones}``, the shape
of ``agent/geofence``'s model) in JSON-ready dicts or TOML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from simulators.ecu import engine_schedule
from simulators.route import build_drive, haversine_m, local_xy_m, point_in_ring, state_at
from simulators.scenario import CircleShape, Scenario, Zone

__all__ = [
    "ZONESET_VERSION",
    "IdlePeriod",
    "Visit",
    "border_distance_m",
    "engine_periods",
    "idle_periods",
    "zone_contains",
    "zone_visits",
    "zones_geojson",
    "zones_toml",
    "zoneset",
]

ZONESET_VERSION = 1


@dataclass(frozen=True, slots=True)
class Visit:
    """One stay of the true vehicle inside one zone.

    ``enter_s``/``exit_s`` are scenario seconds (rounded to 1 ms), ``entered``
    and ``exited`` the same instants in UTC.  A vehicle already inside at
    t = 0 has ``enter_s == 0`` and ``at_start``; one still inside at the end
    of the period has ``exited is None`` and ``inside_s`` counted to that end.
    ``dwelled`` is ``inside_s >= dwell_s``, where ``dwell_s`` is the zone's
    own ``dwell_s`` or 30 s.
    """

    zone_id: str
    entered: datetime
    exited: datetime | None
    inside_s: float
    dwell_s: float
    dwelled: bool
    enter_s: float
    exit_s: float | None
    at_start: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; times as ISO 8601 UTC with milliseconds and ``Z``."""
        return {
            "zone_id": self.zone_id,
            "entered": _iso(self.entered),
            "exited": None if self.exited is None else _iso(self.exited),
            "enter_s": self.enter_s,
            "exit_s": self.exit_s,
            "inside_s": self.inside_s,
            "dwell_s": self.dwell_s,
            "dwelled": self.dwelled,
            "at_start": self.at_start,
        }


# --------------------------------------------------------------------------- geometry


def zone_contains(zone: Zone, lat: float, lon: float) -> bool:
    """Whether a point is inside the zone (a circle's or polygon's border counts as inside).

    Circles use the great-circle distance to the centre; polygons the even-odd
    rule on their ``[lon, lat]`` rings, inside the outer ring and in no hole.
    """
    shape = zone.shape
    if isinstance(shape, CircleShape):
        return haversine_m(shape.lat, shape.lon, lat, lon) <= shape.radius_m
    if not point_in_ring(lon, lat, shape.outer):
        return False
    return not any(point_in_ring(lon, lat, hole) for hole in shape.holes)


def border_distance_m(zone: Zone, lat: float, lon: float) -> float:
    """Signed distance to the zone's border in metres: positive outside, negative inside."""
    shape = zone.shape
    if isinstance(shape, CircleShape):
        return haversine_m(shape.lat, shape.lon, lat, lon) - shape.radius_m
    nearest = math.inf
    for ring in (shape.outer, *shape.holes):
        xy = [local_xy_m(lat, lon, p_lat, p_lon) for p_lon, p_lat in ring]
        for k in range(len(xy)):
            nearest = min(nearest, _segment_distance(xy[k], xy[(k + 1) % len(xy)]))
    return -nearest if zone_contains(zone, lat, lon) else nearest


def _segment_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from the origin to the segment a-b (plane, metres)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy
    f = 0.0 if length2 == 0 else min(1.0, max(0.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + f * dx, ay + f * dy)


@dataclass(frozen=True, slots=True)
class _Bound:
    """A circle around a zone, for a cheap 'certainly outside' test."""

    lat: float
    lon: float
    radius_m: float


def _bound(zone: Zone) -> _Bound:
    shape = zone.shape
    if isinstance(shape, CircleShape):
        return _Bound(shape.lat, shape.lon, shape.radius_m)
    lat = sum(p[1] for p in shape.outer) / len(shape.outer)
    lon = sum(p[0] for p in shape.outer) / len(shape.outer)
    radius = max(haversine_m(lat, lon, p[1], p[0]) for p in shape.outer)
    return _Bound(lat, lon, radius)


# --------------------------------------------------------------------------- visits


def zone_visits(
    scenario: Scenario,
    *,
    duration_s: float | None = None,
    loop: bool = False,
    step_s: float = 0.1,
    tolerance_s: float = 0.001,
) -> list[Visit]:
    """Every visit of the true vehicle to every zone of the scenario, in time order.

    The period is the whole route (to the end of the last dwell), or
    ``duration_s`` seconds (which may run past the end: the vehicle stays
    parked; with ``loop`` the route repeats and ``duration_s`` is required).
    Zones are the scenario's ``all_zones``.  Ties in entry time are ordered
    by zone id.
    """
    if not (step_s > 0 and tolerance_s > 0):
        raise ValueError("step_s and tolerance_s must be positive")
    drive = build_drive(scenario, loop=loop)
    if duration_s is None:
        if loop:
            raise ValueError("a looping drive never ends: give duration_s")
        end = drive.duration
    else:
        if not (duration_s >= 0 and math.isfinite(duration_s)):
            raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s}")
        end = duration_s
    zones = scenario.all_zones
    if not zones:
        return []
    bounds = [_bound(z) for z in zones]

    def inside_at(k: int, t: float) -> bool:
        state = state_at(drive, t)
        return zone_contains(zones[k], state.lat, state.lon)

    def refine(k: int, lo: float, hi: float, was_inside: bool) -> float:
        while hi - lo > tolerance_s:
            mid = (lo + hi) / 2
            if inside_at(k, mid) == was_inside:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    open_since: list[float | None] = [None] * len(zones)
    spans: list[tuple[int, float, float | None]] = []  # zone, enter, exit (None: still in)
    steps = math.ceil(end / step_s - 1e-9)
    previous_t = 0.0
    for i in range(steps + 1):
        t = min(i * step_s, end)
        state = state_at(drive, t)
        for k, (zone, bound) in enumerate(zip(zones, bounds, strict=True)):
            near = _cheap_distance_m(bound.lat, bound.lon, state.lat, state.lon)
            inside = near <= bound.radius_m * 1.01 + 1.0 and zone_contains(
                zone, state.lat, state.lon
            )
            since = open_since[k]
            if i == 0:
                open_since[k] = 0.0 if inside else None
            elif inside and since is None:
                open_since[k] = refine(k, previous_t, t, False)
            elif not inside and since is not None:
                spans.append((k, since, refine(k, previous_t, t, True)))
                open_since[k] = None
        previous_t = t
    spans += [(k, since, None) for k, since in enumerate(open_since) if since is not None]

    visits = []
    for k, enter, leave in spans:
        zone = zones[k]
        enter_s = round(enter, 3)
        exit_s = None if leave is None else round(leave, 3)
        inside_s = round((end if exit_s is None else exit_s) - enter_s, 3)
        threshold = zone.dwell_threshold_s
        visits.append(
            Visit(
                zone_id=zone.id,
                entered=_utc(scenario, enter_s),
                exited=None if exit_s is None else _utc(scenario, exit_s),
                inside_s=inside_s,
                dwell_s=threshold,
                dwelled=inside_s >= threshold,
                enter_s=enter_s,
                exit_s=exit_s,
                at_start=enter == 0.0,
            )
        )
    visits.sort(key=lambda v: (v.enter_s, v.zone_id))
    return visits


def _cheap_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance: within 1 % of haversine at the scale of zones."""
    east, north = local_xy_m(lat1, lon1, lat2, lon2)
    return math.hypot(east, north)


def _utc(scenario: Scenario, seconds: float) -> datetime:
    return scenario.start_utc + timedelta(milliseconds=round(seconds * 1000))


def _iso(utc: datetime) -> str:
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True, slots=True)
class IdlePeriod:
    """A continuous time with the engine running and the vehicle stopped (speed 0).

    ``start_s``/``end_s`` are scenario seconds (``start``/``end`` the same in
    UTC); ``stop_name`` and ``waypoint`` name the stop where it idles.
    """

    start_s: float
    end_s: float
    duration_s: float
    stop_name: str
    waypoint: int
    start: datetime
    end: datetime

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; times as ISO 8601 UTC with milliseconds and ``Z``."""
        return {
            "stop": self.stop_name,
            "waypoint": self.waypoint,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
        }


def engine_periods(scenario: Scenario) -> list[tuple[float, float]]:
    """The engine's running intervals ``[start, end)``, scenario seconds, in order.

    The same schedule the ECU model answers from; the last interval ends when
    the engine goes off for good at the end of the route.
    """
    return engine_schedule(scenario)


def idle_periods(scenario: Scenario) -> list[IdlePeriod]:
    """Every idle of the route: engine running while stopped at a stop, in order.

    A stop with the engine ``off`` gives two short idles (before it stops and
    after it restarts); stops with ``dwell_s = 0`` give none.
    """
    drive = build_drive(scenario)
    running = engine_schedule(scenario, drive)
    out = []
    for visit in drive.first.stops:
        for lo, hi in running:
            start, end = max(lo, visit.arrive_s), min(hi, visit.depart_s)
            if end - start > 1e-9:
                start, end = round(start, 3), round(end, 3)
                out.append(
                    IdlePeriod(
                        start_s=start,
                        end_s=end,
                        duration_s=round(end - start, 3),
                        stop_name=visit.name,
                        waypoint=visit.waypoint,
                        start=_utc(scenario, start),
                        end=_utc(scenario, end),
                    )
                )
    return out


# --------------------------------------------------------------------------- rendering


def _zone_dict(zone: Zone) -> dict[str, Any]:
    data: dict[str, Any] = zone.model_dump(mode="json", exclude_none=True)
    shape = data["shape"]
    if shape["type"] == "polygon":
        shape["outer"] = [list(p) for p in shape["outer"]]
        shape["holes"] = [[list(p) for p in ring] for ring in shape["holes"]]
    data["tags"] = list(zone.tags)
    data["name"] = zone.name or zone.id  # the agent's model needs a name
    return data


def zoneset(scenario: Scenario) -> dict[str, Any]:
    """The scenario's zones as a zone set: ``{"version": 1, "zones": [...]}`` (JSON-ready)."""
    return {"version": ZONESET_VERSION, "zones": [_zone_dict(z) for z in scenario.all_zones]}


def zones_geojson(scenario: Scenario) -> dict[str, Any]:
    """The scenario's zones as a GeoJSON FeatureCollection.

    Circles are Point features with ``properties.radius_m``; polygons are
    Polygon features whose rings (outer, then holes) are closed ``[lon, lat]``
    lists.  ``properties`` also carry id, name, tags and, when set, dwell_s
    and speed_limit_kmh; each feature's ``id`` is the zone id.
    """
    features = []
    for zone in scenario.all_zones:
        props: dict[str, Any] = {"id": zone.id, "name": zone.name, "tags": list(zone.tags)}
        shape = zone.shape
        geometry: dict[str, Any]
        if isinstance(shape, CircleShape):
            geometry = {"type": "Point", "coordinates": [shape.lon, shape.lat]}
            props["radius_m"] = shape.radius_m
        else:
            rings = [_closed(shape.outer), *(_closed(h) for h in shape.holes)]
            geometry = {"type": "Polygon", "coordinates": rings}
        if zone.dwell_s is not None:
            props["dwell_s"] = zone.dwell_s
        if zone.speed_limit_kmh is not None:
            props["speed_limit_kmh"] = zone.speed_limit_kmh
        features.append(
            {"type": "Feature", "id": zone.id, "geometry": geometry, "properties": props}
        )
    return {"type": "FeatureCollection", "features": features}


def _closed(ring: tuple[tuple[float, float], ...]) -> list[list[float]]:
    points = [[lon, lat] for lon, lat in ring]
    if points[0] != points[-1]:
        points.append(list(points[0]))
    return points


def zones_toml(scenario: Scenario) -> str:
    """The zone set as TOML: ``version = 1`` and one ``[[zones]]`` table per zone."""
    lines = [f"version = {ZONESET_VERSION}"]
    for zone in zoneset(scenario)["zones"]:
        lines += ["", "[[zones]]"]
        for key, value in zone.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
