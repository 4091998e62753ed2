"""The grid index finds exactly what brute force finds, over 10,000 zones."""

from __future__ import annotations

import math
import random

import pytest

from agent.geofence.geometry import (
    M_PER_DEG,
    CompiledZone,
    center_distance_m,
    compile_zone,
    signed_distance_m,
)
from agent.geofence.index import ZoneIndex
from agent.geofence.model import Circle, Polygon, ZoneDef


def random_zones(
    rnd: random.Random, n: int, lat0: float, lon0: float, span_m: float
) -> list[CompiledZone]:
    """Circles and star-ish polygons scattered over a ``span_m`` square."""
    out = []
    k = 1.0 / M_PER_DEG
    coslat = math.cos(math.radians(lat0))
    for i in range(n):
        clat = lat0 + rnd.uniform(-span_m, span_m) / 2 * k
        clon = lon0 + rnd.uniform(-span_m, span_m) / 2 * k / coslat
        if rnd.random() < 0.5:
            shape: Circle | Polygon = Circle(lat=clat, lon=clon, radius_m=rnd.uniform(20, 400))
        else:
            r = rnd.uniform(20, 600)
            m = rnd.randint(3, 12)
            pts = []
            for j in range(m):
                a = 2 * math.pi * j / m
                rr = r * rnd.uniform(0.4, 1.0)
                pts.append((clon + rr * math.cos(a) * k / coslat, clat + rr * math.sin(a) * k))
            shape = Polygon.model_validate({"outer": pts})
        out.append(compile_zone(ZoneDef(id=f"z{i}", name=f"zone {i}", shape=shape), i))
    return out


@pytest.mark.parametrize(("lat0", "lon0"), [(52.52, 13.40), (-33.87, 151.21), (64.1, -21.9)])
def test_near_equals_brute_force(lat0: float, lon0: float) -> None:
    rnd = random.Random(f"{lat0},{lon0}")
    zones = random_zones(rnd, 10_000, lat0, lon0, 30_000.0)
    index = ZoneIndex(zones)
    coslat = math.cos(math.radians(lat0))
    for q in range(150):
        lat = lat0 + rnd.uniform(-17_000, 17_000) / M_PER_DEG
        lon = lon0 + rnd.uniform(-17_000, 17_000) / M_PER_DEG / coslat
        margin = rnd.choice([0.0, 5.0, 25.0, 1000.0, 3000.0])
        got = index.near(lat, lon, margin)
        want = [z for z in zones if center_distance_m(z, lat, lon) <= z.bound_m + margin]
        assert [z.index for z in got] == [z.index for z in want]
        if q < 20:  # the property the detector relies on, by exact distance
            ids = {z.index for z in got}
            for z in zones:
                if signed_distance_m(z, lat, lon) <= margin:
                    assert z.index in ids


def test_antimeridian_and_big_zones() -> None:
    zones = [
        compile_zone(
            ZoneDef(id="east", name="e", shape=Circle(lat=0.0, lon=179.999, radius_m=300)), 0
        ),
        compile_zone(
            ZoneDef(id="west", name="w", shape=Circle(lat=0.0, lon=-179.999, radius_m=300)), 1
        ),
        compile_zone(
            ZoneDef(id="big", name="b", shape=Circle(lat=1.0, lon=179.0, radius_m=50_000)), 2
        ),
        compile_zone(
            ZoneDef(id="pole", name="p", shape=Circle(lat=89.99, lon=0.0, radius_m=5000)), 3
        ),
    ]
    index = ZoneIndex(zones)
    assert [z.id for z in index.near(0.0, 180.0, 10.0)] == ["east", "west"]
    assert [z.id for z in index.near(0.0, -179.9985, 0.0)] == ["east", "west"]
    assert [z.id for z in index.near(0.9, 179.1, 0.0)] == ["big"]
    assert [z.id for z in index.near(89.995, 120.0, 0.0)] == ["pole"]
    assert index.near(45.0, 0.0, 1000.0) == []
