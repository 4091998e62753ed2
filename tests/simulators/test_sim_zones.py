"""Scenario zones and the ground truth of zone visits (simulators/truth.py).

Crossing times are checked against kinematics worked out by hand; the bundled
zone scenarios are checked for the properties geofence tests rely on.
"""

from __future__ import annotations

import json
import math
import tomllib
from datetime import timedelta
from itertools import combinations, pairwise
from pathlib import Path

import pynmea2
import pytest

from simulators.cli import main
from simulators.nmea_out import iter_epochs
from simulators.route import build_drive, haversine_m, state_at
from simulators.scenario import (
    CircleShape,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    with_gnss,
)
from simulators.truth import (
    border_distance_m,
    zone_contains,
    zone_visits,
    zones_geojson,
    zones_toml,
    zoneset,
)

R = 6_371_008.8
LAT0, LON0 = 52.0, 5.0


def north(metres: float) -> float:
    """Latitude ``metres`` north of LAT0 along the meridian LON0."""
    return LAT0 + math.degrees(metres / R)


def east(metres: float, lat: float) -> float:
    return LON0 + math.degrees(metres / (R * math.cos(math.radians(lat))))


# A straight drive north along a meridian (a great circle), 1112 m, 50 km/h.
STRAIGHT = f"""
start_utc = 2024-05-15T08:00:00Z
[vehicle]
max_accel_mps2 = 1.5
max_decel_mps2 = 2.0
[route]
waypoints = [
  {{ lat = {LAT0}, lon = {LON0}, speed_kmh = 50, dwell_s = 10 }},
  {{ lat = {north(1112.0)!r}, lon = {LON0} }},
]
"""


def straight_with(zones: str) -> Scenario:
    return parse_scenario(STRAIGHT + zones)


def time_at(s: float) -> float:
    """When the straight drive is ``s`` metres along: 10 s parked, 1.5 m/s2 to 50 km/h, cruise."""
    v, a = 50 / 3.6, 1.5
    x_acc = v * v / (2 * a)
    assert s > x_acc  # the crossings are in the cruise
    return 10.0 + v / a + (s - x_acc) / v


def test_circle_crossing_times_match_the_analytic_ones() -> None:
    # Centre 500 m along and 30 m to the side, radius 50: the chord runs from
    # 460 m to 540 m along the track (half chord sqrt(50^2 - 30^2) = 40 m).
    lat_c = north(500.0)
    scenario = straight_with(f"""
[[zones]]
id = "c"
shape = {{ type = "circle", lat = {lat_c!r}, lon = {east(30.0, lat_c)!r}, radius_m = 50 }}
""")
    visits = zone_visits(scenario)
    assert len(visits) == 1
    visit = visits[0]
    assert visit.zone_id == "c"
    assert visit.enter_s == pytest.approx(time_at(460.0), abs=0.01)
    assert visit.exit_s == pytest.approx(time_at(540.0), abs=0.01)
    assert visit.inside_s == pytest.approx(80.0 / (50 / 3.6), abs=0.02)
    assert visit.dwell_s == 30.0 and not visit.dwelled  # 5.8 s, driving through
    assert visit.entered == scenario.start_utc + timedelta(seconds=visit.enter_s)
    assert visit.exited is not None and visit.exited.tzinfo is not None
    # The truth is what state_at says: just before/after the crossing.
    drive = build_drive(scenario)
    zone = scenario.all_zones[0]
    for t, inside in ((visit.enter_s - 0.02, False), (visit.enter_s + 0.02, True)):
        st = state_at(drive, t)
        assert zone_contains(zone, st.lat, st.lon) is inside
    # A coarser step finds the same crossings; the bisection does the work.
    coarse = zone_visits(scenario, step_s=2.0)
    assert coarse[0].enter_s == pytest.approx(visit.enter_s, abs=0.002)


def test_polygon_with_a_hole_gives_two_visits() -> None:
    # A 40 m wide box from 200 to 300 m along, with a hole from 240 to 260 m.
    def ring(x0: float, x1: float, y0: float, y1: float) -> str:
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        return "[" + ", ".join(f"[{east(x, north(y))!r}, {north(y)!r}]" for x, y in pts) + "]"

    scenario = straight_with(f"""
[[zones]]
id = "yard"
name = "Yard"
tags = ["depot", "private"]
dwell_s = 2
speed_limit_kmh = 15
shape = {{ type = "polygon", outer = {ring(-20, 20, 200, 300)}, holes = [{ring(-10, 10, 240, 260)}] }}
""")
    visits = zone_visits(scenario)
    expected = [(200.0, 240.0), (260.0, 300.0)]
    assert len(visits) == len(expected)
    for visit, (a, b) in zip(visits, expected, strict=True):
        assert visit.enter_s == pytest.approx(time_at(a), abs=0.01)
        assert visit.exit_s == pytest.approx(time_at(b), abs=0.01)
    assert all(v.dwell_s == 2.0 and v.dwelled for v in visits)  # 2.9 s each
    zone = scenario.all_zones[0]
    assert border_distance_m(zone, north(250.0), LON0) == pytest.approx(10.0, abs=0.05)
    assert border_distance_m(zone, north(230.0), LON0) == pytest.approx(-10.0, abs=0.05)
    assert border_distance_m(zone, north(100.0), LON0) == pytest.approx(100.0, abs=0.05)


def test_inside_at_the_start_and_at_the_end() -> None:
    scenario = straight_with(f"""
[[zones]]
id = "start"
shape = {{ type = "circle", lat = {LAT0}, lon = {LON0}, radius_m = 100 }}
[[zones]]
id = "end"
shape = {{ type = "circle", lat = {north(1112.0)!r}, lon = {LON0}, radius_m = 100 }}
""")
    end = build_drive(scenario).duration
    first, last = zone_visits(scenario)
    assert first.zone_id == "start" and first.at_start and first.enter_s == 0.0
    assert first.entered == scenario.start_utc
    assert last.zone_id == "end" and last.exited is None and last.exit_s is None
    assert last.inside_s == pytest.approx(end - last.enter_s, abs=0.002)
    longer = zone_visits(scenario, duration_s=end + 100)
    assert longer[-1].inside_s == pytest.approx(last.inside_s + 100, abs=0.002)
    with pytest.raises(ValueError, match="duration_s"):
        zone_visits(scenario, loop=True)
    looped = zone_visits(scenario, loop=True, duration_s=3 * end)
    assert [v.zone_id for v in looped] == ["start", "end", "start", "end"]


# --------------------------------------------------------------------------- validation


def problems_of(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, origin="z.toml")
    return info.value.problems


def test_zone_mistakes_name_their_key() -> None:
    base = STRAIGHT.replace("dwell_s = 10 }", "dwell_s = 10, name = 'A' }")
    assert problems_of(STRAIGHT.replace("dwell_s = 10 }", "zone_radius_m = 30 }")) == [
        "route.waypoints[0].zone_radius_m: only on a stop (a waypoint with dwell_s): "
        "the zone is centred on the stop"
    ]
    dup = base.replace("name = 'A' }", "name = 'A', zone_radius_m = 30 }") + (
        '[[zones]]\nid = "A"\nshape = { type = "circle", lat = 52, lon = 5, radius_m = 9 }\n'
    )
    (problem,) = problems_of(dup)
    assert problem.startswith("route.waypoints[0].zone_radius_m: zone id 'A' is already used")
    bad = [
        ('shape = { type = "circle", lat = 52, lon = 5 }', "zones[0].shape.radius_m: required"),
        ('shape = { type = "square" }', "zones[0].shape: Input tag 'square'"),
        ('shape = { type = "circle", lat = 52, lon = 5, radius_m = 0 }', "zones[0].shape.radius_m"),
        (
            'shape = { type = "polygon", outer = [[5, 52], [5.1, 52], [5.1]] }',
            "zones[0].shape.outer[2]: a point is [lon, lat]",
        ),
        (
            'shape = { type = "polygon", outer = [[5, 52], [5.1, 52], [5, 91]] }',
            "zones[0].shape.outer[2]: latitude 91",
        ),
        (
            'shape = { type = "polygon", outer = [[5, 52], [5.1, 52], [5, 52]] }',
            "zones[0].shape.outer: needs at least 3 distinct points",
        ),
        (
            'shape = { type = "polygon", outer = [[5, 52], [5.1, 52], [5.1, 52.1]], '
            "holes = [[[5, 53], [5.01, 53], [5.01, 53.01]]] }",
            "zones[0].shape.holes[0][0]: hole point is not inside the outer ring",
        ),
    ]
    for shape, expected in bad:
        (problem,) = problems_of(STRAIGHT + f'[[zones]]\nid = "z"\n{shape}\n')
        assert problem.startswith(expected), problem
    (problem,) = problems_of(
        STRAIGHT + '[[zones]]\nid = "z"\nradius = 3\n'
        'shape = { type = "circle", lat = 52, lon = 5, radius_m = 9 }\n'
    )
    assert problem == "zones[0].radius: unknown key"


def test_stop_zone_ids_default_to_the_name_then_stop_n() -> None:
    text = STRAIGHT.replace("dwell_s = 10 }", "dwell_s = 10, zone_radius_m = 25 }").replace(
        f"lon = {LON0} }}", f"lon = {LON0}, dwell_s = 5, zone_radius_m = 30, name = 'End' }}"
    )
    zones = parse_scenario(text).all_zones
    assert [(z.id, z.name, z.tags) for z in zones] == [
        ("stop-0", "stop 0", ("stop",)),
        ("End", "End", ("stop",)),
    ]
    assert isinstance(zones[0].shape, CircleShape) and zones[0].shape.radius_m == 25


# --------------------------------------------------------------------------- rendering


def test_geojson_zoneset_and_toml_describe_the_same_zones() -> None:
    scenario = straight_with("""
[[zones]]
id = "p"
shape = { type = "polygon", outer = [[5.0, 52.0], [5.001, 52.0], [5.001, 52.001]] }
[[zones]]
id = "c"
name = "Circle"
speed_limit_kmh = 30
shape = { type = "circle", lat = 52.0005, lon = 5.0005, radius_m = 45.5 }
""")
    geo = zones_geojson(scenario)
    assert geo["type"] == "FeatureCollection"
    poly, circle = geo["features"]
    assert poly["geometry"]["type"] == "Polygon"
    (outer,) = poly["geometry"]["coordinates"]
    assert outer[0] == outer[-1] == [5.0, 52.0] and len(outer) == 4  # closed, [lon, lat]
    assert circle["geometry"] == {"type": "Point", "coordinates": [5.0005, 52.0005]}
    assert circle["properties"]["radius_m"] == 45.5 and circle["id"] == "c"
    assert circle["properties"]["speed_limit_kmh"] == 30
    json.dumps(geo)  # JSON-ready

    zs = zoneset(scenario)
    assert zs["version"] == 1 and [z["id"] for z in zs["zones"]] == ["p", "c"]
    assert zs["zones"][1]["shape"] == {
        "type": "circle",
        "lat": 52.0005,
        "lon": 5.0005,
        "radius_m": 45.5,
    }
    assert "dwell_s" not in zs["zones"][1] and zs["zones"][0]["name"] == "p"
    assert tomllib.loads(zones_toml(scenario)) == zs


# --------------------------------------------------------------------------- bundled


def test_urban_20_stops_visits_every_stop_zone_exactly_once() -> None:
    scenario = load_scenario("urban_20_stops")
    lap = build_drive(scenario).first
    zones = scenario.all_zones
    circles = [z.shape for z in zones if isinstance(z.shape, CircleShape)]
    assert len(zones) == len(circles) == 20
    assert all(30 <= c.radius_m <= 50 for c in circles)
    for a, b in combinations(circles, 2):  # zones don't overlap (with room to spare)
        assert haversine_m(a.lat, a.lon, b.lat, b.lon) > a.radius_m + b.radius_m + 100

    deliveries = [s for s in lap.stops if s.name.startswith("Drop")]
    assert len(deliveries) == 20
    assert all(45 - 1e-6 <= s.depart_s - s.arrive_s <= 180 + 1e-6 for s in deliveries)
    assert 40 * 60 <= lap.duration <= 60 * 60
    speeds = [w.speed_kmh for w in scenario.route.waypoints if w.speed_kmh]
    assert max(speeds) <= 50

    visits = zone_visits(scenario)
    assert len(visits) == 20  # so no zone is clipped by a pass that doesn't stop there
    assert sorted(v.zone_id for v in visits) == sorted(z.id for z in zones)
    for visit, stop in zip(visits, deliveries, strict=True):
        assert visit.zone_id == stop.name.replace(" ", "-")
        assert visit.exit_s is not None
        assert visit.enter_s < stop.arrive_s and stop.depart_s < visit.exit_s
        assert visit.inside_s >= stop.depart_s - stop.arrive_s
        assert visit.dwelled and visit.inside_s >= visit.dwell_s

    # The parked jitter (3 m) keeps every reported position at a stop inside its zone.
    by_id = {z.name: z for z in zones}
    for epoch in iter_epochs(scenario):
        if epoch.state.stop_name.startswith("Drop"):
            lat, lon = gga_position(epoch.data)
            assert zone_contains(by_id[epoch.state.stop_name], lat, lon)


def gga_position(data: bytes) -> tuple[float, float]:
    (line,) = [x for x in data.decode("ascii").split("\r\n") if x[3:6] == "GGA"]
    msg = pynmea2.parse(line, check=True)
    return msg.latitude, msg.longitude


def test_parked_drift_truth_stays_outside_while_the_noise_wanders_in() -> None:
    scenario = load_scenario("parked_drift")
    (zone,) = scenario.all_zones
    drive = build_drive(scenario)
    assert drive.first.stops[0].depart_s == 1800.0

    # Truth: 10 m outside while parked, further while driving away; no visit.
    for i in range(int(drive.duration / 0.5) + 1):
        st = state_at(drive, i * 0.5)
        gap = border_distance_m(zone, st.lat, st.lon)
        if st.t <= 1800.0:
            assert gap == pytest.approx(10.0, abs=0.05)
        assert gap >= 9.95
    assert zone_visits(scenario) == []

    # The NMEA the agent reads: positions wander up to 15 m and sometimes fall inside.
    def inside_epochs(sc: Scenario) -> tuple[list[float], float]:
        inside, furthest = [], 0.0
        for epoch in iter_epochs(sc):
            lat, lon = gga_position(epoch.data)
            st = epoch.state
            furthest = max(furthest, haversine_m(lat, lon, st.lat, st.lon))
            if zone_contains(zone, lat, lon):
                inside.append(epoch.t)
        return inside, furthest

    inside, furthest = inside_epochs(scenario)
    assert 12.0 <= furthest <= 15.0 + 0.01
    assert 20 <= len(inside) <= 200  # sometimes, not always
    excursions = 1 + sum(1 for a, b in pairwise(inside) if b - a > 1)
    assert excursions >= 2
    assert min(border_distance_m(zone, *gga_position(e.data)) for e in iter_epochs(scenario)) < -1
    # Meaningful: without the noise the reported position never enters the zone.
    assert inside_epochs(with_gnss(scenario, parked_jitter_m=0.0))[0] == []

    hdop = {float(pynmea2.parse(_gga_line(e.data)).horizontal_dil) for e in iter_epochs(scenario)}
    assert hdop and all(1.0 <= h <= 2.0 for h in hdop)


def _gga_line(data: bytes) -> str:
    (line,) = [x for x in data.decode("ascii").split("\r\n") if x[3:6] == "GGA"]
    return line


# --------------------------------------------------------------------------- CLI


def test_cli_zones_and_truth(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zones", "--scenario", "parked_drift"]) == 0
    geo = json.loads(capsys.readouterr().out)
    assert geo["features"][0]["properties"]["radius_m"] == 50.0
    assert main(["zones", "--scenario", "urban_20_stops", "--format", "zoneset"]) == 0
    zs = json.loads(capsys.readouterr().out)
    assert zs == zoneset(load_scenario("urban_20_stops")) and len(zs["zones"]) == 20
    assert main(["zones", "--scenario", "parked_drift", "--format", "toml"]) == 0
    assert tomllib.loads(capsys.readouterr().out) == zoneset(load_scenario("parked_drift"))

    assert main(["truth", "--scenario", "urban_20_stops"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 20 and lines[0]["zone_id"] == "Drop-01"
    assert lines[0]["entered"].endswith("Z") and lines[0]["dwelled"] is True
    assert main(["truth", "--scenario", "parked_drift"]) == 0
    assert capsys.readouterr().out == ""


def test_gps_out_carries_the_parked_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "drift.nmea"
    assert main(["gps", "--scenario", "parked_drift", "--out", str(target)]) == 0
    capsys.readouterr()
    scenario = load_scenario("parked_drift")
    (zone,) = scenario.all_zones
    positions = [
        pynmea2.parse(line) for line in target.read_text().splitlines() if line[3:6] == "GGA"
    ]
    assert len(positions) == len(list(iter_epochs(scenario)))
    assert any(zone_contains(zone, m.latitude, m.longitude) for m in positions)
