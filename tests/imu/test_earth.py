"""EarthFrameAligner: heading recovered from turns, fusion tilt undone, events found."""

from __future__ import annotations

import cmath
import math
import random
from dataclasses import dataclass

import pytest

from agent.imu.earth import EarthConfig, EarthFrameAligner, best_heading
from agent.imu.harsh import HarshDetection, HarshDetector
from agent.imu.sample import GRAVITY, ImuSample, VehicleAccel

RATE = 50.0


@dataclass
class Truth:
    t: list[float]
    lon: list[float]
    lat: list[float]


# (start s, duration s, lon m/s², yaw rate rad/s): a drive with gentle manoeuvres and
# four harsh ones (braking 4, acceleration 3, left turn 5, right turn 5 m/s²)
SCRIPT = [
    (5.0, 6.0, 2.0, 0.0),  # pull away to 12 m/s
    (25.0, 2.0, -1.5, 0.0),  # slow to 9 m/s
    (28.0, math.pi / 2 / 0.3, 0.0, 0.3),  # gentle left, 2.7 m/s²
    (40.0, 1.5, 2.0, 0.0),  # to 12 m/s
    (55.0, math.pi / 2 / 0.25, 0.0, -0.25),  # gentle right, 3 m/s²
    (90.0, 1.5, -4.0, 0.0),  # HARSH braking 12 -> 6 m/s
    (100.0, 2.0, 3.0, 0.0),  # HARSH acceleration 6 -> 12 m/s
    (120.0, 2.0, -1.0, 0.0),  # to 10 m/s
    (130.0, 2.0, 0.0, 0.5),  # HARSH left, 5 m/s², 57°
    (150.0, 2.0, 0.0, -0.5),  # HARSH right
    (170.0, 1.0, -1.0, 0.0),
]
HARSH = [
    ("harsh_braking", None),
    ("harsh_acceleration", None),
    ("harsh_cornering", "left"),
    ("harsh_cornering", "right"),
]


def simulate(
    psi0: float, seconds: float = 200.0, fusion_tau: float | None = None, seed: int = 7
) -> tuple[list[ImuSample], Truth]:
    """Earth-frame samples of SCRIPT, heading starting at ``psi0`` (ccw from east).

    With ``fusion_tau`` the phone's fusion is imitated: its "up" leans towards
    the specific force with that time constant, so the horizontal part fades
    into z during sustained accelerations and rebounds after them.
    """
    rng = random.Random(seed)
    dt = 1.0 / RATE
    v, psi = 0.0, psi0
    tilt = 0j  # fusion's lean, as a horizontal vector (rad)
    samples: list[ImuSample] = []
    truth = Truth([], [], [])
    for i in range(round(seconds * RATE)):
        t = i * dt
        lon, yaw = 0.0, 0.0
        for start, dur, a, w in SCRIPT:
            if start <= t < start + dur:
                lon, yaw = a, w
        lat = v * yaw
        h = complex(lon, lat) * cmath.exp(1j * psi)
        hm, z = h, GRAVITY
        if fusion_tau is not None:
            tilt += (h / GRAVITY - tilt) * dt / fusion_tau
            hm = h - GRAVITY * tilt
            z = math.sqrt(max(0.0, abs(h) ** 2 + GRAVITY**2 - abs(hm) ** 2))
        noise = [rng.gauss(0.0, 0.3) for _ in range(3)]
        samples.append(
            ImuSample(
                t,
                hm.real + noise[0],
                hm.imag + noise[1],
                z + noise[2],
                rng.gauss(0.0, 0.01),
                rng.gauss(0.0, 0.01),
                yaw + rng.gauss(0.0, 0.01),
            )
        )
        truth.t.append(t)
        truth.lon.append(lon)
        truth.lat.append(lat)
        v = max(0.0, v + lon * dt)
        psi += yaw * dt
    return samples, truth


def align(samples: list[ImuSample], config: EarthConfig | None = None) -> list[VehicleAccel]:
    al = EarthFrameAligner(config)
    out = al.feed_many(samples)
    return out + al.flush()


def detect(vehicle: list[VehicleAccel]) -> list[HarshDetection]:
    det = HarshDetector()
    return det.feed_many(vehicle) + det.flush()


def rms_error(vehicle: list[VehicleAccel], truth: Truth, t0: float, t1: float) -> float:
    errs = []
    for v in vehicle:
        if t0 <= v.t <= t1:
            i = round(v.t * RATE)  # the output is centred on the smoothing window
            errs.append((v.lon - truth.lon[i]) ** 2 + (v.lat - truth.lat[i]) ** 2)
    return math.sqrt(sum(errs) / len(errs))


@pytest.mark.parametrize("psi0_deg", [0.0, 130.0, -100.0])
def test_ideal_earth_frame_heading_recovered_and_events_found(psi0_deg: float) -> None:
    samples, truth = simulate(math.radians(psi0_deg))
    vehicle = align(samples, EarthConfig(fusion_tau_s=0.0))
    assert len(vehicle) == len(samples)  # nothing lost, all released by flush
    assert rms_error(vehicle, truth, 5.0, 195.0) < 0.6
    got = [(d.kind, d.direction) for d in detect(vehicle)]
    assert got == HARSH


def test_fusion_tilt_is_undone_and_its_rebounds_are_not_events() -> None:
    samples, _ = simulate(math.radians(60.0), fusion_tau=1.0)
    # read naively (no compensation) the harsh brake fades and rebounds as "acceleration"
    naive = detect(align(samples, EarthConfig(fusion_tau_s=0.0, magnitude_gain=100.0)))
    assert [(d.kind, d.direction) for d in naive] != HARSH
    vehicle = align(samples)
    dets = detect(vehicle)
    assert [(d.kind, d.direction) for d in dets] == HARSH
    brake = dets[0]
    assert brake.t_start == pytest.approx(90.0, abs=0.3)
    assert brake.duration_s == pytest.approx(1.5, abs=0.4)
    assert brake.peak == pytest.approx(4.0, abs=0.8)


def test_output_is_delayed_by_the_lookahead_and_flush_releases_it() -> None:
    samples, _ = simulate(0.0, seconds=60.0)
    al = EarthFrameAligner(EarthConfig(lookahead_s=10.0))
    first = al.feed_many(samples[: round(30 * RATE)])
    assert first and first[-1].t < 30.0 - 10.0
    rest = al.feed_many(samples[round(30 * RATE) :]) + al.flush()
    times = [v.t for v in first + rest]
    assert len(times) == len(samples) and times == sorted(times)


def test_gravity_is_the_sensors_own() -> None:
    samples = [ImuSample(i / RATE, 0.02, -0.01, 9.66, 0.0, 0.0, 0.0) for i in range(3000)]
    al = EarthFrameAligner()
    out = al.feed_many(samples) + al.flush()
    assert al.gravity == pytest.approx(9.66, abs=0.01)
    assert max(abs(v.lon) + abs(v.lat) for v in out) < 1e-6


def test_best_heading_reads_turn_and_straight_evidence() -> None:
    psi = math.radians(40.0)
    # a left turn: centripetal acceleration at psi + 90°, yaw positive
    turn = 3.0 * cmath.exp(1j * (psi + math.pi / 2)) * 0.5
    got = best_heading(turn, 0j, 0.3)
    assert got is not None and math.degrees(got) == pytest.approx(40.0, abs=1.0)
    # straight evidence alone gives the axis: psi or psi + 180°
    ax = best_heading(0j, 4.0 * cmath.exp(2j * psi), 0.3)
    assert ax is not None and math.degrees(ax) % 180 == pytest.approx(40.0, abs=1.0)
    assert best_heading(0j, 0j, 0.3) is None


@pytest.mark.parametrize("fusion_tau", [None, 0.5, 2.0])
def test_defaults_hold_whatever_the_phones_fusion_does(fusion_tau: float | None) -> None:
    """No tilt at all, or a fusion twice as fast or slow as the model: same events."""
    samples, _ = simulate(math.radians(-100.0), fusion_tau=fusion_tau)
    dets = detect(align(samples))
    assert [(d.kind, d.direction) for d in dets] == HARSH
    assert dets[0].peak == pytest.approx(4.0, abs=0.5)
    assert dets[2].peak == pytest.approx(5.0, abs=0.5)
