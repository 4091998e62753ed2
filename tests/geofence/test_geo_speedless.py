"""Receivers without speed (GGA-only) parked on a border must not flap."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from agent.geofence.detector import GeofenceDetector
from agent.geofence.model import ZoneSet
from agent.gps.fix import Fix, FixMode
from simulators.nmea_out import parked_offset_m
from simulators.route import offset_m

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
ZONE = ZoneSet.model_validate(
    {
        "version": 1,
        "zones": [
            {
                "id": "yard",
                "name": "Yard",
                "shape": {"type": "circle", "lat": 52.0, "lon": 5.0, "radius_m": 50},
            }
        ],
    }
)


def parked_fixes(seed: int, speed: float | None, ar1: bool) -> list[Fix]:
    """30 min parked 10 m outside the border with 15 m of GNSS error, 1 Hz:
    the simulator's slow wander, or an AR(1) process (sigma 15 m, ~33 s)."""
    lat0, lon0 = offset_m(52.0, 5.0, 60.0, 0.0)
    rnd = random.Random(seed)
    a, step = 0.97, 15.0 * math.sqrt(1 - 0.97**2)
    n = e = 0.0
    fixes = []
    for i in range(1800):
        if ar1:
            n, e = a * n + rnd.gauss(0, step), a * e + rnd.gauss(0, step)
            north, east = n, e
        else:
            north, east = parked_offset_m(seed, float(i), 15.0)
        lat, lon = offset_m(lat0, lon0, north, east)
        fixes.append(
            Fix(
                time=T0 + timedelta(seconds=i),
                mono=float(i),
                mode=FixMode.FIX_3D,
                lat=lat,
                lon=lon,
                speed=speed,
                hdop=1.0,
            )
        )
    return fixes


@pytest.mark.parametrize("ar1", [False, True])
def test_parked_on_a_border_without_speed_is_silent(ar1: bool) -> None:
    for seed in range(5):
        fixes = parked_fixes(seed, speed=None, ar1=ar1)
        inside = sum(
            1
            for f in fixes
            if ((f.lat - 52.0) * 111_195) ** 2 + ((f.lon - 5.0) * 68_450) ** 2 < 50**2
        )
        det = GeofenceDetector(ZONE)
        events = [e for f in fixes for e in det.feed(f)]
        assert [e.type for e in events if e.type != "geofence_approach"] == [], (seed, inside)


def test_driving_in_without_speed_still_enters() -> None:
    det = GeofenceDetector(ZONE)
    events = []
    for i in range(60):  # 10 m/s due south, from 300 m north through the centre
        lat, lon = offset_m(52.0, 5.0, 300.0 - 10.0 * i, 0.0)
        fix = Fix(
            time=T0 + timedelta(seconds=i),
            mono=float(i),
            mode=FixMode.FIX_3D,
            lat=lat,
            lon=lon,
            speed=None,
            hdop=1.0,
        )
        events += det.feed(fix)
    kinds = [e.type for e in events if e.type != "geofence_approach"]
    assert kinds == ["geofence_enter", "geofence_exit"]
