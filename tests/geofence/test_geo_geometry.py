"""Geometry against the great-circle truth: circles, squares, holes, antimeridian."""

from __future__ import annotations

import math
import random

import pytest

from agent.geofence.geometry import compile_zone, signed_distance_m
from agent.geofence.model import Circle, Polygon, ZoneDef
from agent.gps.geo import EARTH_RADIUS_M, haversine_m


def dest(lat: float, lon: float, bearing: float, dist: float) -> tuple[float, float]:
    """Point at ``dist`` metres on ``bearing`` from (lat, lon), on the sphere."""
    d = dist / EARTH_RADIUS_M
    b, p1, l1 = math.radians(bearing), math.radians(lat), math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def circle(lat: float, lon: float, r: float) -> ZoneDef:
    return ZoneDef(id="c", name="c", shape=Circle(lat=lat, lon=lon, radius_m=r))


def poly(
    outer: list[tuple[float, float]], holes: list[list[tuple[float, float]]] | None = None
) -> ZoneDef:
    return ZoneDef(
        id="p", name="p", shape=Polygon.model_validate({"outer": outer, "holes": holes or []})
    )


@pytest.mark.parametrize("lat", [0.0, 45.0, 60.0, 70.0, -33.9])
@pytest.mark.parametrize("radius", [30.0, 500.0, 5000.0])
def test_circle_matches_haversine(lat: float, radius: float) -> None:
    z = compile_zone(circle(lat, 10.0, radius))
    rnd = random.Random(f"{lat}/{radius}")
    for _ in range(500):
        d = rnd.uniform(0.0, radius + 2000.0)
        plat, plon = dest(lat, 10.0, rnd.uniform(0.0, 360.0), d)
        truth = haversine_m(lat, 10.0, plat, plon) - radius
        assert signed_distance_m(z, plat, plon) == pytest.approx(truth, abs=0.01)


def square(lat0: float, lon0: float, side_m: float) -> list[tuple[float, float]]:
    """A lon/lat square of about ``side_m`` around (lat0, lon0), [lon, lat] corners."""
    dlat = side_m / 2 / (EARTH_RADIUS_M * math.pi / 180)
    dlon = dlat / math.cos(math.radians(lat0))
    return [
        (lon0 - dlon, lat0 - dlat),
        (lon0 + dlon, lat0 - dlat),
        (lon0 + dlon, lat0 + dlat),
        (lon0 - dlon, lat0 + dlat),
    ]


@pytest.mark.parametrize("lat0", [0.0, 52.5, 65.0])
@pytest.mark.parametrize("side", [100.0, 2000.0, 4000.0])
def test_square_edges_match_haversine(lat0: float, side: float) -> None:
    """Off the middle of each edge, the distance is the great-circle one to the edge."""
    ring = square(lat0, 13.0, side)
    z = compile_zone(poly(ring))
    (w, s), (e, _), (_, n), _ = ring
    mid_lat, mid_lon = (s + n) / 2, (w + e) / 2
    for off in (-40.0, -5.0, -0.5, 0.5, 5.0, 40.0, 300.0):
        # north edge: move north from its midpoint; east edge: east along the parallel
        plat, plon = dest(n, mid_lon, 0.0, off)
        assert signed_distance_m(z, plat, plon) == pytest.approx(off, abs=0.1)
        plon = e + off / (EARTH_RADIUS_M * math.pi / 180 * math.cos(math.radians(mid_lat)))
        truth = math.copysign(haversine_m(mid_lat, e, mid_lat, plon), off)
        assert signed_distance_m(z, mid_lat, plon) == pytest.approx(truth, abs=0.1)
    assert signed_distance_m(z, mid_lat, mid_lon) == pytest.approx(-side / 2, rel=1e-3)


def test_corner_distance_is_to_the_vertex() -> None:
    ring = square(48.0, 2.0, 200.0)
    z = compile_zone(poly(ring))
    lon, lat = ring[2]  # north-east corner
    plat, plon = dest(lat, lon, 45.0, 50.0)
    assert signed_distance_m(z, plat, plon) == pytest.approx(
        haversine_m(lat, lon, plat, plon), abs=0.05
    )


def test_hole_counts_as_outside() -> None:
    outer = square(40.0, -3.0, 1000.0)
    hole = square(40.0, -3.0, 200.0)
    z = compile_zone(poly(outer, [hole]))
    # centre of the hole: 100 m from the hole's border, outside the zone
    assert signed_distance_m(z, 40.0, -3.0) == pytest.approx(100.0, abs=0.2)
    # between hole and outer border: inside, nearest border the hole's (100 m wide band)
    plat, plon = dest(40.0, -3.0, 0.0, 200.0)
    assert signed_distance_m(z, plat, plon) == pytest.approx(-100.0, abs=0.2)
    plat, plon = dest(40.0, -3.0, 0.0, 600.0)
    assert signed_distance_m(z, plat, plon) == pytest.approx(100.0, abs=0.2)


def test_concave_polygon_ray_casting() -> None:
    """A U shape: the notch is outside even though it is within the bounding box."""
    k = 1 / (EARTH_RADIUS_M * math.pi / 180)  # degrees per metre (at the equator)
    u = [(0, 0), (300, 0), (300, 300), (200, 300), (200, 100), (100, 100), (100, 300), (0, 300)]
    z = compile_zone(poly([(x * k, y * k) for x, y in u]))
    assert signed_distance_m(z, 200 * k, 150 * k) == pytest.approx(50.0, abs=0.05)  # notch
    assert signed_distance_m(z, 200 * k, 50 * k) == pytest.approx(-50.0, abs=0.05)  # left arm
    assert signed_distance_m(z, 50 * k, 150 * k) == pytest.approx(-50.0, abs=0.05)  # base


def test_antimeridian_circle_and_polygon() -> None:
    z = compile_zone(circle(-17.0, 179.9995, 200.0))
    plat, plon = dest(-17.0, 179.9995, 90.0, 150.0)  # lands at about -179.999
    assert plon < 0
    assert signed_distance_m(z, plat, plon) == pytest.approx(-50.0, abs=0.01)
    ring = [(179.99, -17.01), (-179.99, -17.01), (-179.99, -16.99), (179.99, -16.99)]
    zp = compile_zone(poly(ring))
    assert signed_distance_m(zp, -17.0, 180.0) < -1000
    assert signed_distance_m(zp, -17.0, -179.999) < 0
    assert signed_distance_m(zp, -17.0, -179.98) > 0
    assert signed_distance_m(zp, -17.0, 179.98) > 0
