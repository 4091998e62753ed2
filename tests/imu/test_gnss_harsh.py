"""Harsh events from GNSS/OBD speed and GNSS course, without an IMU."""

from __future__ import annotations

import pytest

from agent.imu.gnss_harsh import GnssHarshDetector
from agent.imu.harsh import HarshDetection

KMH = 1 / 3.6


def run(
    det: GnssHarshDetector,
    speeds_kmh: list[float],
    rate: float = 1.0,
    courses: list[float | None] | None = None,
) -> list[HarshDetection]:
    out: list[HarshDetection] = []
    for i, v in enumerate(speeds_kmh):
        course = None if courses is None else courses[i]
        out += det.feed(i / rate, v * KMH, course)
    return out + det.flush()


def test_hard_brake_50_to_10_in_2_s_at_1_hz() -> None:
    speeds = [50.0] * 5 + [30.0, 10.0] + [10.0] * 5
    out = run(GnssHarshDetector(), speeds)
    assert len(out) == 1
    d = out[0]
    assert d.kind == "harsh_braking"
    assert (d.t_start, d.t_end) == (4.0, 6.0)
    assert d.peak == pytest.approx(20 * KMH, abs=0.01)  # 5.56 m/s²
    assert d.speed_start_kmh == pytest.approx(50.0)
    assert d.speed_end_kmh == pytest.approx(10.0)
    assert (d.source, d.confidence) == ("gnss", "low")


def test_gentle_stop_is_nothing() -> None:
    speeds = [50.0] * 3 + [50.0 - 5.0 * i for i in range(1, 11)] + [0.0] * 3  # 1.4 m/s²
    assert run(GnssHarshDetector(), speeds) == []


def test_hard_take_off_at_2_hz_obd() -> None:
    # 0 -> 36 km/h in 3.5 s (2.9 m/s²) in whole km/h, as OBD reports it
    speeds = [0.0] * 4 + [round(min(i * 0.5, 3.5) * 2.9 * 3.6) for i in range(1, 12)]
    out = run(GnssHarshDetector(source="obd"), speeds, rate=2.0)
    assert [d.kind for d in out] == ["harsh_acceleration"]
    assert out[0].source == "obd"
    assert out[0].peak == pytest.approx(2.9, abs=0.3)
    assert out[0].speed_start_kmh == pytest.approx(0.0)


def test_short_stab_is_averaged_away_at_1_hz() -> None:
    # a 0.5 s brake at 5 m/s² loses 9 km/h within one epoch: 2.5 m/s² on the 1 s slope
    speeds = [50.0] * 4 + [41.0] * 4
    assert run(GnssHarshDetector(), speeds) == []


def test_cornering_from_course_and_speed_unwraps_north() -> None:
    # 45 km/h, turning right at 30°/s through north (350 -> 20 -> ...): 12.5·0.52 = 6.5 m/s²
    speeds = [45.0] * 10
    courses: list[float | None] = [(290.0 + 30.0 * max(0, min(i - 2, 4))) % 360 for i in range(10)]
    out = run(GnssHarshDetector(), speeds, courses=courses)
    assert [(d.kind, d.direction) for d in out] == [("harsh_cornering", "right")]
    assert out[0].peak == pytest.approx(12.5 * 0.5236, rel=0.02)
    # the same turn to the left
    left = [(70.0 - 30.0 * max(0, min(i - 2, 4))) % 360 for i in range(10)]
    out = run(GnssHarshDetector(), speeds, courses=list(left))
    assert [(d.kind, d.direction) for d in out] == [("harsh_cornering", "left")]


def test_course_ignored_when_slow_and_cornering_needs_30_kmh() -> None:
    courses: list[float | None] = [0.0, 90.0, 200.0, 10.0, 270.0, 0.0]  # noise of a parked receiver
    assert run(GnssHarshDetector(), [3.0] * 6, courses=courses) == []
    # a real 30°/s turn at 20 km/h: 2.9 m/s², under 3.4 and under 30 km/h anyway
    turn: list[float | None] = [30.0 * i for i in range(6)]
    assert run(GnssHarshDetector(), [20.0] * 6, courses=turn) == []


def test_gap_restarts_and_bad_values_are_ignored() -> None:
    det = GnssHarshDetector()
    assert det.feed(0.0, 50 * KMH) == []
    assert det.feed(10.0, 10 * KMH) == []  # 10 s later: no derivative across the gap
    assert det.feed(11.0, float("nan")) == []
    assert det.feed(11.0, -1.0) == []
    assert det.feed(9.5, 0.0) == []  # out of order
    assert det.flush() == []
    with pytest.raises(ValueError):
        GnssHarshDetector(source="glonass")
