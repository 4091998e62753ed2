"""The geofence state machine on simulated drives with real numbers (seeded noise)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from agent.geofence.detector import GeofenceDetector
from agent.geofence.geometry import M_PER_DEG
from agent.geofence.model import Circle, Polygon, ZoneDef, ZoneSet
from agent.gps.fix import Fix, FixMode
from agent.messages import EventData, record_body

LAT0, LON0 = 52.52, 13.40
T0 = datetime(2026, 3, 2, 8, 0, 0, 370_000, tzinfo=UTC)  # fixes off the whole second


def at(north_m: float, east_m: float) -> tuple[float, float]:
    """Position ``north_m``/``east_m`` metres from (LAT0, LON0)."""
    return LAT0 + north_m / M_PER_DEG, LON0 + east_m / (M_PER_DEG * math.cos(math.radians(LAT0)))


def fix(
    t: float, north: float, east: float = 0.0, speed: float | None = 0.0, hdop: float | None = 1.0
) -> Fix:
    lat, lon = at(north, east)
    return Fix(
        time=T0 + timedelta(seconds=t), mono=t, mode=FixMode.FIX_3D, lat=lat, lon=lon,
        speed=speed, hdop=hdop, sats_used=10,
    )  # fmt: skip


def zoneset(*zones: ZoneDef, version: int = 1) -> ZoneSet:
    return ZoneSet(version=version, zones=zones)


def depot(radius: float = 100.0, **kw: object) -> ZoneDef:
    lat, lon = at(0.0, 0.0)
    return ZoneDef.model_validate(
        {
            "id": "depot",
            "name": "Depot",
            "tags": ["base"],
            "shape": Circle(lat=lat, lon=lon, radius_m=radius),
            **kw,
        }
    )


def run(det: GeofenceDetector, fixes: Iterable[Fix]) -> list[EventData]:
    out: list[EventData] = []
    for f in fixes:
        out.extend(det.feed(f))
    return out


def secs(e: EventData, key: str | None = None) -> float:
    """Seconds since T0 of the event's ts, or of an ISO time in its data."""
    ts = e.ts if key is None else datetime.fromisoformat(e.data[key])
    return (ts - T0).total_seconds()


def drive(
    segments: list[tuple[float, float]],
    start_north: float,
    rate_hz: float = 1.0,
    noise_m: float = 0.0,
    seed: int = 0,
    t0: float = 0.0,
) -> list[Fix]:
    """Drive along a meridian: (duration_s, speed m/s, negative = south) segments."""
    rnd = random.Random(seed)
    out, t, north, dt = [], t0, start_north, 1.0 / rate_hz
    for duration, speed in segments:
        end = t + duration
        while t < end - 1e-9:
            n, e = north + rnd.gauss(0, noise_m), rnd.gauss(0, noise_m)
            out.append(fix(t, n, e, abs(speed), rnd.uniform(0.8, 1.5)))
            t += dt
            north += speed * dt
    return out


def test_drive_through_with_stop_gives_enter_dwell_exit_at_true_times() -> None:
    det = GeofenceDetector(zoneset(depot()), approach=False)
    # 400 m south at 10 m/s: border at t=30, centre at t=40, stopped until t=100, border at t=110
    fixes = drive(
        [(40.0, 10.0), (60.0, 0.0), (40.0, 10.0)], start_north=-400.0, noise_m=1.0, seed=7
    )
    events = run(det, fixes)
    assert [e.type for e in events] == ["geofence_enter", "geofence_dwell", "geofence_exit"]
    enter, dwell, exit_ = events
    assert secs(enter) == pytest.approx(30.0, abs=1.0)
    assert secs(enter, "entered_at") == pytest.approx(secs(enter), abs=0.001)
    assert secs(dwell) == pytest.approx(60.0, abs=1.0)  # entered + default 30 s
    assert secs(exit_) == pytest.approx(110.0, abs=1.0)
    assert secs(exit_, "exited_at") == pytest.approx(110.0, abs=1.0)
    assert secs(exit_, "entered_at") == secs(enter)
    assert exit_.data["dwell_s"] == pytest.approx(80.0, abs=2.0)
    assert exit_.data["arrived"] is True
    assert enter.data["initial"] is False
    for e in events:
        assert (
            e.data["zone_id"] == "depot"
            and e.data["name"] == "Depot"
            and e.data["tags"] == ["base"]
        )
        assert set(e.data["fix"]) == {"ts", "lat", "lon", "speed", "hdop"}
        assert EventData.model_validate_json(record_body(e)) == e  # survives the outbox
    # the deciding fix comes after the true time: confirmation waits min_side_s
    assert (
        secs(enter, None) < (datetime.fromisoformat(enter.data["fix"]["ts"]) - T0).total_seconds()
    )
    assert det.inside() == []


def test_pass_through_shorter_than_dwell_has_no_dwell() -> None:
    det = GeofenceDetector(zoneset(depot()), approach=False)
    events = run(det, drive([(80.0, 10.0)], start_north=-400.0))  # inside t=30..50
    assert [e.type for e in events] == ["geofence_enter", "geofence_exit"]
    assert secs(events[0]) == pytest.approx(30.0, abs=1.0)
    assert secs(events[1]) == pytest.approx(50.0, abs=1.0)
    assert events[1].data["dwell_s"] == pytest.approx(20.0, abs=1.0)
    assert events[1].data["arrived"] is False


def test_zone_dwell_overrides_default() -> None:
    det = GeofenceDetector(zoneset(depot(dwell_s=5.0)), approach=False)
    events = run(det, drive([(80.0, 10.0)], start_north=-400.0))
    assert [e.type for e in events] == ["geofence_enter", "geofence_dwell", "geofence_exit"]
    assert secs(events[1]) == pytest.approx(35.0, abs=1.0)


def parked(
    seconds: int, north: float, noise_m: float, seed: int, *, walk: bool = False, t0: float = 0.0
) -> list[Fix]:
    """Parked at ``north`` with Gaussian (or slowly wandering) position noise, 1 Hz."""
    rnd = random.Random(seed)
    out, bn, be = [], 0.0, 0.0
    for t in range(seconds):
        if walk:  # AR(1) multipath wander with the same spread
            a = 0.98
            bn = a * bn + math.sqrt(1 - a * a) * rnd.gauss(0, noise_m)
            be = a * be + math.sqrt(1 - a * a) * rnd.gauss(0, noise_m)
            dn, de = bn, be
        else:
            dn, de = rnd.gauss(0, noise_m), rnd.gauss(0, noise_m)
        out.append(
            fix(
                t0 + t + rnd.uniform(-0.05, 0.05),
                north + dn,
                de,
                abs(rnd.gauss(0, 0.15)),
                rnd.uniform(1.0, 2.0),
            )
        )
    return out


@pytest.mark.parametrize("walk", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parked_near_border_with_noise_gives_no_events(seed: int, walk: bool) -> None:
    """10 m outside a border, 15 m noise, 30 minutes: the van never moved, so nothing happened."""
    det = GeofenceDetector(zoneset(depot()))
    assert run(det, parked(1800, -110.0, 15.0, seed, walk=walk)) == []
    assert det.fixes == 1800


def test_parked_inside_from_start_is_one_initial_enter_after_the_hold() -> None:
    """Booted parked well inside: announced once the side has held for a minute."""
    det = GeofenceDetector(zoneset(depot()))
    events = run(det, parked(1800, -60.0, 5.0, 5))
    assert [e.type for e in events] == ["geofence_enter", "geofence_dwell"]
    assert events[0].data["initial"] is True
    assert secs(events[0]) == pytest.approx(0.0, abs=0.1)  # the run's first fix
    assert secs(events[1]) == pytest.approx(30.0, abs=0.1)


def test_booted_parked_within_noise_of_the_border_stays_undecided() -> None:
    """10 m inside with 15 m noise cannot be told from outside: say nothing."""
    det = GeofenceDetector(zoneset(depot()))
    assert run(det, parked(1800, -90.0, 15.0, 5)) == []
    events = run(det, drive([(30.0, -10.0)], start_north=-90.0, t0=1801.0))
    assert events == []  # it drove off south: it was never known to be inside, so no exit


def test_drive_up_and_park_outside_gives_only_the_approach() -> None:
    det = GeofenceDetector(zoneset(depot()))
    events = run(det, drive([(29.0, 10.0)], start_north=-400.0))  # last fix 120 m from centre
    events += run(det, parked(1800, -110.0, 15.0, 9, t0=30.0))
    assert [e.type for e in events] == ["geofence_approach"]


def test_poor_fixes_are_ignored_and_counted() -> None:
    det = GeofenceDetector(zoneset(depot()), approach=False)
    fixes = drive([(80.0, 10.0)], start_north=-400.0)
    bad = [dataclasses.replace(f, hdop=8.0) if 25 <= f.mono <= 55 else f for f in fixes]
    bad.insert(10, Fix(time=None, mono=9.5, mode=FixMode.FIX_3D, lat=LAT0, lon=LON0))
    bad.insert(11, Fix(time=T0 + timedelta(seconds=9.6), mono=9.6, mode=FixMode.NO_FIX))
    bad.insert(12, fixes[3])  # out of order
    assert run(det, bad) == []
    assert det.ignored == 31 + 3
    assert det.fixes == 80 - 31


def test_fixes_without_speed_or_hdop_still_work() -> None:
    det = GeofenceDetector(zoneset(depot()), approach=False)
    fixes = [dataclasses.replace(f, speed=None, hdop=None) for f in drive([(80.0, 10.0)], -400.0)]
    assert [e.type for e in run(det, fixes)] == ["geofence_enter", "geofence_exit"]


def test_set_zones_mid_visit() -> None:
    det = GeofenceDetector(zoneset(depot()), approach=False)
    fixes = drive([(40.0, 10.0), (100.0, 0.0), (40.0, 10.0)], start_north=-400.0)
    events = run(det, fixes[:50])
    assert [e.type for e in events] == ["geofence_enter"]
    # renamed, same geometry: the visit continues, nothing is emitted
    renamed = depot().model_copy(update={"name": "Main depot"})
    det.set_zones(zoneset(renamed, version=2))
    assert det.version == 2
    events = run(det, fixes[50:])
    assert [e.type for e in events] == ["geofence_dwell", "geofence_exit"]
    assert events[1].data["name"] == "Main depot"
    assert secs(events[1], "entered_at") == pytest.approx(30.0, abs=1.0)
    assert secs(events[1]) == pytest.approx(150.0, abs=1.0)


def test_removed_zone_mid_visit_gives_no_exit_and_new_zone_gives_initial_enter() -> None:
    det = GeofenceDetector(zoneset(depot()), approach=False)
    fixes = drive([(40.0, 10.0), (200.0, 0.0)], start_north=-400.0)
    assert [e.type for e in run(det, fixes[:50])] == ["geofence_enter"]
    lat, lon = at(0.0, 0.0)
    yard = ZoneDef(id="yard", name="Yard", shape=Circle(lat=lat, lon=lon, radius_m=300))
    det.set_zones(zoneset(yard, version=3))
    events = run(det, fixes[50:])
    assert [(e.type, e.data["zone_id"]) for e in events] == [
        ("geofence_enter", "yard"),
        ("geofence_dwell", "yard"),
    ]
    assert events[0].data["initial"] is True


def test_changed_geometry_keeps_the_visit_and_new_shape_decides() -> None:
    det = GeofenceDetector(zoneset(depot()), approach=False)
    fixes = drive([(40.0, 10.0), (100.0, 0.0), (20.0, 10.0)], start_north=-400.0)
    assert [e.type for e in run(det, fixes[:50])] == ["geofence_enter"]
    det.set_zones(zoneset(depot(radius=300.0)))
    events = run(det, fixes[50:])  # moves on to 200 m: still inside the bigger depot
    assert [e.type for e in events] == ["geofence_dwell"]
    assert det.inside() == ["depot"]


def test_approach_once_per_visit_and_rearmed_far_away() -> None:
    det = GeofenceDetector(zoneset(depot()))
    # from 5 km south at 10 m/s (ETA trigger at 3 km), through, 5 km north, and back
    out = drive([(1000.0, 10.0)], start_north=-5000.0)
    back = [fix(1000.0 + k, 5000.0 - 10.0 * k, 0.0, 10.0) for k in range(1000)]
    events = run(det, out + back)
    kinds = [e.type for e in events]
    assert kinds == ["geofence_approach", "geofence_enter", "geofence_exit"] * 2
    first = events[0]
    assert first.data["distance_m"] == pytest.approx(3000.0, abs=10.0)  # 300 s at 10 m/s
    assert first.data["eta_s"] == pytest.approx(first.data["distance_m"] / 10.0, abs=0.1)
    assert secs(first) == pytest.approx(190.0, abs=1.5)


def test_limits_at() -> None:
    lat, lon = at(0.0, 0.0)
    ring = [
        (lon - 0.01, lat - 0.01),
        (lon + 0.01, lat - 0.01),
        (lon + 0.01, lat + 0.01),
        (lon - 0.01, lat + 0.01),
    ]
    zs = zoneset(
        depot(speed_limit_kmh=10.0),
        ZoneDef(
            id="town",
            name="Town",
            shape=Polygon.model_validate({"outer": ring}),
            speed_limit_kmh=30.0,
        ),
        ZoneDef(id="lot", name="Lot", shape=Circle(lat=lat, lon=lon, radius_m=50.0)),
    )
    det = GeofenceDetector(zs)
    assert det.limits_at(*at(0.0, 0.0)) == 10.0
    assert det.limits_at(*at(500.0, 0.0)) == 30.0
    assert det.limits_at(*at(5000.0, 0.0)) is None


def test_deterministic() -> None:
    fixes = parked(600, -95.0, 15.0, 4) + drive([(60.0, 10.0)], start_north=-95.0)
    a = run(GeofenceDetector(zoneset(depot())), fixes)
    b = run(GeofenceDetector(zoneset(depot())), fixes)
    assert [e.model_dump() for e in a] == [e.model_dump() for e in b]
