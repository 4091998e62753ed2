"""Signed distance from a GNSS position to a zone's border, in metres.

Pure Python on purpose: it runs on a Pi and on Android/Termux where GEOS is
not an option.  Each zone is compiled once into local metres around its own
centre (an equirectangular projection), so a query is a handful of float
operations per edge.  The x scale is corrected to the query's latitude,
which keeps the error second order in the distance to the nearest border
point (centimetres where it matters: near the border).  Polygon edges are
straight lines in lon/lat, as GeoJSON (RFC 7946) defines them.  Longitudes
are unwrapped around each zone, so zones across the antimeridian work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.geofence.model import Circle, Polygon, Shape, ZoneDef

EARTH_RADIUS_M = 6_371_008.8  # same mean radius as agent.gps.sampler.haversine_m
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_RAD = math.pi / 180.0


def wrap_dlon(dlon: float) -> float:
    """A longitude difference folded into [-180, 180]."""
    if dlon > 180.0:
        return dlon - 360.0
    if dlon < -180.0:
        return dlon + 360.0
    return dlon


@dataclass(slots=True, eq=False)
class CompiledZone:
    """A zone ready for fast queries; ``index`` is its position in the zone set."""

    zone: ZoneDef
    index: int
    lat0: float
    lon0: float
    cos0: float
    bound_m: float  # every point of the zone is within this of (lat0, lon0)
    radius_m: float  # circles only, else 0
    # polygons: all rings (outer first, then holes), closed, in local metres
    rings: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]

    @property
    def id(self) -> str:
        return self.zone.id

    @property
    def shape(self) -> Shape:
        return self.zone.shape


def compile_zone(zone: ZoneDef, index: int = 0) -> CompiledZone:
    """Project a zone once around its centre so every later query is cheap."""
    shape = zone.shape
    if isinstance(shape, Circle):
        return CompiledZone(
            zone, index, shape.lat, shape.lon, math.cos(shape.lat * _RAD), shape.radius_m,
            shape.radius_m, (),
        )  # fmt: skip
    assert isinstance(shape, Polygon)
    ref = shape.outer[0][0]
    lons = [ref + wrap_dlon(p[0] - ref) for p in shape.outer]
    lats = [p[1] for p in shape.outer]
    lat0 = (min(lats) + max(lats)) / 2.0
    lon0 = (min(lons) + max(lons)) / 2.0
    if lon0 > 180.0:
        lon0 -= 360.0
    elif lon0 < -180.0:
        lon0 += 360.0
    cos0 = math.cos(lat0 * _RAD)
    kx = M_PER_DEG * cos0
    rings = []
    bound = 0.0
    for ring in (shape.outer, *shape.holes):
        xs = tuple(wrap_dlon(p[0] - lon0) * kx for p in ring)
        ys = tuple((p[1] - lat0) * M_PER_DEG for p in ring)
        rings.append((xs, ys))
    # bound: the true (haversine-like) distance of the farthest outer vertex
    for lon, lat in shape.outer:
        c = math.cos((lat + lat0) / 2.0 * _RAD)
        dx = wrap_dlon(lon - lon0) * M_PER_DEG * c
        dy = (lat - lat0) * M_PER_DEG
        bound = max(bound, math.hypot(dx, dy))
    return CompiledZone(zone, index, lat0, lon0, cos0, bound * 1.001 + 0.01, 0.0, tuple(rings))


def center_distance_m(z: CompiledZone, lat: float, lon: float) -> float:
    """Distance from the zone's centre, equirectangular at the mean latitude.

    cos(mean latitude) is taken to first order from the query's latitude, so
    the index can share one cos/sin per query; :class:`ZoneIndex` repeats
    this exact expression and the two must stay identical.
    """
    c = math.cos(lat * _RAD)
    sh = math.sin(lat * _RAD) * (_RAD / 2.0)
    dlon = z.lon0 - lon
    if dlon > 180.0 or dlon < -180.0:
        dlon = wrap_dlon(dlon)
    dlat = z.lat0 - lat
    dx = dlon * M_PER_DEG * (c - sh * dlat)
    dy = dlat * M_PER_DEG
    return math.sqrt(dx * dx + dy * dy)


def signed_distance_m(z: CompiledZone, lat: float, lon: float) -> float:
    """Metres from (lat, lon) to the zone's border: negative inside, holes are outside."""
    if not z.rings:
        return center_distance_m(z, lat, lon) - z.radius_m
    qx = wrap_dlon(lon - z.lon0) * M_PER_DEG * z.cos0
    qy = (lat - z.lat0) * M_PER_DEG
    # The zone's x metres are at cos(lat0); rescale them to the query latitude.
    s = math.cos(lat * _RAD) / z.cos0 if z.cos0 > 1e-9 else 1.0
    inside = False
    best = math.inf
    for xs, ys in z.rings:
        ax = (xs[0] - qx) * s
        ay = ys[0] - qy
        for i in range(1, len(xs)):
            bx = (xs[i] - qx) * s
            by = ys[i] - qy
            # ray from the query point along +x: even-odd crossings
            if (ay > 0.0) != (by > 0.0) and ax - ay * (bx - ax) / (by - ay) > 0.0:
                inside = not inside
            ex = bx - ax
            ey = by - ay
            l2 = ex * ex + ey * ey
            t = -(ax * ex + ay * ey) / l2 if l2 > 0.0 else 0.0
            if t <= 0.0:
                d2 = ax * ax + ay * ay
            elif t >= 1.0:
                d2 = bx * bx + by * by
            else:
                px = ax + t * ex
                py = ay + t * ey
                d2 = px * px + py * py
            if d2 < best:
                best = d2
            ax = bx
            ay = by
    d = math.sqrt(best)
    return -d if inside else d


def contains(z: CompiledZone, lat: float, lon: float) -> bool:
    """True when the point is inside the zone (on the border counts as outside)."""
    return signed_distance_m(z, lat, lon) < 0.0
