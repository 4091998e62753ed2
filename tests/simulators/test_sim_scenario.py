"""Scenario files: bundled ones load, and every mistake names its key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from simulators.scenario import (
    Scenario,
    ScenarioError,
    bundled_scenarios,
    load_scenario,
    parse_scenario,
    with_gnss,
)

MINIMAL = """
start_utc = 2024-05-14T07:30:00Z
[route]
waypoints = [
  { lat = 52.0, lon = 5.0, speed_kmh = 30 },
  { lat = 52.001, lon = 5.0 },
]
"""

FULL = """
name = "all_sections"
description = "every section, including those for later simulators"
start_utc = 2024-05-14T09:30:00+02:00

[vehicle]
max_accel_mps2 = 1.2
max_decel_mps2 = 2.5
max_lateral_accel_mps2 = 2.2
vin = "WDB9066331S123456"

[route]
altitude_m = 10.0
corner_cut_m = 4.0
waypoints = [
  { lat = 52.0, lon = 5.0, speed_kmh = 30, dwell_s = 10, name = "depot", alt_m = 3.0 },
  { lat = 52.001, lon = 5.0, speed_kmh = 50, accel_mps2 = 3.0, decel_mps2 = 5.0 },
  { lat = 52.001, lon = 5.002, dwell_s = 0 },
]

[gnss]
rate_hz = 5
talker = "GN"
satellites_used = 14
satellites_in_view = 20
hdop = 0.8
vdop = 1.1
pdop = 1.4
geoid_separation_m = 46.0
parked_jitter_m = 2.0
seed = 3
outages = [{ start_s = 30, duration_s = 5 }]

[engine]
idle_rpm = 700
off_at_stops_longer_than_s = 60

[obd]
protocol = "6"
supported_pids = ["0C", "0D", "05"]

[can]
bitrate = 500000

[imu]
rate_hz = 100

[[events]]
at_s = 42.0
kind = "pothole"
peak_g = 2.5

[[dtcs]]
code = "P0301"
at_s = 60
cleared_at_s = 120
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, origin="test.toml")
    assert str(info.value).startswith("test.toml: invalid scenario:")
    return info.value.problems


def test_bundled_scenarios_load() -> None:
    names = bundled_scenarios()
    assert {"urban_delivery", "highway"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert scenario.start_utc.tzinfo is not None


def test_minimal_file_gets_defaults_and_name_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny_trip.toml"
    path.write_text(MINIMAL)
    scenario = load_scenario(path)
    assert scenario.name == "tiny_trip"
    assert scenario.gnss.rate_hz == 1 and scenario.gnss.talker == "GP"
    assert scenario.vehicle.max_accel_mps2 == 1.5
    assert scenario.engine is None and scenario.events == ()


def test_every_section_validates_and_time_is_utc() -> None:
    scenario = parse_scenario(FULL)
    assert isinstance(scenario, Scenario)
    assert scenario.start_utc == datetime(2024, 5, 14, 7, 30, tzinfo=UTC)
    assert scenario.start_utc.utcoffset() is not None
    assert scenario.gnss.outages[0].duration_s == 5
    assert scenario.dtcs[0].code == "P0301"
    assert scenario.obd is not None and scenario.obd.supported_pids == ("0C", "0D", "05")


def test_derived_dops() -> None:
    gnss = parse_scenario(MINIMAL).gnss
    assert gnss.vdop_value == pytest.approx(1.35)
    assert gnss.pdop_value == pytest.approx((0.9**2 + 1.35**2) ** 0.5, abs=0.01)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("lat = 52.0, lon = 5.0,", "lat = 91.0, lon = 5.0,"), "route.waypoints[0].lat"),
        (("speed_kmh = 30 }", "speed_kmh = -5 }"), "route.waypoints[0].speed_kmh"),
        (("speed_kmh = 30 }", "speed_kmh = 30, dwell = 5 }"), "route.waypoints[0].dwell"),
        (("2024-05-14T07:30:00Z", "2024-05-14T07:30:00"), "start_utc"),
        (("start_utc", "strat_utc"), "strat_utc"),
        (("[route]", "[rout]"), "rout"),
    ],
)
def test_errors_name_the_key(change: tuple[str, str], key: str) -> None:
    text = MINIMAL.replace(*change)
    found = problems(text)
    assert any(p.startswith(f"{key}:") for p in found), found


def test_missing_keys_are_named() -> None:
    found = problems("[route]\nwaypoints = []\n")
    assert "start_utc: required key is missing" in found
    assert any(p.startswith("route.waypoints:") for p in found), found


def test_cross_field_errors_name_the_key() -> None:
    no_speed = MINIMAL.replace(", speed_kmh = 30 }", " }")
    assert problems(no_speed)[0].startswith("route.waypoints[0].speed_kmh: required")
    duplicate = MINIMAL.replace("lat = 52.001", "lat = 52.0")
    assert problems(duplicate)[0].startswith("route.waypoints[1]: less than 1 m")
    too_many = MINIMAL + "[gnss]\nsatellites_used = 14\nsatellites_in_view = 20\n"
    assert problems(too_many)[0].startswith("gnss.satellites_used: at most 12")
    more_used = MINIMAL + "[gnss]\nsatellites_used = 10\nsatellites_in_view = 8\n"
    assert problems(more_used)[0].startswith("gnss.satellites_used:")
    bad_rate = MINIMAL + "[gnss]\nrate_hz = 20\n"
    assert problems(bad_rate)[0].startswith("gnss.rate_hz:")
    bad_talker = MINIMAL + '[gnss]\ntalker = "GL"\n'
    assert problems(bad_talker)[0].startswith("gnss.talker:")


def test_later_sections_are_validated_too() -> None:
    bad_dtc = FULL.replace('code = "P0301"', 'code = "X0301"')
    assert problems(bad_dtc)[0].startswith("dtcs[0].code:")
    bad_clear = FULL.replace("cleared_at_s = 120", "cleared_at_s = 10")
    assert problems(bad_clear)[0].startswith("dtcs[0].cleared_at_s: must be later")
    bad_event = FULL.replace('kind = "pothole"', 'kind = "meteor"')
    assert problems(bad_event)[0].startswith("events[0].kind:")
    bad_pid = FULL.replace('"0D"', '"0d"')
    assert problems(bad_pid)[0].startswith("obd.supported_pids[1]:")
    bad_rpm = FULL.replace("idle_rpm = 700", "idle_rpm = 1900\nredline_rpm = 1800")
    assert problems(bad_rpm)[0].startswith("engine.idle_rpm: must be below")


def test_invalid_toml_and_unknown_names() -> None:
    found = problems("start_utc = \n")
    assert found[0].startswith("not valid TOML:")
    with pytest.raises(ScenarioError, match="not a bundled scenario"):
        load_scenario("no_such_scenario")


def test_overrides_are_validated_like_the_file() -> None:
    scenario = load_scenario("urban_delivery")
    assert with_gnss(scenario, rate_hz=None, talker=None) is scenario
    faster = with_gnss(scenario, rate_hz=10, talker="GN")
    assert (faster.gnss.rate_hz, faster.gnss.talker) == (10, "GN")
    assert scenario.gnss.rate_hz == 1  # the original is untouched
    with pytest.raises(ScenarioError) as info:
        with_gnss(scenario, rate_hz=11)
    assert info.value.problems[0].startswith("gnss.rate_hz:")
    with pytest.raises(ScenarioError) as info:
        with_gnss(load_scenario("highway"), talker="GP")
    assert info.value.problems[0].startswith("gnss.satellites_used: at most 12")
