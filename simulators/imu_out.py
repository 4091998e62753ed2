"""IMU samples of a scenario's drive, in any mounting: what a fitted IMU would read.

The same truth as the GPS and the ECU (``route.state_at``), so a test drive's
IMU agrees with its GPS speed and course.  Pure and deterministic: the same
scenario, rotation and seed give the same samples, with no I/O and no clock.

Model, in the vehicle frame (x forward, y left, z up, as ``VehicleAccel``):

* longitudinal acceleration = the route's ``accel_mps2``; lateral =
  ``-speed x yaw_rate`` (the route's yaw rate is positive turning right, the
  lateral axis positive to the left); the gyro reads the yaw rate about z
  (counter-clockwise positive).  The road is flat: no grade, no body roll.
* the accelerometer reads the specific force, so gravity appears as +1 g on up;
* scripted ``[[events]]``: harsh manoeuvres are trapezoids added to the
  longitudinal or lateral acceleration (a lateral one with the yaw rate that
  goes with it); shocks are half-sine pulses (vertical for potholes and speed
  bumps, horizontal for impacts, both for curb strikes).  They are IMU-only
  overlays: the GPS speed does not change; a harsh brake both must see is a
  waypoint's ``decel_mps2`` (see docs/SIMULATORS.md);
* engine vibration while the engine runs (``ecu.engine_schedule``): a sine of
  ``vibration_mg`` at ``vibration_hz`` at idle, a third faster at 50 km/h,
  mostly vertical; road bumps at random along the road (``bump_rate_per_km``),
  short vertical half-sines up to ``bump_peak_g``; white noise per sensor axis.

Then everything is turned into the sensor frame: with ``R`` the sensor to
vehicle rotation (``vehicle = R @ sensor``, what a mounting calibration
recovers), the sensor reads ``R.T @ vehicle``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from agent.imu.sample import GRAVITY, ImuSample
from simulators.ecu import engine_schedule, stop_engine
from simulators.route import Drive, build_drive, state_at
from simulators.scenario import Engine, Event, Imu, Scenario

__all__ = [
    "CSV_HEADER",
    "HarshTruth",
    "ImpactTruth",
    "csv_lines",
    "euler_rotation",
    "iter_imu",
    "mount_rotation",
    "random_rotation",
    "rotation_angle_deg",
    "true_motion",
    "truth_harsh",
    "truth_impacts",
]

CSV_HEADER = "t,ax,ay,az,gx,gy,gz"
_CHUNK = 2048  # samples computed together (numpy), then yielded one by one
_HARSH_RAMP_S = 0.2  # rise and fall of a scripted harsh manoeuvre (at most a quarter of it)
_MIN_YAW_SPEED_MPS = 3.0  # a scripted lateral pulse below this speed gets this speed's yaw
_VIB_AXES = np.array([0.2, 0.4, 1.0])  # engine vibration: lon, lat, vert share
_VIB_PHASES = np.array([2.0, 1.0, 0.0])
_BUMP_DURATION_S = (0.08, 0.2)

# The harsh detector's names (agent/imu/harsh.py HarshKind), so truth and detections compare.
HarshClass = Literal["harsh_acceleration", "harsh_braking", "harsh_cornering"]


class HarshTruth(NamedTuple):
    """One true harsh episode: when, which class, and for cornering which way."""

    t_start: float
    t_end: float
    kind: HarshClass
    direction: Literal["left", "right"] | None


class ImpactTruth(NamedTuple):
    """One scripted shock at or above an impact threshold: its peak time and size."""

    t_peak: float
    peak_g: float
    kind: str


# --------------------------------------------------------------------------- rotations


def euler_rotation(roll_deg: float, pitch_deg: float, yaw_deg: float) -> NDArray[np.float64]:
    """Sensor->vehicle rotation of a sensor turned by yaw (z), then pitch (y'), then roll (x'').

    The columns are the sensor's axes in vehicle coordinates, so
    ``vehicle = R @ sensor``.  Roll 180 is a sensor fitted upside down.
    """
    r, p, y = (math.radians(a) for a in (roll_deg, pitch_deg, yaw_deg))
    cr, sr, cp, sp, cy, sy = (
        math.cos(r),
        math.sin(r),
        math.cos(p),
        math.sin(p),
        math.cos(y),
        math.sin(y),
    )
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    out: NDArray[np.float64] = rz @ ry @ rx
    return out


def random_rotation(seed: int) -> NDArray[np.float64]:
    """A uniformly random rotation (Shoemake's quaternion method), the same for a seed."""
    u1, u2, u3 = np.random.default_rng([seed, 3]).random(3)
    a, b = math.sqrt(1 - u1), math.sqrt(u1)
    x, y = a * math.sin(2 * math.pi * u2), a * math.cos(2 * math.pi * u2)
    z, w = b * math.sin(2 * math.pi * u3), b * math.cos(2 * math.pi * u3)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def mount_rotation(scenario: Scenario, seed: int | None = None) -> NDArray[np.float64]:
    """The scenario's mounting as a sensor->vehicle rotation (``[imu]`` keys).

    ``seed`` replaces ``imu.seed`` for ``mount_random``; fixed angles ignore it.
    """
    imu = scenario.imu or Imu()
    if imu.mount_random:
        return random_rotation(imu.seed if seed is None else seed)
    return euler_rotation(imu.mount_roll_deg, imu.mount_pitch_deg, imu.mount_yaw_deg)


def rotation_angle_deg(a: ArrayLike, b: ArrayLike) -> float:
    """The angle of the rotation between two rotation matrices (0 when equal)."""
    rel = np.asarray(a, dtype=float) @ np.asarray(b, dtype=float).T
    cos = (float(np.trace(rel)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _checked_rotation(rotation: ArrayLike) -> NDArray[np.float64]:
    r = np.asarray(rotation, dtype=float)
    if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6):
        raise ValueError("rotation must be a 3x3 orthonormal matrix")
    if np.linalg.det(r) < 0:
        raise ValueError("rotation must be proper (determinant +1), not a reflection")
    return r


# --------------------------------------------------------------------------- the model


class _Kinematics(NamedTuple):
    speed: NDArray[np.float64]
    lon: NDArray[np.float64]
    lat: NDArray[np.float64]
    vert: NDArray[np.float64]
    yaw: NDArray[np.float64]  # rad/s about up, counter-clockwise (left) positive
    odometer: NDArray[np.float64]
    running: NDArray[np.bool_]


class _Engine:
    """Whether the engine runs at t: the ECU's schedule, then (looping) the same rule per stop."""

    def __init__(self, scenario: Scenario, drive: Drive) -> None:
        self.scenario = scenario
        self.engine = scenario.engine or Engine()
        self.first_end = drive.first.duration
        runs = engine_schedule(scenario, drive)
        self.starts = [lo for lo, _hi in runs]
        self.runs = runs

    def running(
        self, t: float, moving: bool, waypoint: int | None, stopped: float, left: float
    ) -> bool:
        if t < self.first_end or not self.runs:
            i = bisect_right(self.starts, t) - 1
            return i >= 0 and t < self.runs[i][1]
        if moving or waypoint is None:
            return True
        wp = self.scenario.route.waypoints[waypoint]
        if stop_engine(wp, self.engine) != "off":
            return True
        return (
            stopped < self.engine.off_after_arrival_s or left < self.engine.start_before_departure_s
        )


def _kinematics(
    scenario: Scenario, drive: Drive, engine: _Engine, t: NDArray[np.float64]
) -> _Kinematics:
    """Noise-free vehicle-frame motion at each t: the route, then the scripted events."""
    n = len(t)
    speed, lon, lat, yaw, odo = (np.empty(n) for _ in range(5))
    running = np.empty(n, dtype=bool)
    for i, ti in enumerate(t.tolist()):
        s = state_at(drive, ti)
        w = -math.radians(s.yaw_rate_dps)
        speed[i], lon[i], yaw[i], odo[i] = s.speed_mps, s.accel_mps2, w, s.odometer_m
        lat[i] = s.speed_mps * w
        running[i] = engine.running(
            ti, s.moving, s.stop_waypoint, s.stopped_for_s, s.stop_remaining_s
        )
    vert = np.zeros(n)
    for ev in scenario.events:
        if n == 0 or ev.end_s < t[0] or ev.at_s > t[-1]:
            continue
        _add_event(ev, t, speed, lon, lat, vert, yaw)
    return _Kinematics(speed, lon, lat, vert, yaw, odo, running)


def _add_event(
    ev: Event,
    t: NDArray[np.float64],
    speed: NDArray[np.float64],
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    vert: NDArray[np.float64],
    yaw: NDArray[np.float64],
) -> None:
    """Add one scripted event's pulse to the arrays, in place."""
    tau = t - ev.at_s
    d = ev.duration_s
    inside = (tau >= 0) & (tau <= d)
    if not inside.any():
        return
    peak = ev.peak_accel_mps2
    if ev.harsh:
        ramp = min(_HARSH_RAMP_S, d / 4)
        shape = np.clip(np.minimum(tau, d - tau) / ramp, 0.0, 1.0) * inside
    else:
        shape = np.sin(np.pi * np.clip(tau / d, 0.0, 1.0)) * inside
    pulse = peak * shape
    if ev.kind == "harsh_braking":
        lon -= pulse
    elif ev.kind == "harsh_acceleration":
        lon += pulse
    elif ev.kind in ("harsh_left", "harsh_right"):
        sign = 1.0 if ev.kind == "harsh_left" else -1.0
        lat += sign * pulse
        yaw += sign * pulse / np.maximum(speed, _MIN_YAW_SPEED_MPS)
    elif ev.kind in ("pothole", "speed_bump"):
        vert += pulse
    else:  # impact, curb_strike: horizontal along direction_deg (0 forward, 90 left)
        default = 180.0 if ev.kind == "impact" else 90.0
        az = math.radians(default if ev.direction_deg is None else ev.direction_deg)
        lon += math.cos(az) * pulse
        lat += math.sin(az) * pulse
        if ev.kind == "curb_strike":
            vert += 0.5 * pulse


def true_motion(scenario: Scenario, t: ArrayLike, *, loop: bool = False) -> NDArray[np.float64]:
    """Noise-free vehicle-frame truth at each t: columns lon, lat, vert (m/s², gravity
    removed), yaw rate (rad/s, left positive) and speed (m/s).

    Route kinematics plus the scripted events; no noise, vibration or bumps.
    What a calibrated IMU's ``VehicleAccel`` should match.
    """
    times = np.atleast_1d(np.asarray(t, dtype=float))
    drive = build_drive(scenario, loop=loop)
    k = _kinematics(scenario, drive, _Engine(scenario, drive), times)
    return np.column_stack([k.lon, k.lat, k.vert, k.yaw, k.speed])


class _Extras:
    """Engine vibration and road bumps: stateful across chunks, random from one seed."""

    def __init__(self, imu: Imu, seed: int, rate: float) -> None:
        self.imu = imu
        self.dt = 1.0 / rate
        self.rng = np.random.default_rng([seed, 2])
        self.phase = 0.0
        self.spacing_m = 1000.0 / imu.bump_rate_per_km if imu.bump_rate_per_km > 0 else math.inf
        self.next_bump_m = self._gap()
        self.bumps: list[tuple[float, float, float]] = []  # (start, duration, peak m/s²)

    def _gap(self) -> float:
        return (
            float(self.rng.exponential(self.spacing_m))
            if math.isfinite(self.spacing_m)
            else math.inf
        )

    def vibration(self, k: _Kinematics) -> NDArray[np.float64]:
        amp = self.imu.vibration_mg * 1e-3 * GRAVITY
        freq = self.imu.vibration_hz * (1.0 + np.minimum(k.speed * 3.6, 50.0) / 150.0)
        phase = self.phase + np.cumsum(2 * np.pi * freq * self.dt)
        self.phase = float(phase[-1] % (2 * np.pi)) if len(phase) else self.phase
        wave = np.sin(phase[:, None] + _VIB_PHASES[None, :]) * _VIB_AXES[None, :] * amp
        out: NDArray[np.float64] = wave * k.running[:, None]
        return out

    def bumps_vert(self, t: NDArray[np.float64], k: _Kinematics) -> NDArray[np.float64]:
        peak_max = self.imu.bump_peak_g * GRAVITY
        while peak_max > 0:
            i = int(np.searchsorted(k.odometer, self.next_bump_m))
            if i >= len(t):
                break
            dur = float(self.rng.uniform(*_BUMP_DURATION_S))
            peak = float(self.rng.uniform(0.5, 1.0)) * peak_max
            self.bumps.append((float(t[i]), dur, peak))
            self.next_bump_m += self._gap()
        vert = np.zeros(len(t))
        for start, dur, peak in self.bumps:
            tau = (t - start) / dur
            inside = (tau >= 0) & (tau <= 1)
            vert += peak * np.sin(np.pi * np.clip(tau, 0.0, 1.0)) * inside
        if len(t):
            self.bumps = [b for b in self.bumps if b[0] + b[1] >= t[-1]]
        return vert


def iter_imu(
    scenario: Scenario,
    *,
    rate_hz: float | None = None,
    rotation: ArrayLike | None = None,
    seed: int | None = None,
    duration_s: float | None = None,
    loop: bool = False,
) -> Iterator[ImuSample]:
    """The drive's IMU samples from t = 0 to the end of the route (or ``duration_s``).

    ``rotation`` is the sensor->vehicle rotation (``vehicle = R @ sensor``);
    by default the scenario's ``[imu]`` mounting.  ``seed`` (default
    ``imu.seed``) chooses the noise, the bumps and a ``mount_random`` mounting.
    ``loop`` repeats the route (then ``duration_s`` is required); scripted
    events happen once, at their scenario second.
    """
    imu = scenario.imu or Imu()
    rate = float(rate_hz if rate_hz is not None else imu.rate_hz)
    if not rate > 0:
        raise ValueError("rate_hz must be positive")
    seed = imu.seed if seed is None else seed
    r = _checked_rotation(rotation) if rotation is not None else mount_rotation(scenario, seed)
    drive = build_drive(scenario, loop=loop)
    end = drive.duration if duration_s is None else min(duration_s, drive.duration)
    if not math.isfinite(end):
        raise ValueError("a looping drive needs duration_s")
    engine = _Engine(scenario, drive)
    extras = _Extras(imu, seed, rate)
    noise = np.random.default_rng([seed, 1])
    accel_sigma = imu.accel_noise_mg * 1e-3 * GRAVITY
    gyro_sigma = math.radians(imu.gyro_noise_dps)
    count = math.floor(end * rate + 1e-9) + 1
    for first in range(0, count, _CHUNK):
        t = np.arange(first, min(first + _CHUNK, count)) / rate
        k = _kinematics(scenario, drive, engine, t)
        force = np.column_stack([k.lon, k.lat, k.vert + GRAVITY])
        force += extras.vibration(k)
        force[:, 2] += extras.bumps_vert(t, k)
        gyro = np.column_stack([np.zeros(len(t)), np.zeros(len(t)), k.yaw])
        accel_s = force @ r + noise.normal(0.0, accel_sigma, (len(t), 3))
        gyro_s = gyro @ r + noise.normal(0.0, gyro_sigma, (len(t), 3))
        if imu.gyro:
            for ti, (ax, ay, az), (gx, gy, gz) in zip(
                t.tolist(), accel_s.tolist(), gyro_s.tolist(), strict=True
            ):
                yield ImuSample(ti, ax, ay, az, gx, gy, gz)
        else:
            for ti, (ax, ay, az) in zip(t.tolist(), accel_s.tolist(), strict=True):
                yield ImuSample(ti, ax, ay, az)


# --------------------------------------------------------------------------- CSV


def csv_lines(samples: Iterable[ImuSample]) -> Iterator[str]:
    """The documented replay CSV: a header, then ``t,ax,ay,az[,gx,gy,gz]`` per sample.

    t in seconds, acceleration in m/s² including gravity, angular rate in
    rad/s.  The gyro columns are left out when the first sample has no gyro.
    """
    header_done = False
    for s in samples:
        if not header_done:
            yield (CSV_HEADER if s.has_gyro else "t,ax,ay,az") + "\n"
            header_done = True
        if s.has_gyro:
            yield (f"{s.t:.4f},{s.ax:.5f},{s.ay:.5f},{s.az:.5f},{s.gx:.6f},{s.gy:.6f},{s.gz:.6f}\n")
        else:
            yield f"{s.t:.4f},{s.ax:.5f},{s.ay:.5f},{s.az:.5f}\n"
    if not header_done:
        yield CSV_HEADER + "\n"


# --------------------------------------------------------------------------- truth


def truth_harsh(
    scenario: Scenario,
    *,
    accel_mps2: float = 2.5,
    brake_mps2: float = 2.7,
    corner_mps2: float = 3.4,
    min_lon_kmh: float = 10.0,
    min_corner_kmh: float = 30.0,
    min_duration_s: float = 0.1,
    merge_gap_s: float = 0.5,
) -> list[HarshTruth]:
    """Every harsh episode of the drive (first lap), by the detector defaults.

    From the true motion (``true_motion``: route accelerations plus scripted
    events, without noise, vibration or bumps): longitudinal above
    ``accel_mps2``/below ``-brake_mps2`` at ``min_lon_kmh`` or more, lateral
    beyond ``corner_mps2`` at ``min_corner_kmh`` or more; parts closer than
    ``merge_gap_s`` are one episode, shorter than ``min_duration_s`` none.
    Edges to 1 ms.  Sorted by start.
    """
    drive = build_drive(scenario)
    engine = _Engine(scenario, drive)
    min_lon, min_corner = min_lon_kmh / 3.6, min_corner_kmh / 3.6
    tests: list[tuple[HarshClass, Literal["left", "right"] | None]] = [
        ("harsh_acceleration", None),
        ("harsh_braking", None),
        ("harsh_cornering", "left"),
        ("harsh_cornering", "right"),
    ]

    def flags(t: NDArray[np.float64]) -> NDArray[np.bool_]:
        k = _kinematics(scenario, drive, engine, t)
        return np.column_stack(
            [
                (k.lon >= accel_mps2) & (k.speed >= min_lon),
                (k.lon <= -brake_mps2) & (k.speed >= min_lon),
                (k.lat >= corner_mps2) & (k.speed >= min_corner),
                (k.lat <= -corner_mps2) & (k.speed >= min_corner),
            ]
        )

    step = 0.05
    grid = np.arange(0.0, drive.duration + step, step)
    on = flags(grid)
    out: list[HarshTruth] = []
    for col, (kind, direction) in enumerate(tests):
        spans: list[list[float]] = []
        for lo, hi in _runs(on[:, col]):
            start = _edge(flags, col, grid[lo - 1], grid[lo]) if lo > 0 else float(grid[lo])
            end = (
                _edge(flags, col, grid[hi + 1], grid[hi]) if hi + 1 < len(grid) else float(grid[hi])
            )
            if spans and start - spans[-1][1] < merge_gap_s:
                spans[-1][1] = end
            else:
                spans.append([start, end])
        out.extend(
            HarshTruth(round(a, 3), round(b, 3), kind, direction)
            for a, b in spans
            if b - a >= min_duration_s
        )
    return sorted(out)


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, last) indices of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    diff = np.diff(padded)
    starts = np.flatnonzero(diff == 1)
    ends = np.flatnonzero(diff == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _edge(
    flags: Callable[[NDArray[np.float64]], NDArray[np.bool_]],
    col: int,
    outside: float,
    inside: float,
) -> float:
    """Bisect between a time where the condition is off and one where it is on (1 ms)."""
    a, b = float(outside), float(inside)
    while abs(b - a) > 5e-4:
        mid = (a + b) / 2
        if flags(np.array([mid]))[0, col]:
            b = mid
        else:
            a = mid
    return b


def truth_impacts(scenario: Scenario, threshold_g: float = 2.5) -> list[ImpactTruth]:
    """Every scripted shock whose peak reaches ``threshold_g`` (any kind), by time.

    The peak is the pulse's own (gravity not added); random road bumps are
    below it with any sane ``bump_peak_g``.
    """
    shocks: Sequence[Event] = [e for e in scenario.events if not e.harsh]
    return sorted(
        ImpactTruth(round(e.at_s + e.duration_s / 2, 3), e.peak_accel_mps2 / GRAVITY, e.kind)
        for e in shocks
        if e.peak_accel_mps2 / GRAVITY >= threshold_g
    )
