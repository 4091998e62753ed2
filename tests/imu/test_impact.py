"""ImpactDetector: at once, a full-rate trace around it, repeated spikes merged."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from agent.imu.impact import (
    ImpactDetection,
    ImpactDetector,
    ImpactTrace,
    impact_event,
    trace_event,
)
from agent.imu.sample import GRAVITY, ImuSample

RATE = 100.0
# a sensor lying tilted: gravity on y and z, so "1 g" is not on one axis
GX, GY, GZ = 0.0, GRAVITY * math.sin(0.3), GRAVITY * math.cos(0.3)


def sample(i: int, extra: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> ImuSample:
    return ImuSample(i / RATE, GX + extra[0], GY + extra[1], GZ + extra[2], 0.01, 0.0, -0.01)


def test_a_4g_spike_is_reported_at_once_with_a_5_s_trace() -> None:
    det = ImpactDetector()
    out: list[ImpactDetection | ImpactTrace] = []
    for i in range(1000):
        extra = (4.0 * GRAVITY, 0.0, 0.0) if i == 500 else (0.0, 0.0, 0.0)  # 4 g sideways
        got = det.feed(sample(i, extra))
        if i == 500:
            assert len(got) == 1 and isinstance(got[0], ImpactDetection)  # at once
            assert det.collecting
        out += got
    dets = [o for o in out if isinstance(o, ImpactDetection)]
    traces = [o for o in out if isinstance(o, ImpactTrace)]
    assert len(dets) == 1 and len(traces) == 1
    d, tr = dets[0], traces[0]
    assert d.t == pytest.approx(5.0)
    assert d.peak_g == pytest.approx(4.0, abs=0.01)  # |a - g|, not |a| (4.12 g)
    assert d.vector == pytest.approx((4.0 * GRAVITY, 0.0, 0.0), abs=0.01)
    assert tr.seq == d.seq and tr.t0 == d.t and tr.complete
    assert tr.rate_hz == pytest.approx(100.0, rel=0.01)
    assert tr.dt[0] == pytest.approx(-2.0) and tr.dt[-1] == pytest.approx(3.0)
    assert len(tr.dt) == 501  # full rate: 2 s + 3 s at 100 Hz
    assert len(tr.ax) == len(tr.gz or []) == 501
    assert tr.peak_g == pytest.approx(4.0, abs=0.01) and tr.peak_t == 0.0
    # the trace came out when the 3 s were complete, not later
    assert det.collecting is False


def test_a_second_spike_inside_the_window_is_the_same_impact() -> None:
    det = ImpactDetector()
    out: list[ImpactDetection | ImpactTrace] = []
    for i in range(1200):
        extra = (0.0, 0.0, 0.0)
        if i == 300:
            extra = (0.0, 3.0 * GRAVITY, 0.0)
        elif i == 450:  # 1.5 s later: the rebound, harder
            extra = (0.0, 0.0, -5.0 * GRAVITY)
        elif i == 700:  # 4 s after the first: a new impact
            extra = (3.0 * GRAVITY, 0.0, 0.0)
        out += det.feed(sample(i, extra))
    dets = [o for o in out if isinstance(o, ImpactDetection)]
    traces = [o for o in out if isinstance(o, ImpactTrace)]
    assert [d.t for d in dets] == pytest.approx([3.0, 7.0])
    assert [d.seq for d in dets] == [1, 2]
    assert len(traces) == 2
    assert traces[0].peak_g == pytest.approx(5.0, abs=0.01)
    assert traces[0].peak_t == pytest.approx(1.5)
    assert dets[0].peak_g == pytest.approx(3.0, abs=0.01)


def test_quiet_driving_and_a_pothole_are_not_impacts() -> None:
    det = ImpactDetector()
    out: list[ImpactDetection | ImpactTrace] = []
    for i in range(2000):
        extra = (0.3 * math.sin(i / 3.0), 0.2, 0.5 * math.sin(i / 7.0))
        if 1000 <= i < 1003:
            extra = (0.0, 0.0, 1.8 * GRAVITY)  # pothole: 1.8 g for 30 ms
        out += det.feed(sample(i, extra))
    assert out == [] and det.impacts == 0


def test_stream_ending_mid_trace_flushes_an_incomplete_trace() -> None:
    det = ImpactDetector(threshold_g=2.0)
    for i in range(300):
        det.feed(sample(i, (0.0, 0.0, 3.0 * GRAVITY) if i == 250 else (0.0, 0.0, 0.0)))
    (tr,) = det.flush()
    assert isinstance(tr, ImpactTrace) and not tr.complete
    assert tr.dt[-1] == pytest.approx(0.49)
    assert det.flush() == []


def test_events_for_the_runtime() -> None:
    ts = datetime(2026, 5, 1, 8, 0, 0, tzinfo=UTC)
    det = ImpactDetection(3, 12.0, 4.123, (39.1, -2.0, 3.456))
    ev = impact_event(det, ts, 52.0, 4.0, threshold_g=2.5, speed_kmh=31.26)
    assert ev.type == "impact" and ev.lat == 52.0
    assert ev.data["peak_g"] == 4.12 and ev.data["vector_mps2"] == [39.1, -2.0, 3.46]
    assert ev.data["speed_kmh"] == 31.3 and ev.data["impact_seq"] == 3
    tr = ImpactTrace(
        3, 12.0, 100.0, 4.1, 0.0, True, [-0.01, 0.0], [0.0, 1.0], [0.0, 0.0], [9.8, 9.8]
    )
    tev = trace_event(tr, ts)
    assert tev.type == "imu_trace"  # not counted as a second impact by trip summaries
    assert tev.data["dt_s"] == [-0.01, 0.0] and "gx" not in tev.data
    assert tev.data["t0"] == "2026-05-01T08:00:00Z" and tev.data["impact_seq"] == 3


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        ImpactDetector(threshold_g=0)
    with pytest.raises(ValueError):
        ImpactDetector(post_s=0)
