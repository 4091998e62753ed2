"""Mounting calibration on simulated drives: any fitting is found, a moved one noticed."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from functools import cache

import numpy as np
import pytest

from agent.imu.calibration import CalibrationConfig, CalibrationEvent, MountingCalibrator
from agent.imu.sample import ImuSample
from simulators.ecu import engine_schedule
from simulators.imu_out import (
    euler_rotation,
    iter_imu,
    random_rotation,
    rotation_angle_deg,
    true_motion,
    truth_harsh,
)
from simulators.route import Drive, build_drive, state_at
from simulators.scenario import Scenario, load_scenario

RATE = 50


@cache
def urban() -> Scenario:
    return load_scenario("urban_delivery")


@cache
def drive(loop: bool = False) -> Drive:
    return build_drive(urban(), loop=loop)


@cache
def samples(rotation: tuple[float, ...], seed: int = 5, loop: bool = False) -> list[ImuSample]:
    """The bundled drive's IMU in a mounting (rotation flattened, for the cache)."""
    r = np.array(rotation).reshape(3, 3)
    duration = 2 * drive().duration if loop else None
    rate = 25 if loop else RATE
    return list(
        iter_imu(urban(), rotation=r, seed=seed, loop=loop, duration_s=duration, rate_hz=rate)
    )


def key(r: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in r.reshape(-1))


def feed(
    cal: MountingCalibrator,
    stream: Iterable[ImuSample],
    *,
    loop: bool = False,
    source: str = "gnss",
    course: bool = True,
    engine: bool = True,
    latency_s: float = 0.4,
) -> Iterator[tuple[ImuSample, list[CalibrationEvent]]]:
    """Feed a drive as the runtime would: IMU samples, speed reports arriving late, engine.

    GNSS: 1 Hz, exact speed and course; OBD: 2 Hz, speed in whole km/h, no course.
    Yields each sample with the events it caused.
    """
    d = drive(loop)
    step = 1.0 if source == "gnss" else 0.5
    next_report = 0.0
    runs = engine_schedule(urban(), d) if engine else []
    switches = sorted([(lo, True) for lo, _ in runs] + [(hi, False) for _, hi in runs])
    for sample in stream:
        while next_report <= sample.t - latency_s:
            st = state_at(d, next_report)
            if source == "gnss":
                cal.feed_motion(
                    next_report, st.speed_mps, "gnss", course_deg=st.course_deg if course else None
                )
            else:
                cal.feed_motion(next_report, round(st.speed_mps * 3.6) / 3.6, "obd")
            next_report += step
        while switches and switches[0][0] <= sample.t:
            cal.feed_engine(*switches.pop(0))
        cal.feed(sample)
        yield sample, cal.drain_events()


def run(
    cal: MountingCalibrator, stream: Iterable[ImuSample], **kw: object
) -> list[CalibrationEvent]:
    events: list[CalibrationEvent] = []
    for _sample, new in feed(cal, stream, **kw):  # type: ignore[arg-type]
        events.extend(new)
    return events


MOUNTS = {
    "scenario": euler_rotation(15, -65, 150),
    "upside_down": euler_rotation(180, 0, 0),
    "yaw_90": euler_rotation(0, 0, 90),
    "on_its_side_backwards": euler_rotation(90, 0, 180),
    "random_1": random_rotation(1),
    "random_2": random_rotation(2),
}


@pytest.mark.parametrize("name", list(MOUNTS))
def test_any_mounting_is_recovered(name: str) -> None:
    truth = MOUNTS[name]
    stream = samples(key(truth))
    cal = MountingCalibrator()
    assert cal.state == "uncalibrated" and cal.to_vehicle(stream[0]) is None
    outputs = []
    calibrated_at = None
    for sample, events in feed(cal, stream):
        if any(e.kind == "calibrated" for e in events):
            calibrated_at = sample.t
        out = cal.to_vehicle(sample)
        if out is not None:
            outputs.append(out)
    assert cal.state == "calibrated" and calibrated_at is not None
    # The depot, drop 1 and the first corners: calibrated before the first harsh episode.
    assert calibrated_at < truth_harsh(urban())[0].t_start
    rotation = cal.rotation
    assert rotation is not None
    error = rotation_angle_deg(rotation, truth)
    assert error < 3.0, error
    status = cal.status()
    assert status["harsh_source"] == "imu" and status["angle_uncertainty_deg"] < 3.0
    assert status["moved_count"] == 0 and status["verified"] is True

    t = np.array([o.t for o in outputs])
    lon = np.array([o.lon for o in outputs])
    lat = np.array([o.lat for o in outputs])
    vert = np.array([o.vert for o in outputs])
    yaw = np.array([o.yaw_rate for o in outputs], dtype=float)
    true = true_motion(urban(), t)
    for got, want in ((lon, true[:, 0]), (lat, true[:, 1])):
        assert np.corrcoef(got, want)[0, 1] > 0.97
        assert np.sqrt(np.mean((got - want) ** 2)) < 0.15  # noise and vibration: ~0.05
    assert abs(vert.mean()) < 0.05  # gravity removed
    assert np.corrcoef(yaw, true[:, 3])[0, 1] > 0.97
    # the scripted swerves come out on the right side
    left = (t > 990.4) & (t < 991.2)
    right = (t > 1520.4) & (t < 1521.4)
    assert lat[left].mean() > 3.4
    assert lat[right].mean() < -3.4


def test_without_gyro_or_course_obd_speed_only() -> None:
    truth = random_rotation(3)
    stream = [ImuSample(s.t, s.ax, s.ay, s.az) for s in samples(key(truth))]
    cal = MountingCalibrator()
    run(cal, stream, source="obd")
    assert cal.state == "calibrated"
    assert cal.rotation is not None and rotation_angle_deg(cal.rotation, truth) < 3.0
    out = cal.to_vehicle(stream[1000])
    assert out is not None and out.yaw_rate is None


def test_gnss_course_stands_in_for_the_gyro() -> None:
    truth = MOUNTS["yaw_90"]
    stream = [ImuSample(s.t, s.ax, s.ay, s.az) for s in samples(key(truth))]
    cal = MountingCalibrator()
    run(cal, stream, course=True)
    assert cal.rotation is not None and rotation_angle_deg(cal.rotation, truth) < 3.0


def test_little_evidence_claims_no_calibration() -> None:
    stream = samples(key(MOUNTS["scenario"]))
    # Only the depot and a few hundred metres: gravity, but not enough accelerations.
    cal = MountingCalibrator()
    events = run(cal, (s for s in stream if s.t < 150))
    assert [e.kind for e in events] == ["gravity"]
    assert cal.state == "gravity_only"
    assert cal.to_vehicle(stream[-1]) is None
    status = cal.status()
    assert status["harsh_source"] == "gnss_obd_fallback"
    assert "GNSS/OBD" in status["detail"]
    # No speed at all: a stop cannot be told from a smooth cruise.
    blind = MountingCalibrator()
    for s in stream:
        blind.feed(s)
    assert blind.state == "uncalibrated" and "no GNSS/OBD speed" in blind.status()["detail"]
    # The engine known off the whole time: stops are not used (parked on a kerb, loading).
    off = MountingCalibrator()
    off.feed_engine(0.0, False)
    run(off, stream, engine=False)
    assert off.state == "uncalibrated"


def test_a_wrong_clock_is_not_calibrated_on() -> None:
    # Speed reports 20 s off the IMU's clock: dv/dt does not match the IMU.
    stream = samples(key(MOUNTS["scenario"]))
    cal = MountingCalibrator()
    d = drive()
    t = 0.0
    for s in stream:
        while t <= s.t - 0.4:
            cal.feed_motion(t, state_at(d, max(0.0, t - 20.0)).speed_mps)
            t += 1.0
        cal.feed(s)
    assert cal.state != "calibrated"


def moved_stream(first: np.ndarray, second: np.ndarray, at_s: float) -> list[ImuSample]:
    a = samples(key(first), loop=True)
    b = samples(key(second), seed=6, loop=True)
    return [x for x in a if x.t < at_s] + [x for x in b if x.t >= at_s]


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (euler_rotation(40, -30, 100), "gravity"),  # knocked over in its holder
        (euler_rotation(0, 0, 35) @ euler_rotation(15, -65, 150), "forward"),  # turned about up
    ],
)
def test_a_moved_mounting_is_noticed_and_recalibrated(second: np.ndarray, why: str) -> None:
    first = MOUNTS["scenario"]
    move_at = 850.0  # during the stop at drop 3 (engine off)
    cal = MountingCalibrator()
    events = run(cal, moved_stream(first, second, move_at), loop=True)
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["gravity", "calibrated"]
    moved = [e for e in events if e.kind == "moved"]
    assert len(moved) == 1, events
    assert why in moved[0].detail
    assert move_at < moved[0].t < move_at + 1200
    assert kinds[kinds.index("moved") + 1 :].count("calibrated") == 1
    assert events[-1].kind == "calibrated" and events[-1].t < 3000
    assert cal.rotation is not None and rotation_angle_deg(cal.rotation, second) < 3.0
    assert cal.status()["moved_count"] == 1


def test_snapshot_restore_round_trip_and_verification() -> None:
    truth = MOUNTS["random_2"]
    stream = samples(key(truth))
    cal = MountingCalibrator()
    run(cal, stream)
    snap = json.loads(json.dumps(cal.snapshot()))
    assert snap["state"] == "calibrated" and snap["version"] == 1

    again = MountingCalibrator()
    again.restore(snap)
    assert again.state == "calibrated"  # used at once after a restart
    assert again.status()["verified"] is False and again.status()["restored"] is True
    assert again.to_vehicle(stream[5000]) == cal.to_vehicle(stream[5000])
    assert [e.kind for e in again.drain_events()] == ["restored"]
    events = run(again, stream)
    assert [e.kind for e in events] == ["verified"]  # at the first stop, nothing else
    assert events[0].t < 25
    assert again.status()["verified"] is True

    # A persisted calibration that no longer fits: replaced after two stops.
    wrong = MountingCalibrator()
    wrong.restore(snap | {"rotation": MOUNTS["upside_down"].tolist()})
    wrong.drain_events()
    events = run(wrong, stream)
    assert [e.kind for e in events][:3] == ["moved", "gravity", "calibrated"]
    assert wrong.rotation is not None and rotation_angle_deg(wrong.rotation, truth) < 3.0

    empty = MountingCalibrator()
    empty.restore(MountingCalibrator().snapshot())
    assert empty.state == "uncalibrated"


@pytest.mark.parametrize(
    "change",
    [
        {"version": 99},
        {"rotation": [[1, 0, 0], [0, 1, 0]]},
        {"rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]},
        {"rotation": [[1, 0, 0], [0, 1, 0], [0, 0, -1]]},
        {"gravity_mps2": 3.0},
        {"gyro_bias": [0.0, "x"]},
    ],
)
def test_restore_refuses_what_is_not_a_calibration(change: dict[str, object]) -> None:
    snap = {
        "version": 1,
        "state": "calibrated",
        "rotation": np.eye(3).tolist(),
        "gravity_mps2": 9.8,
        "gyro_bias": None,
    }
    with pytest.raises(ValueError):
        MountingCalibrator().restore(snap | change)


def test_status_is_json_and_says_what_is_missing() -> None:
    stream = samples(key(MOUNTS["yaw_90"]))
    cal = MountingCalibrator()
    seen = set()
    for sample, _events in feed(cal, stream):
        if sample.t % 10 < 0.01:
            status = cal.status()
            json.dumps(status)
            seen.add((status["state"], status["detail"]))
        if cal.state == "calibrated":
            break
    assert {s for s, _ in seen} == {"uncalibrated", "gravity_only"}
    assert any("waiting for another" in d for _, d in seen)
    mount = cal.status()["mount_deg"]
    assert mount["yaw"] == pytest.approx(90, abs=3) and abs(mount["roll"]) < 3
    assert math.isfinite(cal.status()["up_uncertainty_deg"])
    json.dumps(cal.status())
    # Gravity alone is enough to try the forward axis: the status names what is missing.
    eager = MountingCalibrator(CalibrationConfig(gravity_stops=1))
    run(eager, (s for s in stream if s.t < 150))
    detail = eager.status()["detail"]
    assert eager.state == "gravity_only"
    assert "forward axis: 2 accelerations and 1 brakings of 3 each" in detail, detail


def synthetic_stop(
    cal: MountingCalibrator, t0: float, seconds: float, gravity: np.ndarray
) -> float:
    """A still stop, speed 0 reported at 1 Hz, then 5 s of driving off; returns the end."""
    rng = np.random.default_rng(int(t0))
    n = int(seconds * RATE)
    report = t0
    for i in range(n + 5 * RATE):
        t = t0 + i / RATE
        moving = i >= n
        while report <= t:
            cal.feed_motion(report, 5.0 if report >= t0 + seconds else 0.0)
            report += 1.0
        a = gravity + rng.normal(0, 0.03, 3) + (np.array([0.5, 0, 0]) if moving else 0)
        cal.feed(ImuSample(t, *a.tolist()))
    return t0 + seconds + 5


def test_a_tilted_first_stop_is_re_estimated_not_reported_as_moved() -> None:
    cal = MountingCalibrator()
    level = np.array([0.0, 0.0, 9.81])
    tilted = euler_rotation(10, 0, 0).T @ level  # parked on a kerb: 10° of roll
    t = synthetic_stop(cal, 0.0, 20, tilted)
    assert cal.state == "gravity_only"
    for _ in range(2):
        t = synthetic_stop(cal, t, 20, level)
    events = cal.drain_events()
    assert [e.kind for e in events] == ["gravity", "gravity", "gravity"]
    assert "re-estimated" in events[1].detail
    up = cal.up
    assert up is not None and up == pytest.approx([0, 0, 1], abs=0.01)
    assert cal.status()["moved_count"] == 0


def test_memory_stays_bounded_when_no_imu_sample_ever_comes() -> None:
    """A van without an IMU still feeds speeds: 8 hours of them must not pile up."""
    cal = MountingCalibrator()
    for i in range(8 * 3600):
        cal.feed_motion(float(i), 10.0 + (i % 7), course_deg=float(i % 360))
    assert len(cal._pending_iv) < 200
    assert len(cal._mt) < 1000
