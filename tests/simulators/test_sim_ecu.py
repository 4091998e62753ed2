"""The ECU model: J1979 encodings, discovery, DTCs, VIN, and the engine schedule.

Expected values are computed here from the route and the [engine] section
(not from the model's internals), then compared with what ``respond`` sends.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from obd.decoders import parse_dtc

from simulators.ecu import DEFAULT_VIN, EcuModel, decode_dtc, encode_dtc, engine_schedule
from simulators.route import build_drive, state_at
from simulators.scenario import ScenarioError, load_scenario, parse_scenario
from simulators.truth import engine_periods, idle_periods

SHORT = """
start_utc = 2024-05-14T07:30:00Z
[route]
waypoints = [
  { lat = 52.0, lon = 5.0, speed_kmh = 36, dwell_s = 60, engine = "idle" },
  { lat = 52.003, lon = 5.0, speed_kmh = 36, dwell_s = 100, engine = "off" },
  { lat = 52.006, lon = 5.0, speed_kmh = 36, dwell_s = 6, engine = "off" },
  { lat = 52.009, lon = 5.0, dwell_s = 20 },
]
[engine]
off_after_arrival_s = 5
start_before_departure_s = 8
[[dtcs]]
code = "P0301"
at_s = 10
[[dtcs]]
code = "C0035"
at_s = 10
[[dtcs]]
code = "B1234"
at_s = 20
cleared_at_s = 40
[[dtcs]]
code = "U0100"
at_s = 10
pending = true
"""


@pytest.fixture(scope="module")
def urban() -> EcuModel:
    return EcuModel(load_scenario("urban_delivery"))


def u16(data: bytes) -> int:
    return data[0] * 256 + data[1]


def running_seconds(periods: list[tuple[float, float]], t: float) -> float:
    return sum(max(0.0, min(hi, t) - lo) for lo, hi in periods)


def coolant(model: EcuModel, periods: list[tuple[float, float]], t: float) -> float:
    """First-order warm-up (8 min) and cool-down (30 min), stepped 0.5 s."""
    eng = model.engine
    temp, now, dt = eng.coolant_start_c, 0.0, 0.5
    while now < t:
        step = min(dt, t - now)
        on = any(lo <= now + step / 2 < hi for lo, hi in periods)
        target, tau = (eng.coolant_operating_c, 480.0) if on else (eng.coolant_start_c, 1800.0)
        temp += (target - temp) * (1 - math.exp(-step / tau))
        now += step
    return temp


@pytest.mark.parametrize("t", [0.0, 350.0, 800.0, 900.0, 1120.0, 1600.0, 1900.0, 2100.0])
def test_mode_01_encodings_match_the_route_and_engine(urban: EcuModel, t: float) -> None:
    scenario = urban.scenario
    eng = urban.engine
    vehicle = state_at(build_drive(scenario), t)
    periods = engine_periods(scenario)
    running = any(lo <= t < hi for lo, hi in periods)
    speed = vehicle.speed_mps * 3.6
    if not running:
        rpm = 0.0
    elif speed == 0:
        rpm = eng.idle_rpm
    else:
        rpm = eng.idle_rpm + eng.rpm_per_kmh * speed
    km = vehicle.odometer_m / 1000
    litres = eng.idle_fuel_l_per_h * running_seconds(periods, t) / 3600
    litres += eng.fuel_l_per_100km * km / 100
    level = eng.fuel_level_start_pct - 100 * litres / eng.tank_l
    rate = (eng.idle_fuel_l_per_h + eng.fuel_l_per_100km * speed / 100) if running else 0.0
    run_time = next((t - lo for lo, hi in periods if lo <= t < hi), 0.0)

    def pid(number: int) -> bytes:
        reply = urban.respond(bytes((0x01, number)), t)
        assert reply is not None and reply[:2] == bytes((0x41, number)), reply
        return reply[2:]

    assert u16(pid(0x0C)) / 4 == pytest.approx(rpm, abs=0.125)
    assert pid(0x0D)[0] == round(speed)
    assert pid(0x05)[0] - 40 == pytest.approx(coolant(urban, periods, t), abs=0.6)
    assert pid(0x2F)[0] * 100 / 255 == pytest.approx(level, abs=100 / 255 / 2 + 1e-9)
    assert u16(pid(0x5E)) / 20 == pytest.approx(rate, abs=0.025 + 1e-9)
    maf = rate * 0.745 * 1000 / 3600 * 14.7
    assert u16(pid(0x10)) / 100 == pytest.approx(maf, abs=0.005 + 1e-9)
    assert u16(pid(0x42)) / 1000 == (14.1 if running else 12.4)
    assert u16(pid(0x1F)) == round(run_time)
    odometer = int.from_bytes(pid(0xA6), "big") / 10
    assert odometer == pytest.approx(eng.odometer_start_km + km, abs=0.05)
    assert u16(pid(0x31)) == round(1520.0 + km)
    assert 0 <= pid(0x04)[0] <= 255 and 0 <= pid(0x11)[0] <= 255
    assert pid(0x0F)[0] - 40 >= eng.coolant_start_c
    mil_on = 560 <= t < 1200
    assert pid(0x01)[0] == (0x81 if mil_on else 0x00)


def test_rpm_example_from_the_brief() -> None:
    """0x1AF8 / 4 = 1726 rpm: idle 750 + 28 rpm per km/h at 34.857 km/h."""
    model = EcuModel(parse_scenario(SHORT))
    speed = (1726 - 750) / 28
    drive = build_drive(model.scenario)
    lo, hi = 60.0, 70.0  # accelerating away from the first stop
    while hi - lo > 1e-9:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if state_at(drive, mid).speed_mps * 3.6 < speed else (lo, mid)
    assert model.respond(b"\x01\x0c", hi) == b"\x41\x0c\x1a\xf8"


def bitmap_pids(data: bytes, base: int) -> set[int]:
    bits = int.from_bytes(data, "big")
    return {base + 1 + i for i in range(32) if bits & (1 << (31 - i))}


def test_discovery_bitmaps_chain_to_every_supported_pid(urban: EcuModel) -> None:
    found: set[int] = set()
    base = 0x00
    while True:
        reply = urban.respond(bytes((0x01, base)), 100.0)
        assert reply is not None and reply[:2] == bytes((0x41, base))
        pids = bitmap_pids(reply[2:], base)
        found |= pids
        if base + 0x20 not in pids:
            break
        base += 0x20
    assert base == 0xA0  # A6 (odometer) is reachable: 20, 40, 60, 80, A0 lead to it
    expected = {0x01, 0x04, 0x05, 0x0C, 0x0D, 0x0F, 0x10, 0x11, 0x1C, 0x1F, 0x21, 0x2F}
    expected |= {0x31, 0x42, 0x46, 0x5E, 0xA6, 0x20, 0x40, 0x60, 0x80, 0xA0}
    assert found == expected
    assert urban.supported_pids == expected | {0x00}
    assert urban.respond(b"\x01\xc0", 100.0) is None  # the range after A0 is not supported
    assert urban.respond(b"\x01\x0b", 100.0) is None  # MAP: not supported -> silence


def test_a_short_pid_list_gives_a_short_bitmap() -> None:
    text = SHORT + '[obd]\nsupported_pids = ["0C", "0D"]\n'
    model = EcuModel(parse_scenario(text))
    assert model.respond(b"\x01\x00", 0.0) == b"\x41\x00\x00\x18\x00\x00"
    assert model.respond(b"\x01\x20", 0.0) is None
    assert model.respond(b"\x01\x05", 0.0) is None
    both = model.respond(b"\x01\x0c\x05\x0d", 0.0)  # multi-PID request: the supported ones
    assert both == b"\x41\x0c\x0b\xb8\x0d\x00"  # 750 rpm idling, 0 km/h


@pytest.mark.parametrize(
    ("code", "raw"),
    [
        ("P0301", b"\x03\x01"),
        ("C0035", b"\x40\x35"),
        ("B1234", b"\x92\x34"),
        ("U0100", b"\xc1\x00"),
    ],
)
def test_dtc_encoding_is_sae_j2012(code: str, raw: bytes) -> None:
    assert encode_dtc(code) == raw
    assert decode_dtc(raw) == code
    parsed = parse_dtc((raw[0], raw[1]))
    assert parsed is not None and parsed[0] == code  # python-OBD reads it the same way


def test_stored_pending_and_cleared_codes() -> None:
    model = EcuModel(parse_scenario(SHORT))
    assert model.respond(b"\x03", 5.0) == b"\x43\x00"
    assert model.respond(b"\x03", 25.0) == b"\x43\x03\x03\x01\x40\x35\x92\x34"
    assert model.respond(b"\x03", 45.0) == b"\x43\x02\x03\x01\x40\x35"  # B1234 cleared itself
    assert model.respond(b"\x07", 45.0) == b"\x47\x01\xc1\x00"
    mil = model.respond(b"\x01\x01", 45.0)
    assert mil is not None and mil[2] == 0x82  # MIL on, 2 stored codes
    before = model.state_at(150.0)
    assert before.distance_since_clear_km > 1000
    assert model.respond(b"\x04", 100.0) == b"\x44"
    assert model.respond(b"\x03", 150.0) == b"\x43\x00"
    assert model.respond(b"\x07", 150.0) == b"\x47\x00"
    after = model.state_at(150.0)
    assert after.distance_since_clear_km == pytest.approx(
        (state_at(model.drive, 150.0).odometer_m - state_at(model.drive, 100.0).odometer_m) / 1000
    )
    assert model.respond(b"\x03", 50.0) == b"\x43\x02\x03\x01\x40\x35"  # before the clear


def test_vin_and_mode_09_support() -> None:
    urban = EcuModel(load_scenario("urban_delivery"))
    assert urban.respond(b"\x09\x02", 0.0) == b"\x49\x02\x01" + b"WDB9066331S123456"
    assert urban.respond(b"\x09\x00", 0.0) == b"\x49\x00\x40\x00\x00\x00"
    assert urban.respond(b"\x09\x04", 0.0) is None
    default = EcuModel(parse_scenario(SHORT))
    assert default.vin == DEFAULT_VIN and len(DEFAULT_VIN) == 17
    weights = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2]
    values = {**{str(d): d for d in range(10)}, **dict(zip("ABCDEFGH", range(1, 9), strict=True))}
    values |= {**dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9}
    values |= dict(zip("STUVWXYZ", range(2, 10), strict=True))
    check = sum(values[c] * w for c, w in zip(DEFAULT_VIN, weights, strict=True)) % 11
    assert DEFAULT_VIN[8] == ("X" if check == 10 else str(check))


def test_unknown_services_and_malformed_requests_get_no_answer(urban: EcuModel) -> None:
    for request in (b"", b"\x01", b"\x02\x0c", b"\x06\x00", b"\x03\x00", b"\x22\xf1\x90"):
        assert urban.respond(request, 100.0) is None, request


def test_same_scenario_same_t_same_bytes() -> None:
    a = EcuModel(load_scenario("urban_delivery"))
    b = EcuModel(load_scenario("urban_delivery"))
    for t in (0.0, 123.4, 800.0, 1600.0, 5000.0):
        for pid in (0x0C, 0x0D, 0x05, 0x2F, 0x10, 0xA6):
            assert a.respond(bytes((1, pid)), t) == b.respond(bytes((1, pid)), t)
    assert [a.state_at(t) for t in (5.0, 1.0)] == [b.state_at(t) for t in (5.0, 1.0)]


# --------------------------------------------------------------------------- engine truth


def test_the_vehicle_never_moves_with_the_engine_off() -> None:
    for name in ("urban_delivery", "parked_drift", "highway", "urban_20_stops"):
        scenario = load_scenario(name)
        model = EcuModel(scenario)
        periods = engine_periods(scenario)
        assert periods == list(model.engine_periods)
        end = model.drive.duration
        for i in range(int((end + 60) * 2)):
            t = i / 2
            state = model.state_at(t)
            assert state.running == any(lo <= t < hi for lo, hi in periods), (name, t)
            if state.speed_kmh > 0:
                assert state.running, (name, t)
            if not state.running:
                assert state.rpm == 0 and state.battery_v == 12.4 and state.fuel_rate_lph == 0
            else:
                assert state.battery_v > 13.2 and state.rpm >= model.engine.idle_rpm
        assert not model.state_at(end + 1).running  # off at the end of the route


def test_idle_periods_follow_the_stops_of_urban_delivery() -> None:
    scenario = load_scenario("urban_delivery")
    stops = build_drive(scenario).first.stops
    idles = idle_periods(scenario)
    by_stop: dict[int, list[tuple[float, float]]] = {}
    for idle in idles:
        by_stop.setdefault(idle.waypoint, []).append((idle.start_s, idle.end_s))
        assert idle.duration_s == pytest.approx(idle.end_s - idle.start_s)
    assert len(stops) == 9  # depot, 5 drops, 2 traffic lights, depot
    for visit in stops:
        wp = scenario.route.waypoints[visit.waypoint]
        spans = [x for span in by_stop[visit.waypoint] for x in span]
        if wp.engine == "off":
            expected = [visit.arrive_s, visit.arrive_s + 5, visit.depart_s - 8, visit.depart_s]
        else:
            expected = [visit.arrive_s, visit.depart_s]
        assert spans == pytest.approx(expected, abs=1e-3)
    durations = {i.stop_name: i.duration_s for i in idles if i.duration_s > 10}
    assert durations["Drop 1 Zuilen"] == 120 and durations["Drop 5 Lombok"] == 180
    lights = [i for i in idles if i.stop_name == ""]
    assert [i.duration_s for i in lights] == [30, 40]
    assert idles[0].start_s == 0 and idles[0].duration_s == 20  # at the depot
    assert idles[-1].duration_s == 330 > 300  # excessive idle back at the depot
    assert [i.stop_name for i in idles].count("Drop 3 Ondiep") == 2  # engine off: a trip split
    periods = engine_periods(scenario)
    assert len(periods) == 2
    assert idles[-1].end_s == pytest.approx(periods[-1][1], abs=1e-3)  # off at the end


def test_urban_delivery_has_slow_traffic_and_speeding() -> None:
    drive = build_drive(load_scenario("urban_delivery"))
    states = [state_at(drive, i / 10) for i in range(int(drive.duration * 10))]
    crawl = [s for s in states if 0 < s.speed_mps * 3.6 <= 8.0]
    assert len(crawl) / 10 > 120  # minutes at walking pace ...
    crawl_m = max(s.odometer_m for s in crawl) - min(s.odometer_m for s in crawl)
    assert crawl_m > 200  # ... over more than 200 m, always moving
    fast = [s for s in states if s.speed_mps * 3.6 > 53.0]
    assert len(fast) / 10 >= 20 and max(s.speed_mps for s in fast) * 3.6 == pytest.approx(65)


def test_parked_drift_is_parked_with_the_engine_off() -> None:
    scenario = load_scenario("parked_drift")
    assert scenario.route.waypoints[0].engine == "off"
    model = EcuModel(scenario)
    first_start = engine_periods(scenario)[0][0]
    assert first_start == pytest.approx(1800 - 8)
    for t in (0.0, 600.0, 1500.0, 1791.0):
        state = model.state_at(t)
        assert not state.running and state.rpm == 0 and state.battery_v == 12.4
        assert model.respond(b"\x01\x0c", t) == b"\x41\x0c\x00\x00"  # ignition on, engine off
    assert model.state_at(1795.0).running and model.state_at(1795.0).speed_kmh == 0
    assert model.state_at(1750.0).coolant_c == pytest.approx(model.engine.coolant_start_c)


def test_short_off_stops_are_off_for_half_their_dwell() -> None:
    scenario = parse_scenario(SHORT)
    stops = build_drive(scenario).first.stops
    periods = engine_schedule(scenario)
    six = stops[2]  # dwell 6 s < 5 + 8: scaled, off for 3 s in the middle
    gaps = [(a[1], b[0]) for a, b in pairwise(periods)]
    assert gaps[0] == pytest.approx((stops[1].arrive_s + 5, stops[1].depart_s - 8))
    assert gaps[1][1] - gaps[1][0] == pytest.approx(3.0)
    assert gaps[1][0] == pytest.approx(six.arrive_s + 5 * 6 / 26)
    assert periods[-1][1] == pytest.approx(stops[3].depart_s)  # idles at the end, then off


def test_coolant_warms_while_running_and_cools_when_off(urban: EcuModel) -> None:
    lo, hi = engine_periods(urban.scenario)[0][1], engine_periods(urban.scenario)[1][0]
    assert urban.state_at(0).coolant_c == urban.engine.coolant_start_c
    assert urban.state_at(lo).coolant_c > urban.state_at(hi).coolant_c  # cooled while off
    assert urban.state_at(480).coolant_c == pytest.approx(14 + 76 * (1 - math.exp(-1)), abs=0.1)
    levels = [urban.state_at(t).fuel_level_pct for t in range(0, 2100, 30)]
    assert levels == sorted(levels, reverse=True) and levels[0] == 62


# --------------------------------------------------------------------------- validation


def problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text)
    return info.value.problems


def test_engine_and_fault_keys_are_validated() -> None:
    not_a_stop = SHORT.replace(
        "{ lat = 52.009, lon = 5.0, dwell_s = 20 }", '{ lat = 52.009, lon = 5.0, engine = "off" }'
    )
    assert problems(not_a_stop)[0].startswith("route.waypoints[3].engine: only on a stop")
    bad_mode = SHORT.replace('engine = "idle"', 'engine = "on"')
    assert problems(bad_mode)[0].startswith("route.waypoints[0].engine:")
    fault = "\n[obd]\nfaults = [{ at_s = 5, duration_s = 10, kind = 'no_data', delay_ms = 5 }]\n"
    assert problems(SHORT + fault)[0].startswith("obd.faults[0].delay_ms: only with kind = 'slow'")
    meteor = "\n[obd]\nfaults = [{ at_s = 5, duration_s = 10, kind = 'meteor' }]\n"
    assert problems(SHORT + meteor)[0].startswith("obd.faults[0].kind:")
    pid = '\n[obd]\nsupported_pids = ["0C", "0B"]\n'
    assert problems(SHORT + pid)[0].startswith("obd.supported_pids[1]: the simulated ECU cannot")
