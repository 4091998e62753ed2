"""Position sampler: periodic while moving, turns and distance, heartbeat when parked."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from agent.gps.fix import Fix, FixMode
from agent.gps.geo import haversine_m
from agent.gps.sampler import SPEED_REASON, PositionSampler

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def fix(
    t: float,
    lat: float = 52.0,
    lon: float = 4.0,
    speed: float | None = 10.0,
    course: float = 90.0,
) -> Fix:
    return Fix(
        time=T0 + timedelta(seconds=t),
        mono=t,
        mode=FixMode.FIX_3D,
        lat=lat,
        lon=lon,
        speed=speed,
        course=course,
        sats_used=9,
        hdop=0.9,
    )


def test_haversine_one_degree_latitude() -> None:
    assert abs(haversine_m(0, 0, 1, 0) - 111_195) < 1


def test_periodic_at_10hz_input() -> None:
    s = PositionSampler(period_s=1.0)
    out = [p for i in range(101) for p in s.feed(fix(i / 10))]
    assert [p.reason for p in out[:2]] == ["first", "periodic"]
    assert len(out) == 11
    assert [p.ts for p in out] == [T0 + timedelta(seconds=i) for i in range(11)]


def test_heading_change_and_distance_between_periods() -> None:
    s = PositionSampler(period_s=30, heading_change_deg=15, distance_m=100)
    assert s.feed(fix(0))[0].reason == "first"
    assert s.feed(fix(1, course=100)) == []
    assert s.feed(fix(2, course=106))[0].reason == "heading"
    far = s.feed(fix(3, lat=52.001, course=106))  # ~111 m north
    assert far[0].reason == "distance"


def test_heading_wraps_through_north() -> None:
    s = PositionSampler(period_s=30, heading_change_deg=15)
    s.feed(fix(0, course=355))
    assert s.feed(fix(1, course=5)) == []
    assert s.feed(fix(2, course=11))[0].reason == "heading"


def test_stop_then_heartbeat() -> None:
    s = PositionSampler(period_s=1, heartbeat_s=300)
    s.feed(fix(0))
    assert s.feed(fix(1, speed=0.2))[0].reason == "periodic"  # the stop itself
    quiet = [p for t in range(2, 301) for p in s.feed(fix(t, speed=0.3))]
    assert quiet == []
    assert s.feed(fix(301, speed=0.3))[0].reason == "heartbeat"


def test_every_fix_and_no_fix() -> None:
    s = PositionSampler(every_fix=True)
    assert len([p for i in range(10) for p in s.feed(fix(i / 10))]) == 10
    assert s.feed(Fix(time=T0, mono=0, mode=FixMode.NO_FIX)) == []
    assert s.feed(Fix(time=None, mono=0, mode=FixMode.FIX_3D, lat=1, lon=1)) == []


def test_repeated_epoch_time_is_kept_once() -> None:
    s = PositionSampler(every_fix=True)
    assert len(s.feed(fix(0))) == 1
    assert s.feed(fix(0, lat=52.00001)) == []
    assert len(s.feed(fix(1))) == 1


def test_receiver_without_speed_still_counts_as_moving() -> None:
    """GGA-only receivers: average speed since the last point stands in."""
    s = PositionSampler(period_s=1.0, heartbeat_s=300)
    step = 15.0 / 111_195  # 15 m of latitude per second: 54 km/h
    kept = [p for t in range(11) for p in s.feed(fix(t, lat=52 + t * step, speed=None))]
    assert len(kept) == 11
    assert all(p.speed is None for p in kept)
    # Parked with 2 m of jitter: points until the 10 s window has seen the
    # stop, the stop point, then silence until the heartbeat.
    parked = [
        p
        for t in range(11, 200)
        for p in s.feed(fix(t, lat=52 + 10 * step + (t % 2) * 2e-5, speed=None))
    ]
    assert 5 <= len(parked) <= 12
    assert parked[-1].ts <= T0 + timedelta(seconds=25)
    assert all(p.reason == "periodic" for p in parked)


def test_insane_quality_figures_become_unknown() -> None:
    """GGA without a checksum can carry anything; it must not crash the sampler."""
    s = PositionSampler(every_fix=True)
    bad = Fix(time=T0, mono=0, mode=FixMode.FIX_3D, lat=52, lon=4, sats_used=300, hdop=-1.0)
    (p,) = s.feed(bad)
    assert (p.sats, p.hdop) == (None, None)


def braking_drive(
    to_kmh: float, decel_mps2: float = 3.8, cruise_s: int = 10, after_s: int = 10
) -> list[Fix]:
    """1 Hz fixes heading north: 50 km/h, a brake at ``decel_mps2`` to ``to_kmh``, hold.

    3.8 m/s² is the urban scenario's harsh brake into its first traffic light.
    """
    fixes: list[Fix] = []
    v, lat = 50 / 3.6, 52.0
    t = 0
    while t <= cruise_s + 20 + after_s:
        fixes.append(fix(t, lat=lat, speed=v, course=0.0))
        if t >= cruise_s:
            v = max(to_kmh / 3.6, v - decel_mps2)
        lat += v / 111_195
        t += 1
    return fixes


def slow_sampler(speed_change_kmh: float | None = None) -> PositionSampler:
    """Period, heading and distance too coarse to fire in these 40 s drives."""
    return PositionSampler(
        period_s=60, heading_change_deg=15, distance_m=1000, speed_change_kmh=speed_change_kmh
    )


def test_braking_event_gives_exactly_one_speed_point() -> None:
    """50 -> 20 km/h at 3.8 m/s²: 50, 36.3, 22.6, 20; the 22.6 fix is 27 km/h off."""
    drive = braking_drive(to_kmh=20)
    plain = slow_sampler()
    without = [p for f in drive for p in plain.feed(f)]
    sampler = slow_sampler(20)
    with_speed = [p for f in drive for p in sampler.feed(f)]
    assert [p.reason for p in without] == ["first"]
    assert len(with_speed) == len(without) + 1
    extra = with_speed[1]
    assert extra.reason == SPEED_REASON
    assert extra.ts == T0 + timedelta(seconds=12)
    assert extra.speed is not None and round(extra.speed * 3.6, 1) == 22.6


def test_small_speed_changes_and_unset_criterion_send_nothing() -> None:
    """A 15 km/h slow-down stays under a 20 km/h threshold; no speed, no criterion."""
    sampler = slow_sampler(20)
    assert len([p for f in braking_drive(to_kmh=35) for p in sampler.feed(f)]) == 1
    gga_only = slow_sampler(20)
    no_speed = [replace(f, speed=None) for f in braking_drive(to_kmh=20)]
    assert len([p for f in no_speed for p in gga_only.feed(f)]) == 1


def test_braking_to_a_stop_adds_one_point_before_the_stop_point() -> None:
    """50 -> 0: the stop transition is sent anyway; the speed point comes on top."""
    plain = slow_sampler()
    without = [p for f in braking_drive(to_kmh=0) for p in plain.feed(f)]
    sampler = slow_sampler(20)
    with_speed = [p for f in braking_drive(to_kmh=0) for p in sampler.feed(f)]
    stop = T0 + timedelta(seconds=14)  # 50, 36.3, 22.6, 8.9, 0 km/h
    assert [(p.reason, p.ts) for p in without] == [("first", T0), ("periodic", stop)]
    assert [p.ts for p in with_speed] == [T0, T0 + timedelta(seconds=12), stop]
