"""Route kinematics: stops honoured, speed and acceleration bounded, distance exact.

The checks recompute what they can independently (haversine in the test, speed
from positions) instead of trusting the planner's own numbers.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulators.route import Drive, VehicleState, build_drive, state_at
from simulators.scenario import Scenario, load_scenario, parse_scenario, scenario_from_dict

R = 6_371_008.8
DT = 0.1


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * R * math.asin(math.sqrt(h))


def route_length(scenario: Scenario) -> float:
    w = scenario.route.waypoints
    return sum(haversine(a.lat, a.lon, b.lat, b.lon) for a, b in pairwise(w))


def sample(drive: Drive, end: float, dt: float = DT) -> Iterator[VehicleState]:
    for i in range(int(end / dt) + 1):
        yield state_at(drive, i * dt)


def wrap(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


@pytest.fixture(scope="module", params=["urban_delivery", "highway"])
def bundled(request: pytest.FixtureRequest) -> tuple[Scenario, Drive, list[VehicleState]]:
    scenario = load_scenario(request.param)
    drive = build_drive(scenario)
    return scenario, drive, list(sample(drive, drive.duration))


def test_distance_matches_haversine_of_the_waypoints(
    bundled: tuple[Scenario, Drive, list[VehicleState]],
) -> None:
    scenario, _drive, states = bundled
    expected = route_length(scenario)
    integrated = sum((a.speed_mps + b.speed_mps) / 2 * DT for a, b in pairwise(states))
    assert integrated == pytest.approx(expected, rel=0.01)
    assert states[-1].odometer_m == pytest.approx(expected, rel=0.01)
    last = scenario.route.waypoints[-1]
    assert haversine(states[-1].lat, states[-1].lon, last.lat, last.lon) < 0.01


def test_speed_never_exceeds_the_segment_speed(
    bundled: tuple[Scenario, Drive, list[VehicleState]],
) -> None:
    scenario, _drive, states = bundled
    wps = scenario.route.waypoints
    cum = [0.0]
    for a, b in pairwise(wps):
        cum.append(cum[-1] + haversine(a.lat, a.lon, b.lat, b.lon))
    for state in states:
        seg = min(bisect_right(cum, state.odometer_m - 1e-6) - 1, len(wps) - 2)
        limit = (wps[seg].speed_kmh or 0.0) / 3.6
        assert state.speed_mps <= limit + 1e-6, (state.t, state.speed_mps, limit)


def test_acceleration_braking_and_cornering_are_bounded(
    bundled: tuple[Scenario, Drive, list[VehicleState]],
) -> None:
    scenario, _drive, states = bundled
    v = scenario.vehicle
    wps = scenario.route.waypoints
    # A waypoint's accel_mps2/decel_mps2 (a scripted harsh take-off or brake) raises the bound.
    max_accel = max([v.max_accel_mps2, *(w.accel_mps2 for w in wps if w.accel_mps2)])
    max_decel = max([v.max_decel_mps2, *(w.decel_mps2 for w in wps if w.decel_mps2)])
    for a, b in pairwise(states):
        dv = (b.speed_mps - a.speed_mps) / DT
        assert -max_decel - 1e-6 <= dv <= max_accel + 1e-6, (a.t, dv)
        assert -max_decel - 1e-9 <= a.accel_mps2 <= max_accel + 1e-9
        lateral = a.speed_mps * math.radians(abs(a.yaw_rate_dps))
        assert lateral <= v.max_lateral_accel_mps2 + 1e-6, (a.t, lateral)
        if a.speed_mps > 2.0 and b.speed_mps > 2.0:
            assert abs(wrap(b.course_deg - a.course_deg)) < 10.0, (a.t, a.course_deg)


def test_positions_move_with_the_speed(
    bundled: tuple[Scenario, Drive, list[VehicleState]],
) -> None:
    _scenario, _drive, states = bundled
    for a, b in pairwise(states):
        travelled = b.odometer_m - a.odometer_m
        moved = haversine(a.lat, a.lon, b.lat, b.lon)
        assert moved <= travelled + 1e-3
        assert moved >= 0.7 * travelled - 1e-3  # a corner inside the step shortens the chord
        assert travelled == pytest.approx((a.speed_mps + b.speed_mps) / 2 * DT, abs=0.02)


def test_stops_are_honoured(bundled: tuple[Scenario, Drive, list[VehicleState]]) -> None:
    scenario, drive, _states = bundled
    wps = scenario.route.waypoints
    visits = drive.first.stops
    assert [v.waypoint for v in visits] == [i for i, w in enumerate(wps) if w.dwell_s is not None]
    for visit in visits:
        wp = wps[visit.waypoint]
        assert visit.depart_s - visit.arrive_s == pytest.approx(wp.dwell_s)
        for i in range(11):
            t = visit.arrive_s + (visit.depart_s - visit.arrive_s) * i / 10
            st = state_at(drive, t)
            assert st.speed_mps == 0.0 and not st.moving
            assert haversine(st.lat, st.lon, wp.lat, wp.lon) < 0.01
        mid = state_at(drive, (visit.arrive_s + visit.depart_s) / 2)
        last = visit.waypoint == len(wps) - 1
        if visit.depart_s > visit.arrive_s:
            assert mid.stop_waypoint == visit.waypoint and mid.stop_name == wp.name
            assert mid.stopped_for_s == pytest.approx((visit.depart_s - visit.arrive_s) / 2)
            remaining = math.inf if last else (visit.depart_s - visit.arrive_s) / 2
            assert mid.stop_remaining_s == pytest.approx(remaining)
        if visit.waypoint > 0 and not last:
            assert state_at(drive, visit.arrive_s - 1.0).speed_mps > 0
            assert state_at(drive, visit.depart_s + 1.0).speed_mps > 0


def test_parked_at_both_ends_and_after(bundled: tuple[Scenario, Drive, list[VehicleState]]) -> None:
    scenario, drive, states = bundled
    assert states[0].speed_mps == 0.0 and states[0].odometer_m == 0.0
    after = state_at(drive, drive.duration + 1000.0)
    assert after.speed_mps == 0.0 and after.stop_remaining_s == math.inf
    assert after.stop_waypoint == len(scenario.route.waypoints) - 1


def test_bundled_scenarios_have_the_promised_shape() -> None:
    urban = build_drive(load_scenario("urban_delivery")).first
    deliveries = [s for s in urban.stops if s.name.startswith("Drop")]
    assert 4 <= len(deliveries) <= 6
    assert all(60 <= s.depart_s - s.arrive_s <= 180 for s in deliveries)
    driving = urban.duration - sum(s.depart_s - s.arrive_s for s in urban.stops)
    assert 10 * 60 <= driving <= 16 * 60  # incl. 2.5 min in slow traffic
    highway_scenario = load_scenario("highway")
    highway = build_drive(highway_scenario).first
    assert 55 * 60 <= highway.duration <= 70 * 60
    speeds = [w.speed_kmh for w in highway_scenario.route.waypoints if w.speed_kmh]
    assert max(speeds) <= 110 and sum(1 for s in speeds if s >= 80) > len(speeds) / 2
    last = len(highway_scenario.route.waypoints) - 1
    assert len([s for s in highway.stops if 0 < s.waypoint < last]) == 1


CORNER = """
start_utc = 2024-05-14T07:30:00Z
[route]
waypoints = [
  { lat = 52.0, lon = 5.0, speed_kmh = 50 },
  { lat = 52.003, lon = 5.0, speed_kmh = 50 },
  { lat = 52.003, lon = 5.005, speed_kmh = 50, decel_mps2 = 4.5 },
  { lat = 52.0, lon = 5.005, speed_kmh = 30 },
  { lat = 52.003, lon = 5.005 },
]
"""


def test_corner_is_slowed_for_and_turned_smoothly() -> None:
    scenario = parse_scenario(CORNER)
    drive = build_drive(scenario)
    states = list(sample(drive, drive.duration))
    corner = min(states, key=lambda s: haversine(s.lat, s.lon, 52.003, 5.0))
    assert 3.0 < corner.speed_mps < 6.0  # 90 degrees with a 5 m corner cut: about 17 km/h
    turning = [s for s in states if abs(s.yaw_rate_dps) > 0 and s.odometer_m < 800]
    assert len(turning) > 20  # over a few seconds, not in one step
    assert all(s.yaw_rate_dps > 0 for s in turning)  # north then east: a right turn


def test_harsh_braking_override_and_u_turn_stop() -> None:
    drive = build_drive(parse_scenario(CORNER))
    states = list(sample(drive, drive.duration))
    decels = [(b.speed_mps - a.speed_mps) / DT for a, b in pairwise(states)]
    assert min(decels) == pytest.approx(-4.5, abs=1e-6)  # the overridden segment brakes hard
    u_turn = min(states, key=lambda s: haversine(s.lat, s.lon, 52.0, 5.005))
    assert u_turn.speed_mps < 0.5  # a reversal cannot be driven through: it is a stop


def test_state_is_a_pure_function_of_time() -> None:
    scenario = load_scenario("urban_delivery")
    a, b = build_drive(scenario), build_drive(scenario)
    times = [0.0, 12.3, 250.0, 1000.5, 1400.0, 10_000.0]
    forward = [state_at(a, t) for t in times]
    backward = [state_at(b, t) for t in reversed(times)][::-1]
    assert forward == backward


def test_loop_repeats_a_round_trip() -> None:
    scenario = load_scenario("urban_delivery")
    drive = build_drive(scenario, loop=True)
    lap = drive.first.duration
    again = drive.cycle[0].duration
    wait = scenario.route.waypoints[0].dwell_s
    assert wait is not None
    assert drive.duration == math.inf and again == pytest.approx(lap - wait)  # no 2nd depot wait
    for t in (100.0, 700.0):
        first, second, third = (
            state_at(drive, t + k) for k in (0.0, lap - wait, lap - wait + again)
        )
        assert (second.lat, second.lon) == pytest.approx((first.lat, first.lon))
        assert (third.lat, third.lon) == pytest.approx((first.lat, first.lon))
        assert (second.lap, third.lap) == (1, 2)
        assert third.odometer_m == pytest.approx(first.odometer_m + 2 * drive.first.distance)


def test_loop_drives_an_open_route_out_and_back_without_jumps() -> None:
    scenario = parse_scenario(CORNER)
    drive = build_drive(scenario, loop=True)
    period = drive.first.duration + sum(c.duration for c in drive.cycle)
    prev = state_at(drive, 0.0)
    for state in sample(drive, 2 * period, dt=0.5):
        assert haversine(prev.lat, prev.lon, state.lat, state.lon) <= 14.0 * 0.5 + 1e-6
        assert state.odometer_m >= prev.odometer_m
        prev = state
    back_home = state_at(drive, drive.first.duration + drive.cycle[0].duration)
    assert haversine(back_home.lat, back_home.lon, 52.0, 5.0) < 0.01
    assert back_home.odometer_m == pytest.approx(2 * route_length(scenario))


@settings(max_examples=30, deadline=None)
@given(
    legs=st.lists(
        st.tuples(
            st.floats(-0.005, 0.005),  # lat offset, degrees (up to ~500 m)
            st.floats(-0.005, 0.005),
            st.floats(10.0, 130.0),  # km/h to the next waypoint
            st.one_of(st.none(), st.floats(0.0, 30.0)),  # dwell
        ),
        min_size=2,
        max_size=7,
    ),
    accel=st.floats(0.5, 4.0),
    decel=st.floats(0.5, 8.0),
)
def test_any_route_keeps_the_bounds(
    legs: list[tuple[float, float, float, float | None]], accel: float, decel: float
) -> None:
    waypoints: list[dict[str, float]] = []
    for dlat, dlon, kmh, dwell in legs:
        point = {"lat": 52.0 + dlat, "lon": 5.0 + dlon, "speed_kmh": kmh}
        if dwell is not None:
            point["dwell_s"] = dwell
        if (
            waypoints
            and haversine(waypoints[-1]["lat"], waypoints[-1]["lon"], point["lat"], point["lon"])
            < 2.0
        ):
            continue
        waypoints.append(point)
    assume(len(waypoints) >= 2)
    scenario = scenario_from_dict(
        {
            "start_utc": "2024-05-14T07:30:00Z",
            "vehicle": {"max_accel_mps2": accel, "max_decel_mps2": decel},
            "route": {"waypoints": waypoints},
        }
    )
    drive = build_drive(scenario)
    dt = 0.25
    states = [*sample(drive, drive.duration, dt), state_at(drive, drive.duration)]
    top = max(w["speed_kmh"] for w in waypoints[:-1]) / 3.6
    for a, b in pairwise(states):
        dv = (b.speed_mps - a.speed_mps) / dt
        assert -decel - 1e-6 <= dv <= accel + 1e-6 or b.t - a.t < dt / 2
        assert a.speed_mps <= top + 1e-6
        assert a.speed_mps * math.radians(abs(a.yaw_rate_dps)) <= 2.0 + 1e-6
    assert states[-1].odometer_m == pytest.approx(route_length(scenario), rel=1e-6)
    total_dwell = sum(w.get("dwell_s", 0.0) for w in waypoints)
    assert drive.duration >= total_dwell + route_length(scenario) / top - 1e-6
