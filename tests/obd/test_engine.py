"""Engine state from timestamped RPM, voltage and silence: back-dated, no flapping."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.gps.fix import Fix, FixMode
from agent.messages import EventData
from agent.obd.engine import EngineStateDetector, EngineUpdate
from agent.obd.state import EngineSample, EngineState
from agent.trips import IdleDetector

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


# A reading: (seconds since T0, kind, value); kinds "rpm", "volts", "silence", "tick".
Reading = tuple[float, str, float | None]


def feed(det: EngineStateDetector, readings: Iterable[Reading]) -> list[tuple[float, EventData]]:
    """Feed readings in order; return (seconds when emitted, event)."""
    out: list[tuple[float, EventData]] = []
    for t, kind, value in readings:
        upd = step(det, t, kind, value)
        out += [(t, e) for e in upd.events]
    return out


def step(det: EngineStateDetector, t: float, kind: str, value: float | None) -> EngineUpdate:
    ts = at(t)
    if kind == "rpm":
        return det.feed_rpm(ts, t, value)
    if kind == "volts":
        return det.feed_voltage(ts, t, value)
    if kind == "silence":
        return det.feed_silence(ts, t)
    return det.tick(ts, t)


def rpm(start: float, end: float, value: float | None, hz: float = 2.0) -> list[Reading]:
    n = round((end - start) * hz)
    return [(start + i / hz, "rpm", value) for i in range(n)]


def volts(start: float, end: float, value: float, every: float = 1.0) -> list[Reading]:
    n = round((end - start) / every)
    return [(start + i * every, "volts", value) for i in range(n)]


def merged(*streams: list[Reading]) -> list[Reading]:
    return sorted((r for s in streams for r in s), key=lambda r: r[0])


def brief(events: list[tuple[float, EventData]]) -> list[tuple[str, float, float]]:
    """(type, dated at, emitted at) in seconds since T0."""
    return [(e.type, (e.ts - T0).total_seconds(), t) for t, e in events]


# --------------------------------------------------------------------------- RPM


def test_rpm_start_and_stop_are_back_dated() -> None:
    det = EngineStateDetector()
    readings = rpm(0, 10, 0.0) + rpm(10, 70, 780.0) + rpm(70, 90, 0.0)
    events = feed(det, readings)
    assert brief(events) == [
        ("engine_off", 0.0, 3.0),  # first read: learnt OFF, dated at the first 0 rpm
        ("engine_on", 10.0, 12.0),
        ("engine_off", 70.0, 73.0),
    ]
    on, off = events[1][1], events[2][1]
    assert on.data == {"previous": "off", "rpm": 780.0, "voltage": None, "source": "rpm"}
    assert off.data["running_s"] == 60.0 and off.data["source"] == "rpm"
    assert events[0][1].data["previous"] == "unknown" and "running_s" not in events[0][1].data
    assert det.state is EngineState.OFF and det.since == at(70)


def test_cranking_rpm_is_neutral_and_glitches_do_not_switch() -> None:
    det = EngineStateDetector()
    readings = [
        *rpm(0, 5, 0.0),
        (5.0, "rpm", 900.0),  # one glitch while off
        *rpm(5.5, 10, 0.0),
        *rpm(10, 11, 220.0),  # cranking
        *rpm(11, 40, 850.0),
        (40.0, "rpm", 0.0),  # one dropped reading while running
        *rpm(40.5, 60, 850.0),
    ]
    assert brief(feed(det, readings)) == [("engine_off", 0.0, 3.0), ("engine_on", 11.0, 13.0)]


def test_slow_polling_needs_two_consecutive_samples() -> None:
    det = EngineStateDetector()
    events = feed(det, [(0.0, "rpm", 800.0), (5.0, "rpm", 800.0), (10.0, "rpm", 800.0)])
    assert brief(events) == [("engine_on", 0.0, 5.0)]


def test_silent_ecu_with_a_resting_battery_is_off() -> None:
    det = EngineStateDetector()
    silence: list[Reading] = [(t / 2, "silence", None) for t in range(60, 120)]
    readings = merged(rpm(0, 30, 800.0), volts(0, 30, 14.1, 5.0), volts(30, 60, 12.4, 5.0), silence)
    events = feed(det, readings)
    assert brief(events) == [("engine_on", 0.0, 2.0), ("engine_off", 30.0, 33.0)]
    assert events[1][1].data["source"] == "rpm"
    assert events[1][1].data["voltage"] == 12.4
    assert events[1][1].data["rpm"] is None


def test_silence_while_charging_is_a_glitch_not_an_engine_stop() -> None:
    det = EngineStateDetector()
    silence: list[Reading] = [(t / 2, "silence", None) for t in range(60, 120)]
    readings = merged(rpm(0, 30, 800.0), volts(0, 60, 14.1, 5.0), silence)
    assert brief(feed(det, readings)) == [("engine_on", 0.0, 2.0)]
    assert det.state is EngineState.RUNNING


# --------------------------------------------------------------------------- voltage


def test_voltage_alone_with_hysteresis() -> None:
    det = EngineStateDetector()
    readings = volts(0, 20, 12.45) + volts(20, 100, 14.1) + volts(100, 130, 12.6)
    events = feed(det, readings)
    assert brief(events) == [
        ("engine_off", 0.0, 10.0),
        ("engine_on", 20.0, 25.0),
        ("engine_off", 100.0, 110.0),
    ]
    assert all(e.data["source"] == "voltage" for _, e in events)
    assert events[2][1].data["running_s"] == 80.0


def test_voltage_every_5_s_as_the_schedule_polls_it() -> None:
    det = EngineStateDetector()
    readings = volts(0, 30, 12.4, 5.0) + volts(30, 60, 13.9, 5.0)
    assert brief(feed(det, readings)) == [("engine_off", 0.0, 10.0), ("engine_on", 30.0, 35.0)]


def test_voltage_bouncing_around_13_volts_does_not_flap() -> None:
    det = EngineStateDetector()
    # +-0.35 V around 13.0 with a 4 s period: each side of the band for < 2 s at a time.
    bounce: list[Reading] = [
        (30 + i * 0.5, "volts", 13.0 + 0.35 * math.sin(i * math.pi / 4)) for i in range(1200)
    ]
    events = feed(det, volts(0, 30, 14.0) + bounce)
    assert brief(events) == [("engine_on", 0.0, 5.0)]
    det2 = EngineStateDetector()
    events2 = feed(det2, volts(0, 30, 12.5) + bounce)
    assert brief(events2) == [("engine_off", 0.0, 10.0)]


@given(st.lists(st.floats(12.91, 13.19), min_size=1, max_size=200), st.booleans())
def test_readings_inside_the_band_never_change_the_state(band: list[float], on: bool) -> None:
    det = EngineStateDetector()
    start = volts(0, 15, 14.0 if on else 12.4)
    feed(det, start)
    before = det.state
    assert feed(det, [(15 + i, "volts", v) for i, v in enumerate(band)]) == []
    assert det.state is before


# --------------------------------------------------------------------------- RPM vs voltage


def test_rpm_wins_over_voltage() -> None:
    # Smart alternator (or a weak battery): running at 12.5 V.
    det = EngineStateDetector()
    readings = merged(rpm(0, 120, 750.0), volts(0, 120, 12.5, 5.0))
    assert brief(feed(det, readings)) == [("engine_on", 0.0, 2.0)]
    # A charger on the battery: 14.2 V with the engine off.
    det2 = EngineStateDetector()
    readings2 = merged(rpm(0, 120, 0.0), volts(0, 120, 14.2, 5.0))
    assert brief(feed(det2, readings2)) == [("engine_off", 0.0, 3.0)]


def test_voltage_takes_over_when_rpm_stops_answering() -> None:
    det = EngineStateDetector()
    # RPM reads start failing at 30 s (None); voltage shows the engine stopping at 40 s.
    readings = merged(
        rpm(0, 30, 800.0), rpm(30, 80, None), volts(0, 40, 14.0, 5.0), volts(40, 80, 12.5, 5.0)
    )
    events = feed(det, readings)
    assert brief(events) == [("engine_on", 0.0, 2.0), ("engine_off", 40.0, 50.0)]
    assert events[1][1].data["source"] == "voltage"


# --------------------------------------------------------------------------- staleness


def test_no_data_for_stale_s_is_unknown_then_recovers() -> None:
    det = EngineStateDetector()
    ticks = [(float(t), "tick", None) for t in range(20, 60)]
    readings = rpm(0, 20, 800.0) + ticks + rpm(60, 65, 800.0)
    events = feed(det, readings)
    assert brief(events) == [
        ("engine_on", 0.0, 2.0),
        ("engine_unknown", 19.5, 50.0),  # dated at the last evidence
        ("engine_on", 60.0, 62.0),
    ]
    assert events[1][1].data == {"previous": "running", "stale_s": 30.0, "running_s": 19.5}
    assert events[2][1].data["previous"] == "unknown"


def test_failed_reads_are_not_evidence() -> None:
    det = EngineStateDetector()
    events = feed(det, rpm(0, 10, 800.0) + rpm(10, 60, None))
    assert brief(events) == [("engine_on", 0.0, 2.0), ("engine_unknown", 9.5, 39.5)]


def test_nothing_ever_fed_stays_unknown() -> None:
    det = EngineStateDetector()
    assert feed(det, [(float(t), "tick", None) for t in range(100)]) == []
    assert det.state is EngineState.UNKNOWN


# --------------------------------------------------------------------------- samples


def test_samples_carry_back_dated_transitions_and_come_periodically() -> None:
    det = EngineStateDetector(sample_every_s=1.0)
    samples: list[EngineSample] = []
    det.feed_fuel_rate(at(0), 0.0, 0.9)
    for t, kind, value in rpm(0, 5, 0.0) + rpm(5, 10, 820.0):
        samples += step(det, t, kind, value).samples
    transitions = [(s.state, (s.time - T0).total_seconds(), s.mono) for s in samples]
    assert (EngineState.RUNNING, 5.0, 5.0) in transitions
    assert (EngineState.OFF, 0.0, 0.0) in transitions
    periodic = [s for s in samples if s.time != at(5) and s.time != at(0)]
    gaps = [b.mono - a.mono for a, b in pairwise(periodic)]
    assert gaps and all(g >= 1.0 for g in gaps) and max(gaps) <= 2.0
    last = samples[-1]
    assert last.state is EngineState.RUNNING and last.rpm == 820.0 and last.fuel_rate_lph == 0.9


def test_out_of_order_readings_are_ignored() -> None:
    det = EngineStateDetector()
    feed(det, rpm(0, 5, 800.0))
    assert det.feed_rpm(at(1), 1.0, 0.0) == EngineUpdate([], [])


def test_thresholds_must_leave_a_band() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        EngineStateDetector(volts_on=12.8, volts_off=12.9)


kinds = st.sampled_from(["rpm", "volts", "silence", "tick"])
values = {
    "rpm": st.none() | st.sampled_from([0.0, 150.0, 800.0, 2500.0]),
    "volts": st.sampled_from([12.3, 12.9, 13.0, 13.2, 14.1]),
    "silence": st.none(),
    "tick": st.none(),
}


@st.composite
def readings(draw: st.DrawFn) -> list[Reading]:
    out: list[Reading] = []
    t = 0.0
    for _ in range(draw(st.integers(0, 150))):
        t += draw(st.sampled_from([0.0, 0.5, 1.0, 5.0, 40.0]))
        kind = draw(kinds)
        out.append((t, kind, draw(values[kind])))
    return out


@settings(max_examples=300)
@given(readings())
def test_transitions_are_ordered_and_alternate(rs: list[Reading]) -> None:
    det = EngineStateDetector()
    state, last_ts = EngineState.UNKNOWN, None
    for t, kind, value in rs:
        upd = step(det, t, kind, value)
        for e in upd.events:
            new = {"engine_on": "running", "engine_off": "off", "engine_unknown": "unknown"}[e.type]
            assert e.data["previous"] == state != new
            assert e.ts <= at(t)
            assert last_ts is None or e.ts >= last_ts
            state, last_ts = EngineState(new), e.ts
        assert all(s.time <= at(t) for s in upd.samples)
    assert det.state is state


# --------------------------------------------------------------------------- with the idle detector


def parked(seconds: int) -> list[Fix]:
    return [
        Fix(time=at(i), mono=float(i), mode=FixMode.FIX_3D, lat=52.0, lon=5.0, speed=0.3, hdop=1.0)
        for i in range(seconds)
    ]


def idle_run(engine_readings: list[Reading], seconds: int) -> list[EventData]:
    """Parked for ``seconds`` with 1 Hz fixes; engine samples forwarded as the runtime will."""
    det, idle = EngineStateDetector(), IdleDetector(threshold_s=60.0)
    items: list[tuple[float, int, Reading | Fix]] = [(r[0], 0, r) for r in engine_readings]
    items += [(float(i), 1, f) for i, f in enumerate(parked(seconds))]
    events: list[EventData] = []
    for _, _, item in sorted(items, key=lambda x: (x[0], x[1])):
        if isinstance(item, Fix):
            events += idle.feed_fix(item)
        else:
            for s in step(det, *item).samples:
                events += idle.feed_engine(s)
    return events


def test_idle_starts_within_a_poll_of_the_engine_start() -> None:
    # Parked from 0 s, engine started at 100.3 s (first RPM poll showing it: 100.5 s).
    readings = rpm(0, 100.5, 0.0) + rpm(100.5, 400, 800.0)
    events = idle_run(readings, 400)
    starts = [e for e in events if e.type == "idle_start"]
    assert len(starts) == 1
    assert abs((starts[0].ts - at(100.3)).total_seconds()) <= 0.5


def test_idle_ends_within_2_s_of_the_engine_stop() -> None:
    readings = rpm(0, 300.2, 800.0) + rpm(300.5, 400, 0.0)  # stopped at ~300.2 s
    events = idle_run(readings, 400)
    ends = [e for e in events if e.type == "idle_end"]
    assert len(ends) == 1
    assert abs((ends[0].ts - at(300.2)).total_seconds()) <= 2.0
