"""NMEA rendering: checksums, what pynmea2 reads back, units, time and date edges."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from itertools import islice

import pynmea2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.nmea_out import (
    EncodedEpoch,
    GnssEpoch,
    checksum,
    encode,
    iter_epochs,
    render_epoch,
    rmc,
    sky_view,
    vtg,
)
from simulators.route import haversine_m
from simulators.scenario import load_scenario, parse_scenario

SKY = sky_view(1, 12, 9, "GP")


def epoch(lat: float = 52.1, lon: float = 5.07, speed: float = 0.0, **kw: object) -> GnssEpoch:
    values: dict[str, object] = {
        "utc": datetime(2024, 5, 14, 7, 30, tzinfo=UTC),
        "valid": True,
        "lat": lat,
        "lon": lon,
        "alt_msl_m": 2.0,
        "geoid_sep_m": 46.9,
        "speed_mps": speed,
        "course_deg": 87.5,
        "hdop": 0.9,
        "vdop": 1.35,
        "pdop": 1.62,
        "satellites": SKY,
    }
    values.update(kw)
    return GnssEpoch(**values)  # type: ignore[arg-type]


def own_checksum_ok(line: str) -> bool:
    body, _, cs = line[1:].partition("*")
    value = 0
    for ch in body:
        value ^= ord(ch)
    return line.startswith("$") and cs == f"{value:02X}"


def lines_of(data: bytes) -> list[str]:
    text = data.decode("ascii")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    return text.split("\r\n")[:-1]


def small_scenario(start: str, rate: int = 1, extra: str = "") -> str:
    return f"""
start_utc = {start}
[route]
waypoints = [
  {{ lat = 52.0, lon = 5.0, speed_kmh = 36, dwell_s = 3 }},
  {{ lat = 52.001, lon = 5.0, dwell_s = 3 }},
]
[gnss]
rate_hz = {rate}
{extra}
"""


def test_checksum_of_a_known_sentence() -> None:
    body = "GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,"
    assert checksum(body) == "76"


@pytest.mark.parametrize("talker", ["GP", "GN"])
def test_every_sentence_has_a_valid_checksum_and_parses(talker: str) -> None:
    sky = sky_view(5, 20, 14, talker) if talker == "GN" else SKY
    sentences = render_epoch(epoch(speed=12.0, satellites=sky), talker)
    kinds = [s[3:6] for s in sentences]
    assert kinds[:4] == ["RMC", "VTG", "GGA", "GSA"] and "GSV" in kinds
    for line in sentences:
        assert own_checksum_ok(line), line
        msg = pynmea2.parse(line, check=True)
        assert msg.sentence_type == line[3:6]
    assert all(s.startswith(f"${talker}") for s in sentences if s[3:6] != "GSV")
    assert encode(sentences) == "".join(s + "\r\n" for s in sentences).encode()


def test_gsa_and_gsv_agree_with_the_sky() -> None:
    sky = sky_view(5, 20, 14, "GN")
    sentences = render_epoch(epoch(satellites=sky), "GN")
    gga = pynmea2.parse(sentences[2])
    gsas = [pynmea2.parse(s) for s in sentences if s[3:6] == "GSA"]
    assert len(gsas) == 2
    used = [getattr(g, f"sv_id{i:02d}") for g in gsas for i in range(1, 13)]
    assert int(gga.num_sats) == len([u for u in used if u]) == 14
    for system in ("GP", "GL"):
        gsv = [pynmea2.parse(s) for s in sentences if s.startswith(f"${system}GSV")]
        assert {int(g.num_messages) for g in gsv} == {len(gsv)}
        in_view = [s for s in sky if s.system == system]
        assert all(int(g.num_sv_in_view) == len(in_view) for g in gsv)
    assert {s.prn for s in sky if s.system == "GL"} <= set(range(65, 89))


@given(
    lat=st.floats(min_value=-89.999999, max_value=89.999999),
    lon=st.floats(min_value=-179.999999, max_value=179.999999),
)
def test_lat_lon_round_trip_within_1e_6_degrees(lat: float, lon: float) -> None:
    for line in render_epoch(epoch(lat, lon))[:3:2]:  # RMC and GGA
        msg = pynmea2.parse(line, check=True)
        assert abs(msg.latitude - lat) <= 1e-6
        assert abs(msg.longitude - lon) <= 1e-6


@pytest.mark.parametrize("value", [52.99999999, -0.0000001, 0.0, 4.9999999999, -179.9999999])
def test_minutes_that_round_to_60_carry_into_the_degrees(value: float) -> None:
    msg = pynmea2.parse(render_epoch(epoch(lat=value / 2, lon=value))[0], check=True)
    assert abs(msg.longitude - value) <= 1e-6 and abs(msg.latitude - value / 2) <= 1e-6
    assert int(msg.lat[2:4]) < 60 and int(msg.lon[3:5]) < 60  # never "60.00000" minutes


def test_speed_in_knots_and_kmh() -> None:
    msg = pynmea2.parse(rmc(epoch(speed=10.0)), check=True)
    assert float(msg.spd_over_grnd) == pytest.approx(10.0 * 3600 / 1852, abs=5e-4)
    assert float(msg.spd_over_grnd) == 19.438
    v = pynmea2.parse(vtg(epoch(speed=10.0)), check=True)
    assert float(v.spd_over_grnd_kmph) == 36.0
    assert float(v.spd_over_grnd_kts) == 19.438
    assert float(v.true_track) == 87.5


def test_no_fix_epoch_is_void_but_well_formed() -> None:
    sentences = render_epoch(epoch(valid=False), "GP")
    parsed = [pynmea2.parse(s, check=True) for s in sentences]
    assert parsed[0].status == "V" and parsed[0].latitude == 0.0 and parsed[0].lat == ""
    assert parsed[2].gps_qual == 0
    assert parsed[3].mode_fix_type == "1"
    assert parsed[-1].num_sv_in_view == "00"


def test_date_rolls_over_at_midnight() -> None:
    scenario = parse_scenario(small_scenario("2024-12-31T23:59:58Z"))
    first = list(islice(iter_epochs(scenario), 4))
    rmcs = [pynmea2.parse(lines_of(e.data)[0], check=True) for e in first]
    stamps = [datetime.combine(m.datestamp, m.timestamp) for m in rmcs]
    assert [s.isoformat() for s in stamps] == [
        "2024-12-31T23:59:58+00:00",
        "2024-12-31T23:59:59+00:00",
        "2025-01-01T00:00:00+00:00",
        "2025-01-01T00:00:01+00:00",
    ]
    assert lines_of(first[2].data)[0].split(",")[9] == "010125"


def test_leap_day_and_10hz_rollover() -> None:
    scenario = parse_scenario(small_scenario("2024-02-28T23:59:59.5Z", rate=10))
    stamps = []
    for e in islice(iter_epochs(scenario), 8):
        fields = lines_of(e.data)[0].split(",")
        stamps.append((fields[9], fields[1]))
    assert stamps[4] == ("280224", "235959.90")
    assert stamps[5] == ("290224", "000000.00")


def test_10hz_epochs_carry_fractional_seconds_and_gsv_once_a_second() -> None:
    scenario = parse_scenario(small_scenario("2024-05-14T07:30:00Z", rate=10))
    epochs: list[EncodedEpoch] = list(islice(iter_epochs(scenario), 21))
    times = [pynmea2.parse(lines_of(e.data)[0]).timestamp for e in epochs]
    assert [t.microsecond // 10000 for t in times[:11]] == [*range(0, 100, 10), 0]
    assert [e.t for e in epochs[:3]] == [0.0, 0.1, 0.2]
    with_gsv = [i for i, e in enumerate(epochs) if b"GSV" in e.data]
    assert with_gsv == [0, 10, 20]
    assert all(
        lines_of(e.data)[0].split(",")[1].endswith(f"{i % 10}0") for i, e in enumerate(epochs)
    )


def test_reported_motion_matches_the_truth_and_parks_at_zero() -> None:
    scenario = parse_scenario(small_scenario("2024-05-14T07:30:00Z"))
    for e in iter_epochs(scenario):
        msg = pynmea2.parse(lines_of(e.data)[0], check=True)
        knots = e.state.speed_mps * 3600 / 1852
        assert float(msg.spd_over_grnd) == pytest.approx(knots, abs=6e-4)
        assert abs(msg.latitude - e.state.lat) <= 1e-6
        if not e.state.moving:
            assert float(msg.spd_over_grnd) == 0.0


def test_parked_jitter_is_bounded_deterministic_and_only_while_stopped() -> None:
    jitter = "parked_jitter_m = 3.0\nseed = 4"
    text = small_scenario("2024-05-14T07:30:00Z", extra=jitter).replace("= 3 }", "= 300 }")
    scenario = parse_scenario(text)
    runs = [list(iter_epochs(scenario)) for _ in range(2)]
    assert [e.data for e in runs[0]] == [e.data for e in runs[1]]
    offsets = []
    for e in runs[0]:
        msg = pynmea2.parse(lines_of(e.data)[0], check=True)
        off = haversine_m(msg.latitude, msg.longitude, e.state.lat, e.state.lon)
        if e.state.moving:
            assert off < 0.05
        else:
            assert off <= 3.0 + 0.05
            offsets.append(off)
    assert max(offsets) > 1.0  # it does wander
    other = parse_scenario(text.replace("seed = 4", "seed = 5"))
    assert [e.data for e in iter_epochs(other)] != [e.data for e in runs[0]]


def test_outage_voids_the_fix_for_its_duration() -> None:
    scenario = parse_scenario(
        small_scenario("2024-05-14T07:30:00Z", extra="outages = [{ start_s = 5, duration_s = 3 }]")
    )
    status = {e.t: lines_of(e.data)[0].split(",")[2] for e in iter_epochs(scenario)}
    assert [status[t] for t in (4.0, 5.0, 6.0, 7.0, 8.0)] == ["A", "V", "V", "V", "A"]


def test_bundled_drives_render_cleanly() -> None:
    for name in ("urban_delivery", "highway"):
        scenario = load_scenario(name)
        count = 0
        for e in iter_epochs(scenario, duration_s=600):
            for line in lines_of(e.data):
                assert own_checksum_ok(line)
                pynmea2.parse(line, check=True)
            count += 1
        assert count == 601


def test_duration_and_loop_bound_the_stream() -> None:
    scenario = parse_scenario(small_scenario("2024-05-14T07:30:00Z"))
    plain = list(iter_epochs(scenario))
    assert plain[-1].t == math.floor(plain[-1].t) and plain[-1].state.stop_remaining_s == math.inf
    assert len(list(iter_epochs(scenario, duration_s=4.5))) == 5
    looped = list(iter_epochs(scenario, duration_s=3 * plain[-1].t, loop=True))
    assert len(looped) > 2 * len(plain) and looped[-1].state.lap >= 2
