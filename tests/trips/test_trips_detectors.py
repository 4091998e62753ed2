"""Stops, idling, trips and speeding on synthetic drives with realistic GNSS noise.

Drives are 1 Hz Fix sequences: driving at a steady speed along a parallel,
and parked stretches with the simulator's slow position wander (faded in
and out over 5 s as the simulator does) plus 1–4.9 km/h of speed noise.
Every scenario is deterministic, so exact counts are asserted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest

from agent.gps.fix import Fix, FixMode
from agent.gps.geo import haversine_m
from agent.messages import EventData
from agent.obd.state import EngineSample, EngineState
from agent.trips import IdleDetector, OverspeedDetector, StopDetector, TripDetector
from simulators.nmea_out import parked_offset_m
from simulators.route import offset_m

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LAT0, LON0 = 52.0, 5.0


def at(i: float) -> datetime:
    return T0 + timedelta(seconds=i)


def drive(
    segments: Sequence[tuple[int, float]],
    *,
    seed: int = 7,
    jitter_m: float = 15.0,
    hdop: float = 1.0,
) -> list[Fix]:
    """Fixes for ``(seconds, km/h)`` segments; 0 km/h is parked with wander and noise."""
    rnd = random.Random(seed)
    fixes: list[Fix] = []
    east, i = 0.0, 0
    for dur, kmh in segments:
        for k in range(dur):
            north = wander_e = 0.0
            speed = kmh / 3.6
            if kmh == 0:
                fade = min(1.0, k / 5.0, (dur - 1 - k) / 5.0)
                north, wander_e = parked_offset_m(seed, float(i), jitter_m * fade)
                speed = rnd.uniform(1.0, 4.9) / 3.6
            lat, lon = offset_m(LAT0, LON0, north, east + wander_e)
            fixes.append(
                Fix(
                    time=at(i),
                    mono=float(i),
                    mode=FixMode.FIX_3D,
                    lat=lat,
                    lon=lon,
                    speed=speed,
                    hdop=hdop,
                )
            )
            east += kmh / 3.6
            i += 1
    return fixes


def engine(
    until: int, state: EngineState = EngineState.RUNNING, rate: float | None = 0.8, start: int = 0
) -> list[EngineSample]:
    return [EngineSample(at(i), float(i), state, 800.0, rate) for i in range(start, until)]


class _Both(Protocol):
    def feed_fix(self, fix: Fix) -> list[EventData]: ...
    def feed_engine(self, sample: EngineSample) -> list[EventData]: ...


def run(
    det: _Both, fixes: Sequence[Fix], samples: Sequence[EngineSample] = ()
) -> list[tuple[float, EventData]]:
    """Feed both streams in time order (a sample before a fix of the same second).

    Returns (seconds since T0 when emitted, event)."""
    items: list[tuple[float, int, Fix | EngineSample]] = []
    for f in fixes:
        assert f.time is not None
        items.append(((f.time - T0).total_seconds(), 1, f))
    items += [((s.time - T0).total_seconds(), 0, s) for s in samples]
    out: list[tuple[float, EventData]] = []
    for t, _, item in sorted(items, key=lambda x: (x[0], x[1])):
        evs = det.feed_fix(item) if isinstance(item, Fix) else det.feed_engine(item)
        out += [(t, e) for e in evs]
    return out


def feed_stops(det: StopDetector, fixes: Sequence[Fix]) -> list[EventData]:
    return [e for f in fixes for e in det.feed(f)]


def types(events: Sequence[EventData] | Sequence[tuple[float, EventData]]) -> list[str]:
    return [e[1].type if isinstance(e, tuple) else e.type for e in events]


# --------------------------------------------------------------------------- stops


def test_parked_30_min_is_one_stop_with_a_stable_position() -> None:
    fixes = drive([(60, 50.0), (1800, 0.0)])
    det = StopDetector()
    events = feed_stops(det, fixes)
    assert types(events) == ["stop_start"]
    assert events[0].ts == at(60)  # when it actually stopped, not when confirmed
    assert det.stopped and det.stopped_since == at(60)
    assert det.position is not None
    truth = fixes[60]
    assert truth.lat is not None and truth.lon is not None
    assert haversine_m(*det.position, truth.lat, truth.lon) < 15.0


def test_parked_from_power_on_with_correlated_noise_never_moves() -> None:
    for seed in range(5):
        det = StopDetector()
        events = feed_stops(det, drive([(1800, 0.0)], seed=seed, jitter_m=15.0))
        assert types(events) == ["stop_start"], seed


def test_traffic_light_40_s_in_slow_traffic_is_a_short_stop() -> None:
    """min_stop_s = 30: a 40 s light counts as a stop (documented choice)."""
    fixes = drive([(120, 20.0), (10, 8.0), (40, 0.0), (10, 8.0), (120, 20.0)], jitter_m=3.0)
    events = feed_stops(StopDetector(), fixes)
    assert types(events) == ["stop_start", "stop_end"]
    assert events[0].ts == at(130)
    # Left between the last still fix (169 s) and the first rolling one: dated at the former.
    assert events[1].ts == at(169)
    assert events[1].data["duration_s"] == pytest.approx(40.0, abs=1.0)


def test_short_halt_below_min_time_is_no_stop() -> None:
    fixes = drive([(120, 20.0), (20, 0.0), (120, 20.0)], jitter_m=3.0)
    assert feed_stops(StopDetector(), fixes) == []


def test_crawling_in_traffic_is_not_a_stop() -> None:
    # 8 km/h is between the thresholds: never slow enough to start a stop.
    assert feed_stops(StopDetector(), drive([(60, 30.0), (300, 8.0), (60, 30.0)])) == []


# --------------------------------------------------------------------------- idle


def test_idle_7_min_engine_running() -> None:
    fixes = drive([(60, 50.0), (420, 0.0), (60, 50.0)])
    det = IdleDetector()
    out = run(det, fixes, engine(540, rate=0.8))
    assert types(out) == ["idle_start", "excessive_idle", "idle_end"]
    (t_start, start), (t_exc, exc), (_t_end, end) = out
    assert start.ts == at(60)
    assert 60 + 60 <= t_start <= 60 + 62  # emitted once idling lasted 60 s
    assert exc.ts == at(60 + 300) and 60 + 300 <= t_exc <= 60 + 302
    assert end.ts == at(479)  # the last still fix before it drove off at 480 s
    assert end.data["duration_s"] == pytest.approx(420.0, abs=2.0)
    assert end.data["fuel_l"] == pytest.approx(0.8 * 420 / 3600, rel=0.01)
    assert end.data["excessive"] is True
    assert end.lat is not None and end.lon is not None


def test_idle_counts_from_engine_start_when_later() -> None:
    fixes = drive([(60, 50.0), (300, 0.0), (60, 50.0)])
    # Engine off on arrival, restarted 120 s into the stop: idle is 180 s.
    samples = engine(180, EngineState.OFF, None) + engine(420, start=180, rate=None)
    out = run(IdleDetector(), fixes, samples)
    assert types(out) == ["idle_start", "idle_end"]
    assert out[0][1].ts == at(180)
    assert out[1][1].data["duration_s"] == pytest.approx(180.0, abs=2.0)
    assert "fuel_l" not in out[1][1].data  # rate never reported


def test_idle_ends_when_engine_stops() -> None:
    fixes = drive([(60, 50.0), (600, 0.0)])
    samples = engine(260) + engine(660, EngineState.OFF, None, start=260)
    out = run(IdleDetector(), fixes, samples)
    assert types(out) == ["idle_start", "idle_end"]
    assert out[1][1].ts == at(260)
    assert out[1][1].data["duration_s"] == pytest.approx(200.0, abs=1.0)


def test_no_idle_events_without_engine_data() -> None:
    fixes = drive([(120, 20.0), (10, 8.0), (40, 0.0), (10, 8.0), (120, 20.0), (900, 0.0)])
    assert run(IdleDetector(), fixes) == []
    unknown = engine(len(fixes), EngineState.UNKNOWN, None)
    assert run(IdleDetector(), fixes, unknown) == []


def test_traffic_light_with_engine_is_not_idle() -> None:
    fixes = drive([(120, 20.0), (40, 0.0), (120, 20.0)], jitter_m=3.0)
    assert run(IdleDetector(), fixes, engine(len(fixes))) == []


# --------------------------------------------------------------------------- trips


def test_trip_split_by_6_minute_stop() -> None:
    fixes = drive([(300, 40.0), (360, 0.0), (300, 40.0), (600, 0.0)])
    out = run(TripDetector(), fixes)
    assert types(out) == ["trip_start", "trip_end", "trip_start", "trip_end"]
    s1, e1, s2, e2 = (e for _, e in out)
    assert s1.ts == at(0) and s1.data["reason"] == "movement"
    assert e1.ts == at(300) and e1.data["reason"] == "stopped"
    assert out[1][0] == pytest.approx(600, abs=2)  # fired at the timeout ...
    assert s2.ts == at(659)  # ... but dated when it stopped / moved off (last still fix)
    assert e2.ts == at(960)
    for end in (e1, e2):
        d = end.data
        assert d["distance_m"] == pytest.approx(300 * 40 / 3.6, rel=0.02)
        assert d["duration_s"] == pytest.approx(300, abs=1)
        assert d["driving_s"] == pytest.approx(300, abs=3)
        assert d["max_speed_kmh"] == pytest.approx(40.0)
        assert d["mean_speed_kmh"] == pytest.approx(40.0, rel=0.03)
        assert "idle_s" not in d
    assert e1.lat is not None and e1.lon is not None and s2.lat is not None and s2.lon is not None
    assert haversine_m(e1.lat, e1.lon, s2.lat, s2.lon) < 10.0  # both the stop's mean


def test_parked_30_min_makes_no_false_trip() -> None:
    fixes = drive([(60, 50.0), (1800, 0.0)])
    out = run(TripDetector(), fixes)
    assert types(out) == ["trip_start", "trip_end"]
    assert out[1][1].ts == at(60)
    assert run(TripDetector(), drive([(1800, 0.0)])) == []


def test_engine_defines_the_trip_and_idle_stays_inside() -> None:
    fixes = drive([(60, 0.0), (300, 40.0), (360, 0.0), (300, 40.0), (120, 0.0)])
    samples = engine(30, EngineState.OFF, None) + engine(1080, start=30)
    samples += engine(1140, EngineState.OFF, None, start=1080)
    out = run(TripDetector(), fixes, samples)
    assert types(out) == ["trip_start", "trip_end"]
    start, end = out[0][1], out[1][1]
    assert start.ts == at(30) and start.data["reason"] == "engine"
    assert end.ts == at(1080) and end.data["reason"] == "engine_off"
    d = end.data
    assert d["duration_s"] == pytest.approx(1050, abs=1)
    assert d["distance_m"] == pytest.approx(600 * 40 / 3.6, rel=0.02)
    assert d["driving_s"] == pytest.approx(600, abs=5)
    assert d["idle_s"] == pytest.approx(1050 - 600, abs=5)


def test_shared_stop_detector() -> None:
    fixes = drive([(60, 50.0), (420, 0.0), (300, 40.0), (400, 0.0)])
    samples = engine(900) + engine(1180, EngineState.OFF, None, start=900)
    stops = StopDetector()
    idle, trips = IdleDetector(stops=stops), TripDetector(stops=stops)
    got: list[str] = []
    items = sorted(
        [(f.mono, 1, f) for f in fixes] + [(s.mono, 0, s) for s in samples],
        key=lambda x: (x[0], x[1]),
    )
    for _, _, item in items:
        if isinstance(item, Fix):
            got += types(stops.feed(item))
            got += types(idle.feed_fix(item)) + types(trips.feed_fix(item))
        else:
            got += types(idle.feed_engine(item)) + types(trips.feed_engine(item))
    assert got == [
        "trip_start",
        "stop_start",
        "idle_start",
        "excessive_idle",
        "stop_end",
        "idle_end",
        "stop_start",
        "idle_start",
        "idle_end",
        "trip_end",
    ]


# --------------------------------------------------------------------------- overspeed


def speeds(kmh: Sequence[float]) -> list[Fix]:
    fixes, east = [], 0.0
    for i, v in enumerate(kmh):
        lat, lon = offset_m(LAT0, LON0, 0.0, east)
        fixes.append(Fix(at(i), float(i), FixMode.FIX_3D, lat, lon, speed=v / 3.6, hdop=1.0))
        east += v / 3.6
    return fixes


def test_overspeed_single_event_with_jitter_around_limit() -> None:
    rnd = random.Random(3)
    episode = [52.0] + [50.0 + rnd.uniform(-2.5, 4.0) for _ in range(29)]
    fixes = speeds([45.0] * 60 + episode + [40.0] * 60)
    det = OverspeedDetector(50.0)
    events = [e for f in fixes for e in det.feed(f)]
    assert types(events) == ["overspeed"]
    ev = events[0]
    assert ev.ts == at(60)
    assert ev.data["duration_s"] == pytest.approx(30.0)
    assert ev.data["max_speed_kmh"] == pytest.approx(max(episode), abs=0.05)
    assert ev.data["limit_kmh"] == 50.0
    assert ev.lat == pytest.approx(fixes[60].lat)


def test_overspeed_short_burst_is_ignored() -> None:
    det = OverspeedDetector(50.0)
    fixes = speeds([45.0] * 30 + [60.0] * 5 + [45.0] * 30)
    assert [e for f in fixes for e in det.feed(f)] == []


def test_overspeed_uses_the_local_limit() -> None:
    zone_lon = offset_m(LAT0, LON0, 0.0, 500.0)[1]  # 30 km/h beyond 500 m east

    def limit_at(lat: float, lon: float) -> float | None:
        return 30.0 if lon > zone_lon else None

    det = OverspeedDetector(50.0, limit_at=limit_at)
    fixes = speeds([45.0] * 120)  # passes 500 m at 40 s
    events = [e for f in fixes for e in det.feed(f)]
    assert events == []  # still speeding at the end: not reported yet
    assert det.speeding
    last = speeds([45.0] * 120 + [20.0])[-1]
    (ev,) = det.feed(last)
    assert ev.data["limit_kmh"] == 30.0
    assert ev.ts == at(41)  # first fix beyond 500 m
    assert ev.data["duration_s"] == pytest.approx(79.0)


# --------------------------------------------------------------------------- replay


def test_replay_gives_identical_events() -> None:
    fixes = drive([(60, 50.0), (420, 0.0), (300, 40.0), (40, 0.0), (200, 60.0), (900, 0.0)])
    samples = engine(1000, rate=1.1) + engine(2120, EngineState.OFF, None, start=1000)

    def once() -> list[dict[str, object]]:
        got = run(IdleDetector(), fixes, samples) + run(TripDetector(), fixes, samples)
        got += [(0.0, e) for e in feed_stops(StopDetector(), fixes)]
        od = OverspeedDetector(55.0)
        got += [(0.0, e) for f in fixes for e in od.feed(f)]
        return [{"t": t, **e.model_dump(mode="json")} for t, e in got]

    first, second = once(), once()
    assert first == second
    assert {"stop_start", "idle_end", "trip_end", "overspeed"} <= {e["type"] for e in first}
