"""HarshDetector on synthetic vehicle-frame profiles with known answers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from agent.imu.harsh import (
    PRESETS,
    ClassThresholds,
    HarshConfig,
    HarshDetection,
    HarshDetector,
    harsh_event,
    preset,
)
from agent.imu.sample import VehicleAccel

RATE = 100.0
KMH = 1 / 3.6


def drive(
    det: HarshDetector,
    seconds: float,
    lon: Callable[[float], float] = lambda t: 0.0,
    lat: Callable[[float], float] = lambda t: 0.0,
    speed_kmh: Callable[[float], float] | None = None,
    rate: float = RATE,
) -> list[HarshDetection]:
    """Feed ``seconds`` of samples (and 1 Hz speed when given); return the detections."""
    out: list[HarshDetection] = []
    n = round(seconds * rate)
    for i in range(n + 1):
        t = i / rate
        if speed_kmh is not None and i % round(rate) == 0:
            det.feed_speed(t, speed_kmh(t) * KMH, "gnss")
        out.extend(det.feed(VehicleAccel(t, lon(t), lat(t), 0.0)))
    out.extend(det.flush())
    return out


def pulse(t0: float, length: float, value: float) -> Callable[[float], float]:
    return lambda t: value if t0 <= t < t0 + length else 0.0


def test_half_second_brake_at_4_from_50_kmh() -> None:
    det = HarshDetector()

    def speed(t: float) -> float:
        if t < 2.0:
            return 50.0
        return 50.0 - min(t - 2.0, 0.5) * 4.0 / KMH  # 4 m/s² for 0.5 s

    # speed fed at 10 Hz so start and end speeds are exact
    out: list[HarshDetection] = []
    for i in range(501):
        t = i / RATE
        if i % 10 == 0:
            det.feed_speed(t, speed(t) * KMH)
        out += det.feed(VehicleAccel(t, -4.0 if 2.0 <= t < 2.5 else 0.0, 0.0, 0.0))
    out += det.flush()
    assert len(out) == 1
    d = out[0]
    assert d.kind == "harsh_braking" and d.direction is None
    assert d.peak == pytest.approx(4.0, abs=0.01)
    assert d.t_start == pytest.approx(2.0, abs=0.03)
    assert d.duration_s == pytest.approx(0.5, abs=0.05)
    assert 3.0 < d.mean <= 4.0
    assert d.speed_start_kmh == pytest.approx(50.0, abs=0.5)
    assert d.speed_end_kmh == pytest.approx(50.0 - 7.2, abs=0.5)
    assert d.source == "imu" and d.confidence == "high"


def test_a_bump_of_80_ms_at_6_is_filtered_out() -> None:
    out = drive(HarshDetector(), 3.0, lon=pulse(1.0, 0.08, -6.0), speed_kmh=lambda t: 50.0)
    assert out == []
    out = drive(HarshDetector(), 3.0, lat=pulse(1.0, 0.08, 6.0), speed_kmh=lambda t: 50.0)
    assert out == []


def test_left_and_right_turns_get_their_direction() -> None:
    lat = lambda t: (4.0 if 1.0 <= t < 3.0 else 0.0) + (-4.5 if 5.0 <= t < 7.0 else 0.0)  # noqa: E731
    out = drive(HarshDetector(), 8.0, lat=lat, speed_kmh=lambda t: 45.0)
    assert [(d.kind, d.direction) for d in out] == [
        ("harsh_cornering", "left"),
        ("harsh_cornering", "right"),
    ]
    assert out[0].peak == pytest.approx(4.0, abs=0.01)
    assert out[1].peak == pytest.approx(4.5, abs=0.01)
    # the end threshold (2.55) is above half the peak: ~0.1 s shorter than the pulse
    assert out[0].duration_s == pytest.approx(2.0, abs=0.1)


def test_acceleration_from_a_standstill_counts_once_past_min_speed() -> None:
    # 3 m/s² for 3 s from 0: the speed passes 10 km/h after ~0.9 s
    out = drive(
        HarshDetector(),
        6.0,
        lon=pulse(1.0, 3.0, 3.0),
        speed_kmh=lambda t: max(0.0, min(t - 1.0, 3.0)) * 3.0 / KMH,
    )
    assert [d.kind for d in out] == ["harsh_acceleration"]
    assert out[0].speed_start_kmh == pytest.approx(0.0, abs=1.0)
    assert out[0].speed_end_kmh is not None and out[0].speed_end_kmh > 30


def test_below_minimum_speed_nothing() -> None:
    # manoeuvring in a yard at 8 km/h: longitudinal needs 10, cornering 30
    out = drive(HarshDetector(), 5.0, lon=pulse(1.0, 1.0, -4.0), speed_kmh=lambda t: 8.0)
    assert out == []
    out = drive(HarshDetector(), 5.0, lat=pulse(1.0, 1.5, 4.0), speed_kmh=lambda t: 25.0)
    assert out == []
    out = drive(HarshDetector(), 5.0, lat=pulse(1.0, 1.5, 4.0), speed_kmh=lambda t: 35.0)
    assert len(out) == 1


def test_hovering_at_the_threshold_gives_one_event() -> None:
    # braking that wobbles between 2.3 and 3.1 m/s² around the 2.7 threshold for 4 s
    def lon(t: float) -> float:
        if not 1.0 <= t < 5.0:
            return 0.0
        return -(2.7 + 0.4 * (1 if int(t * 5) % 2 else -1))

    out = drive(HarshDetector(), 7.0, lon=lon, speed_kmh=lambda t: 60.0)
    assert len(out) == 1
    assert out[0].duration_s == pytest.approx(4.0, abs=0.2)
    # without hysteresis the same signal is a burst of events
    no_hyst = HarshConfig(braking=ClassThresholds(2.7, 2.7, 0.1, 10.0))
    assert len(drive(HarshDetector(no_hyst), 7.0, lon=lon, speed_kmh=lambda t: 60.0)) > 3


def test_too_short_above_threshold_is_ignored() -> None:
    cfg = HarshConfig(braking=ClassThresholds(2.7, 2.0, 0.5, 10.0))
    # 0.45 s at 4 m/s² spends ~0.3 s above 2.7 after smoothing: under 0.5 s
    out = drive(HarshDetector(cfg), 4.0, lon=pulse(1.0, 0.45, -4.0), speed_kmh=lambda t: 50.0)
    assert out == []
    # 0.62 s at 4 m/s²: ~0.52 s above 2.7 (crossings interpolated between samples)
    out = drive(HarshDetector(cfg), 4.0, lon=pulse(1.0, 0.62, -4.0), speed_kmh=lambda t: 50.0)
    assert len(out) == 1


def test_unknown_speed_is_reported_not_dropped() -> None:
    out = drive(HarshDetector(), 4.0, lon=pulse(1.0, 1.0, -4.0))
    assert len(out) == 1
    d = out[0]
    assert d.speed_start_kmh is None and d.speed_end_kmh is None
    assert d.confidence == "medium"


def test_stale_speed_counts_as_unknown() -> None:
    det = HarshDetector()
    det.feed_speed(0.0, 3.0)  # last speed 10 s before the brake, then GNSS lost
    out = drive(det, 14.0, lon=pulse(10.0, 1.0, -4.0))
    assert len(out) == 1 and out[0].confidence == "medium" and out[0].speed_start_kmh is None


def test_a_gap_ends_an_event_at_its_last_sample() -> None:
    det = HarshDetector()
    out: list[HarshDetection] = []
    for i in range(200):
        out += det.feed(VehicleAccel(i / RATE, -4.0 if i >= 100 else 0.0, 0.0, 0.0))
    out += det.feed(VehicleAccel(10.0, 0.0, 0.0, 0.0))  # 8 s later
    assert len(out) == 1 and out[0].kind == "harsh_braking"
    assert out[0].t_end == pytest.approx(1.99 - 0.15, abs=0.02)


def test_duplicate_and_out_of_order_samples_are_ignored() -> None:
    det = HarshDetector()
    det.feed(VehicleAccel(1.0, 0.0, 0.0, 0.0))
    assert det.feed(VehicleAccel(1.0, -9.0, 0.0, 0.0)) == []
    assert det.feed(VehicleAccel(0.5, -9.0, 0.0, 0.0)) == []
    assert det.samples == 1


def test_presets_order_car_van_truck() -> None:
    car, van, truck = preset("car"), preset("van"), preset("truck")
    assert van == HarshConfig()
    for name in ("acceleration", "braking", "cornering"):
        c, v, t = (getattr(p, name) for p in (car, van, truck))
        assert c.threshold > v.threshold > t.threshold
        assert t.end_threshold < t.threshold
    assert (van.acceleration.threshold, van.braking.threshold, van.cornering.threshold) == (
        2.5,
        2.7,
        3.4,
    )
    assert van.cornering.min_speed_kmh == 30 and van.braking.min_speed_kmh == 10
    assert set(PRESETS) == {"car", "van", "truck"}
    with pytest.raises(ValueError, match="unknown harsh preset"):
        preset("bus")
    # a 3.0 m/s² brake: harsh for a truck and a van, not for a car
    prof = pulse(1.0, 1.0, -3.0)
    counts = [
        len(drive(HarshDetector.from_preset(p), 4.0, lon=prof, speed_kmh=lambda t: 50.0))
        for p in ("car", "van", "truck")
    ]
    assert counts == [0, 1, 1]


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        ClassThresholds(2.0, 2.5)
    with pytest.raises(ValueError):
        HarshConfig(max_gap_s=0)


def test_event_data_for_the_runtime() -> None:
    det = HarshDetection(
        "harsh_cornering", "left", 10.0, 12.5, 4.2, 3.6, 41.0, 38.04, "imu", "high"
    )
    ts = datetime(2026, 5, 1, 8, 30, 0, tzinfo=UTC)
    ev = harsh_event(det, ts, 52.1, 4.3, heading_deg=370.0)
    assert ev.type == "harsh_cornering"
    assert (ev.lat, ev.lon) == (52.1, 4.3)
    assert ev.data == {
        "start": "2026-05-01T08:30:00Z",
        "duration_s": 2.5,
        "peak_mps2": 4.2,
        "peak_g": 0.428,
        "mean_mps2": 3.6,
        "speed_start_kmh": 41.0,
        "speed_end_kmh": 38.0,
        "heading_deg": 10.0,
        "source": "imu",
        "confidence": "high",
        "direction": "left",
    }
    nopos = harsh_event(
        HarshDetection("harsh_braking", None, 0, 1, 3, 3, None, None, "imu", "medium"), ts
    )
    assert nopos.lat is None and "direction" not in nopos.data
    assert nopos.data["speed_start_kmh"] is None
