"""Health checks over IMU sample streams: each check with real numbers, and its wording."""

from __future__ import annotations

import math
import random

import pytest

from agent.imu.health import (
    HealthConfig,
    HealthMonitor,
    Problem,
    accel_range_si,
    gyro_range_si,
)
from agent.imu.sample import GRAVITY, ImuSample


def stream(
    rate: float,
    seconds: float,
    *,
    t0: float = 100.0,
    jitter: float = 0.0,
    accel: tuple[float, float, float] | None = None,
    gyro: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    seed: int = 1,
) -> list[ImuSample]:
    """A van at rest with sensor noise (or fixed values), at ``rate`` Hz."""
    rng = random.Random(seed)
    out = []
    for i in range(round(rate * seconds)):
        t = t0 + i / rate + rng.uniform(-jitter, jitter)
        a = accel or (rng.gauss(0, 0.02), rng.gauss(0, 0.02), GRAVITY + rng.gauss(0, 0.02))
        if gyro is None:
            out.append(ImuSample(t, *a))
        else:
            g = (gyro[0] + rng.gauss(0, 0.001), gyro[1], gyro[2] + rng.gauss(0, 0.001))
            out.append(ImuSample(t, *a, *g))
    return out


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


def test_healthy_stream_has_no_problems() -> None:
    h = HealthMonitor(
        HealthConfig(
            expected_rate_hz=200, accel_range=accel_range_si(8), gyro_range=gyro_range_si(500)
        )
    )
    h.update(stream(200, 10, jitter=0.002))
    assert h.problems() == []
    st = h.status()
    assert st["rate_hz"] == pytest.approx(200, abs=1)
    assert st["samples"] == 2000 and st["gaps"] == 0
    assert st["accel_peak_g"] == pytest.approx(1.0, abs=0.02)


def test_wrong_rate() -> None:
    h = HealthMonitor(HealthConfig(expected_rate_hz=200))
    h.update(stream(100, 6))
    assert h.status()["rate_hz"] == 100.0
    (p,) = h.problems()
    assert p.code == "rate"
    assert p.message == "rate 100 Hz, expected 200 Hz"
    assert "rate setting" in p.advice


@pytest.mark.parametrize(
    ("rate", "flagged"), [(170, False), (235, False), (150, True), (250, True)]
)
def test_rate_tolerance_is_20_percent(rate: float, flagged: bool) -> None:
    h = HealthMonitor(HealthConfig(expected_rate_hz=200))
    h.update(stream(rate, 6, jitter=0.0005))
    assert ("rate" in codes(h.problems())) is flagged
    if flagged:
        assert h.problems()[0].message == f"rate {rate} Hz, expected 200 Hz"


def test_phone_rate_without_expectation_is_reported_not_judged() -> None:
    h = HealthMonitor(HealthConfig())  # a phone: it decides its own rate
    h.update(stream(16.4, 20, jitter=0.004))
    assert h.status()["rate_hz"] == pytest.approx(16.4, abs=0.2)
    assert h.problems() == []


def test_accel_saturation() -> None:
    cfg = HealthConfig(expected_rate_hz=100, accel_range=accel_range_si(4))
    h = HealthMonitor(cfg)
    s = stream(100, 2)
    full = 4 * GRAVITY
    # a pothole: three samples at the limit (a chip saturates at 32767 counts = 3.9999 g)
    for i in (100, 101, 102):
        s[i] = ImuSample(s[i].t, 0.1, 0.2, full * 32767 / 32768, 0, 0, 0)
    s[150] = ImuSample(s[150].t, 0.1, 0.2, full * 0.97, 0, 0, 0)  # high but measured
    h.update(s)
    (p,) = h.problems()
    assert p.code == "saturated_accel"
    assert p.message == "acceleration clipped at ±4 g in 3 samples in the last 60 s"
    assert "±8 g or ±16 g" in p.advice
    assert h.status()["accel_saturated"] == 3
    assert h.status()["accel_peak_g"] == 4.0
    # a minute later the problem is over; the count stays in status
    h.update(stream(100, 61, t0=s[-1].t + 0.01))
    assert h.problems() == []
    assert h.status()["accel_saturated"] == 3


def test_gyro_saturation() -> None:
    h = HealthMonitor(HealthConfig(gyro_range=gyro_range_si(250)))
    s = stream(100, 1)
    s[50] = ImuSample(s[50].t, 0, 0, GRAVITY, 0, 0, math.radians(249.9))  # a spin in a crash
    h.update(s)
    (p,) = h.problems()
    assert p.code == "saturated_gyro"
    assert p.message == "rotation rate clipped at ±250 °/s in 1 samples in the last 60 s"


def test_stuck_accelerometer() -> None:
    h = HealthMonitor(HealthConfig(expected_rate_hz=100))
    h.update(stream(100, 1))
    frozen = stream(100, 1.5, t0=101.0, accel=(0.012, -0.034, 9.791))  # 150 identical readings
    h.update(frozen)
    (p,) = h.problems()
    assert p.code == "stuck_accel"
    assert p.message == "accelerometer repeated the same reading 150 times"
    assert "wiring" in p.advice
    h.update(stream(100, 0.1, t0=102.5))  # noise again: it recovered
    assert h.problems() == []
    assert h.status()["longest_identical_accel"] == 150


def test_stuck_gyro_and_a_short_run_is_fine() -> None:
    h = HealthMonitor(HealthConfig(stuck_samples=100))
    s = stream(100, 2)
    for i in range(60, 159):  # 99 identical gyro readings: not yet stuck
        s[i] = ImuSample(s[i].t, s[i].ax, s[i].ay, s[i].az, 0.0, 0.0, 0.0)
    h.update(s)
    assert h.problems() == []
    frozen = [ImuSample(x.t, x.ax, x.ay, x.az, 0.0, 0.0, 0.0) for x in stream(100, 1.2, t0=102.0)]
    h.update(frozen)  # a powered-down gyro reads exactly zero, 120 times
    (p,) = h.problems()
    assert p.code == "stuck_gyro"
    assert p.message == "gyroscope repeated the same reading 120 times"


def test_gap_is_reported_and_excluded_from_the_rate() -> None:
    h = HealthMonitor(HealthConfig(expected_rate_hz=100))
    before = stream(100, 3)
    after = stream(100, 3, t0=before[-1].t + 0.5)  # 0.5 s without samples
    h.update(before + after)
    (p,) = h.problems()
    assert p.code == "gap"
    assert (
        p.message
        == f"1 gap(s) in the samples in the last 60 s, longest 0.50 s at t={before[-1].t:.2f}"
    )
    st = h.status()
    assert (st["gaps"], st["gap_s"]) == (1, 0.5)
    assert st["rate_hz"] == 100.0  # the hole is a gap, not a slow rate


def test_short_hiccup_is_not_a_gap() -> None:
    h = HealthMonitor(HealthConfig(expected_rate_hz=100))
    s = stream(100, 2)
    del s[100]  # one sample late/missing: 20 ms between two samples
    h.update(s)
    assert h.problems() == []


def test_gap_without_expected_rate_uses_the_measured_one() -> None:
    h = HealthMonitor(HealthConfig())
    first = stream(16, 10)
    h.update(first + stream(16, 5, t0=first[-1].t + 1.0))
    assert codes(h.problems()) == ["gap"]


def test_silence_needs_the_current_time() -> None:
    h = HealthMonitor(HealthConfig(expected_rate_hz=100))
    s = stream(100, 2)
    h.update(s)
    assert h.problems(now=s[-1].t + 0.5) == []
    (p,) = h.problems(now=s[-1].t + 3.0)
    assert p.code == "silent" and p.message == "no samples for 3.0 s"


def test_time_going_backwards_is_counted() -> None:
    h = HealthMonitor(HealthConfig())
    h.update([ImuSample(1.0, 0, 0, GRAVITY), ImuSample(0.9, 0, 0, GRAVITY)])
    assert h.status()["non_monotonic"] == 1


def test_problem_dicts_for_status() -> None:
    p = Problem("rate", "rate 100 Hz, expected 200 Hz", "check the rate")
    assert p.as_dict() == {
        "code": "rate",
        "message": "rate 100 Hz, expected 200 Hz",
        "advice": "check the rate",
    }
