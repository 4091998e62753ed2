"""Benchmark: per-fix cost of the geofence detector with 10,000 zones.

    .venv/bin/python bench/bench_geofence.py [--zones 10000] [--fixes 3600] [--seed 1]

Zones are random circles (20-400 m) and polygons (3-12 vertices, 20-600 m)
over a 20 km x 20 km city; the drive is a seeded random walk of straight
legs at 5-15 m/s with 1 Hz fixes, parked stops included.  Each ``feed`` is
timed with ``time.perf_counter_ns``; median and p99 are printed (figures,
not assertions; docs/GEOFENCES.md records them).  Run once with approach
events on (the default, up to a 3 km query) and once with them off.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.geofence.detector import GeofenceDetector
from agent.geofence.geometry import M_PER_DEG
from agent.geofence.model import Circle, Polygon, ZoneDef, ZoneSet
from agent.gps.fix import Fix, FixMode

LAT0, LON0 = 52.52, 13.40
SPAN_M = 20_000.0


def city_zones(n: int, rnd: random.Random) -> ZoneSet:
    k, coslat = 1.0 / M_PER_DEG, math.cos(math.radians(LAT0))
    zones = []
    for i in range(n):
        clat = LAT0 + rnd.uniform(-SPAN_M, SPAN_M) / 2 * k
        clon = LON0 + rnd.uniform(-SPAN_M, SPAN_M) / 2 * k / coslat
        if rnd.random() < 0.5:
            shape: Circle | Polygon = Circle(lat=clat, lon=clon, radius_m=rnd.uniform(20, 400))
        else:
            r, m = rnd.uniform(20, 600), rnd.randint(3, 12)
            pts = [
                (
                    clon + r * rnd.uniform(0.4, 1) * math.cos(2 * math.pi * j / m) * k / coslat,
                    clat + r * rnd.uniform(0.4, 1) * math.sin(2 * math.pi * j / m) * k,
                )
                for j in range(m)
            ]
            shape = Polygon.model_validate({"outer": pts})
        zones.append(ZoneDef(id=f"z{i}", name=f"Zone {i}", shape=shape))
    return ZoneSet(version=1, zones=zones)


def city_drive(n: int, rnd: random.Random) -> list[Fix]:
    t0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    x = y = 0.0
    fixes: list[Fix] = []
    heading, speed, leg = 0.0, 10.0, 0
    for t in range(n):
        if leg <= 0:
            heading = rnd.uniform(0, 2 * math.pi)
            speed = 0.0 if rnd.random() < 0.15 else rnd.uniform(5, 15)
            leg = rnd.randint(20, 120)
        leg -= 1
        x += speed * math.cos(heading)
        y += speed * math.sin(heading)
        if abs(x) > SPAN_M / 2 or abs(y) > SPAN_M / 2:
            heading += math.pi
            x, y = max(-SPAN_M / 2, min(SPAN_M / 2, x)), max(-SPAN_M / 2, min(SPAN_M / 2, y))
        lat = LAT0 + (y + rnd.gauss(0, 3)) / M_PER_DEG
        lon = LON0 + (x + rnd.gauss(0, 3)) / (M_PER_DEG * math.cos(math.radians(LAT0)))
        fixes.append(
            Fix(
                time=t0 + timedelta(seconds=t),
                mono=float(t),
                mode=FixMode.FIX_3D,
                lat=lat,
                lon=lon,
                speed=speed,
                hdop=rnd.uniform(0.7, 2.0),
                sats_used=12,
            )
        )
    return fixes


def measure(zs: ZoneSet, fixes: list[Fix], approach: bool) -> tuple[list[int], int, float]:
    t = time.perf_counter()
    det = GeofenceDetector(zs, approach=approach)
    build_s = time.perf_counter() - t
    times: list[int] = []
    events = 0
    for f in fixes:
        t0 = time.perf_counter_ns()
        out = det.feed(f)
        times.append(time.perf_counter_ns() - t0)
        events += len(out)
    return times, events, build_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zones", type=int, default=10_000)
    ap.add_argument("--fixes", type=int, default=3600)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)
    t = time.perf_counter()
    zs = city_zones(args.zones, rnd)
    print(f"{args.zones} zones validated in {time.perf_counter() - t:.2f} s")
    fixes = city_drive(args.fixes, rnd)
    for approach in (True, False):
        times, events, build_s = measure(zs, fixes, approach)
        q = statistics.quantiles(times, n=100)
        print(
            f"approach={'on ' if approach else 'off'}: build {build_s * 1000:.0f} ms, "
            f"{len(fixes)} fixes, {events} events, per fix median {statistics.median(times) / 1000:.0f} us, "
            f"p99 {q[98] / 1000:.0f} us, max {max(times) / 1000:.0f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
