"""The IMU simulator: physics in the vehicle frame, the mounting, noise, events and the CSV."""

from __future__ import annotations

import csv
import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from agent.imu.sample import GRAVITY, ImuSample
from simulators.cli import main
from simulators.imu_out import (
    CSV_HEADER,
    csv_lines,
    euler_rotation,
    iter_imu,
    mount_rotation,
    random_rotation,
    rotation_angle_deg,
    true_motion,
    truth_harsh,
    truth_impacts,
)
from simulators.nmea_out import iter_epochs
from simulators.route import build_drive, state_at
from simulators.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

# North, then west: a left turn at the corner, driven at 30 km/h.
LEFT_TURN = """
start_utc = 2024-05-14T07:30:00Z
[vehicle]
max_lateral_accel_mps2 = 2.5
[route]
corner_cut_m = 20
waypoints = [
  { lat = 52.0, lon = 5.0, speed_kmh = 30, dwell_s = 10 },
  { lat = 52.002, lon = 5.0, speed_kmh = 30 },
  { lat = 52.002, lon = 4.997, dwell_s = 10 },
]
[imu]
rate_hz = 50
accel_noise_mg = 0
gyro_noise_dps = 0
vibration_mg = 0
bump_rate_per_km = 0
"""


def arrays(samples: list[ImuSample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.array([s.t for s in samples])
    accel = np.array([(s.ax, s.ay, s.az) for s in samples])
    gyro = np.array([(s.gx, s.gy, s.gz) for s in samples], dtype=float)
    return t, accel, gyro


@cache
def urban() -> Scenario:
    return load_scenario("urban_delivery")


@cache
def urban_vehicle_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bundled drive with the sensor fitted square (sensor = vehicle axes)."""
    return arrays(list(iter_imu(urban(), rotation=np.eye(3))))


def test_gravity_at_rest_is_one_g_on_up() -> None:
    t, accel, gyro = urban_vehicle_frame()
    parked = (t > 3) & (t < 17)  # the depot, engine idling
    mean = accel[parked].mean(axis=0)
    assert np.linalg.norm(mean) == pytest.approx(GRAVITY, abs=0.01)
    assert mean[:2] == pytest.approx([0.0, 0.0], abs=0.01)
    assert np.abs(gyro[parked]).mean() < math.radians(0.1)
    assert accel[parked].std(axis=0).max() < 0.3  # noise and idle vibration only


def test_rotation_is_applied_exactly() -> None:
    scenario = parse_scenario(LEFT_TURN)
    square = arrays(list(iter_imu(scenario, rotation=np.eye(3))))
    r = euler_rotation(30, -60, 120)
    turned = arrays(list(iter_imu(scenario, rotation=r)))
    # vehicle = R @ sensor, for the accelerometer and the gyro alike
    assert turned[1] @ r.T == pytest.approx(square[1], abs=1e-9)
    assert turned[2] @ r.T == pytest.approx(square[2], abs=1e-9)
    upside_down = arrays(list(iter_imu(scenario, rotation=euler_rotation(180, 0, 0))))
    assert upside_down[1][0, 2] == pytest.approx(-GRAVITY)


def test_scenario_mounting_and_random_mounts() -> None:
    r = mount_rotation(urban())
    assert rotation_angle_deg(r, euler_rotation(15, -65, 150)) < 1e-9
    first = next(iter_imu(urban()))
    assert r @ [first.ax, first.ay, first.az] == pytest.approx([0, 0, GRAVITY], abs=0.5)
    randoms = [random_rotation(seed) for seed in range(20)]
    for m in randoms:
        assert m @ m.T == pytest.approx(np.eye(3), abs=1e-12)
        assert np.linalg.det(m) == pytest.approx(1.0)
    ups = np.array([m[2] for m in randoms])  # where the vehicle's up is in sensor axes
    assert ups.min(axis=0).max() < -0.3 and ups.max(axis=0).min() > 0.3  # all around
    text = LEFT_TURN.replace("bump_rate_per_km = 0", "bump_rate_per_km = 0\nmount_random = true")
    assert rotation_angle_deg(mount_rotation(parse_scenario(text), 4), random_rotation(4)) < 1e-9


def test_lateral_sign_in_a_left_turn() -> None:
    scenario = parse_scenario(LEFT_TURN)
    t, accel, gyro = arrays(list(iter_imu(scenario, rotation=np.eye(3))))
    drive = build_drive(scenario)
    turning = np.array([state_at(drive, x).yaw_rate_dps < 0 for x in t])  # route: - is left
    assert turning.sum() > 50
    assert (accel[turning, 1] > 0.5).all()  # VehicleAccel: + towards the left
    assert (gyro[turning, 2] > 0.05).all()  # counter-clockwise
    speed = np.array([state_at(drive, x).speed_mps for x in t[turning]])
    assert accel[turning, 1] == pytest.approx(speed * gyro[turning, 2], rel=1e-9)
    straight = ~turning & (t > 1)
    assert np.abs(accel[straight, 1]).max() < 1e-9


def test_longitudinal_follows_the_speed_profile() -> None:
    t, accel, _gyro = urban_vehicle_frame()
    drive = build_drive(urban())
    # the IMU's mean over each second is the GPS speed change over it
    for lo in range(30, 1900, 97):
        inside = (t >= lo) & (t < lo + 1)
        dv = state_at(drive, lo + 1).speed_mps - state_at(drive, lo).speed_mps
        truth = true_motion(urban(), t[inside])
        overlay = (truth[:, 0] - [state_at(drive, x).accel_mps2 for x in t[inside]]).mean()
        assert accel[inside, 0].mean() - overlay == pytest.approx(dv, abs=0.06), lo


def test_same_seed_same_samples_other_seed_other_noise() -> None:
    scenario = urban()
    a = list(iter_imu(scenario, seed=5, duration_s=30))
    b = list(iter_imu(scenario, seed=5, duration_s=30))
    c = list(iter_imu(scenario, seed=6, duration_s=30))
    assert a == b
    assert len(a) == len(c) == 30 * 50 + 1
    assert a != c
    assert [s.t for s in a] == [s.t for s in c]
    assert np.abs(arrays(a)[1] - arrays(c)[1]).max() < 0.3  # only the noise differs


def test_engine_vibration_only_while_the_engine_runs() -> None:
    t, accel, _gyro = urban_vehicle_frame()
    drop3 = next(s for s in build_drive(urban()).first.stops if s.name == "Drop 3 Ondiep")
    off = (t > drop3.arrive_s + 10) & (t < drop3.depart_s - 15)  # engine = "off" there
    idle = (t > 3) & (t < 17)
    assert accel[off, 2].std() < 0.05  # noise only (3 mg)
    assert accel[idle, 2].std() > 0.1  # 20 mg of idle vibration


def test_road_bumps_are_vertical_and_only_while_moving() -> None:
    scenario = urban()
    assert scenario.imu is not None
    quiet = scenario.model_copy(
        update={
            "imu": scenario.imu.model_copy(
                update={"accel_noise_mg": 0.0, "vibration_mg": 0.0, "bump_rate_per_km": 10.0}
            ),
            "events": (),
        }
    )
    t, accel, _gyro = arrays(list(iter_imu(quiet, rotation=np.eye(3))))
    truth = true_motion(quiet, t)
    bump = accel[:, 2] - GRAVITY - truth[:, 2]
    assert np.abs(accel[:, :2] - truth[:, :2]).max() < 1e-9
    spikes = np.flatnonzero(np.diff((bump > 0.3).astype(int)) == 1)
    assert 30 <= len(spikes) <= 150  # ~10 per km over ~7.5 km
    assert (truth[spikes, 4] > 0).all()
    assert bump.max() <= 0.15 * GRAVITY + 1e-9


def test_scripted_events_are_in_the_samples_and_the_truth() -> None:
    t, accel, gyro = urban_vehicle_frame()
    harsh = truth_harsh(urban())
    kinds = [(h.kind, h.direction) for h in harsh]
    assert sorted(kinds, key=str) == sorted(
        [
            ("harsh_braking", None),
            ("harsh_acceleration", None),
            ("harsh_cornering", "left"),
            ("harsh_cornering", "right"),
        ],
        key=str,
    )
    drive = build_drive(urban())
    for h in harsh:
        inside = (t >= h.t_start + 0.05) & (t <= h.t_end - 0.05)
        speed = state_at(drive, h.t_start).speed_mps * 3.6
        if h.kind == "harsh_cornering":
            sign = 1 if h.direction == "left" else -1
            assert speed >= 30
            assert (sign * accel[inside, 1] > 3.0).all()
            assert (sign * gyro[inside, 2] > 0.2).all()  # a swerve turns the vehicle
        else:
            sign = 1 if h.kind == "harsh_acceleration" else -1
            assert speed >= 10 or state_at(drive, h.t_end).speed_mps * 3.6 >= 10
            assert (sign * accel[inside, 0] > 2.4).all()
    impacts = truth_impacts(urban())
    assert [(i.kind, round(i.peak_g, 1)) for i in impacts] == [("impact", 3.0)]
    near = np.abs(t - impacts[0].t_peak) < 0.1
    assert accel[near, 0].max() > 2.7 * GRAVITY  # from behind: forwards
    assert state_at(drive, impacts[0].t_peak).speed_mps * 3.6 < 10  # so no harsh brake
    pothole = np.abs(t - 100.075) < 0.05
    assert accel[pothole, 2].max() > GRAVITY + 0.7 * GRAVITY


def test_the_gps_sees_the_longitudinal_ones() -> None:
    scenario = urban()
    speeds = {}
    for epoch in iter_epochs(scenario):
        rmc = next(x for x in epoch.data.decode().split("\r\n") if x.startswith("$GPRMC"))
        speeds[round(epoch.t)] = float(rmc.split(",")[7]) * 1852 / 3600
    for h in truth_harsh(scenario):
        if h.kind == "harsh_cornering":
            continue
        lo, hi = math.floor(h.t_start), math.ceil(h.t_end)
        dvdt = [speeds[s + 1] - speeds[s] for s in range(lo, hi)]
        if h.kind == "harsh_braking":
            assert min(dvdt) < -2.7
        else:
            assert max(dvdt) > 2.5


def test_csv_from_the_cli_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "imu.csv"
    assert (
        main(
            [
                "imu",
                "--scenario",
                "urban_delivery",
                "--duration",
                "4",
                "--out",
                str(out),
                "--rate",
                "100",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    assert "401 samples at 100 Hz" in capsys.readouterr().err
    rows = list(csv.reader(out.open()))
    assert ",".join(rows[0]) == CSV_HEADER
    values = np.array(rows[1:], dtype=float)
    assert values.shape == (401, 7)
    assert values[:, 0] == pytest.approx(np.arange(401) / 100, abs=1e-4)
    assert np.linalg.norm(values[:, 1:4], axis=1).mean() == pytest.approx(GRAVITY, abs=0.02)
    expected = list(csv_lines(iter_imu(urban(), rate_hz=100, seed=2, duration_s=4)))
    assert out.read_text() == "".join(expected)
    assert main(["imu", "--scenario", "urban_delivery", "--duration", "1"]) == 0
    assert capsys.readouterr().out.startswith(CSV_HEADER + "\n0.0000,")


def test_csv_without_gyro_and_truth_cli(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = parse_scenario(LEFT_TURN.replace("rate_hz = 50", "rate_hz = 50\ngyro = false"))
    lines = list(csv_lines(iter_imu(scenario, duration_s=1)))
    assert lines[0] == "t,ax,ay,az\n" and len(lines) == 52
    assert lines[1].split(",")[3] == f"{GRAVITY:.5f}\n"
    assert main(["truth", "--scenario", "urban_delivery", "--kind", "harsh"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["class"] for r in rows} == {"harsh_braking", "harsh_acceleration", "harsh_cornering"}
    assert main(["truth", "--scenario", "urban_delivery", "--kind", "impacts"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "impact"


def test_event_and_imu_keys_are_validated() -> None:
    base = LEFT_TURN

    def problems(extra: str) -> list[str]:
        with pytest.raises(ScenarioError) as info:
            parse_scenario(base + extra)
        return info.value.problems

    harsh = '[[events]]\nat_s = 5\nkind = "harsh_left"\n'
    assert problems(harsh)[0].startswith("events[0].peak_mps2: required")
    assert problems(harsh + "peak_mps2 = 4\npeak_g = 1\n")[0].startswith(
        "events[0].peak_g: not for"
    )
    event = parse_scenario(base + harsh + "peak_mps2 = 4\n").events[0]
    assert event.duration_s == 1.0 and event.harsh and event.peak_accel_mps2 == 4.0
    shock = '[[events]]\nat_s = 5\nkind = "pothole"\npeak_g = 1\n'
    assert parse_scenario(base + shock).events[0].duration_s == 0.2
    assert problems(shock + "direction_deg = 90\n")[0].startswith("events[0].direction_deg:")
    assert problems(shock.replace("pothole", "meteor"))[0].startswith("events[0].kind:")
    mixed = base.replace(
        "bump_rate_per_km = 0", "bump_rate_per_km = 0\nmount_random = true\nmount_yaw_deg = 90"
    )
    with pytest.raises(ScenarioError) as info:
        parse_scenario(mixed)
    assert info.value.problems[0].startswith("imu.mount_yaw_deg: not with mount_random")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="orthonormal"):
        next(iter_imu(urban(), rotation=np.ones((3, 3))))
    with pytest.raises(ValueError, match="reflection"):
        next(iter_imu(urban(), rotation=np.diag([1.0, 1.0, -1.0])))
    with pytest.raises(ValueError, match="duration_s"):
        next(iter_imu(urban(), loop=True))
    looped = list(iter_imu(urban(), loop=True, duration_s=2500, rate_hz=10))
    assert looped[-1].t == pytest.approx(2500.0)
