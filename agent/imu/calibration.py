"""Mounting calibration: the rotation from the sensor's axes to the vehicle's.

Why: the device may be fitted in any orientation (a phone in a dash holder, a
box on a bulkhead, upside down under a seat), while harsh-driving thresholds
are in vehicle terms.  Nobody can be asked to fit it square, so the rotation
is learned from the drive itself:

* **up**: while the vehicle is known to be stopped (GNSS/OBD speed about 0
  for a few seconds; engine running when that is known; the accelerometer
  still) it reads gravity alone.  One measurement per stop; their mean is up.
* **forward**: on straight stretches the horizontal acceleration (the
  specific force with its component along up removed) is the longitudinal
  acceleration along the forward axis.  Regressing it, interval by interval,
  on dv/dt of the GNSS/OBD speed over the *same* interval (the IMU mean over
  an interval is exactly the speed change over it, so no smoothing or lag
  model is needed) gives the forward direction; the slope's size (about 1)
  and its correlation are checks.  Enough evidence is required: several
  accelerations and brakings, a range of dv/dt, a small angle uncertainty.
* **left** = up x forward; the rows (forward, left, up) are the sensor->vehicle
  rotation (x forward, y left, z up: ``VehicleAccel``).

A persisted rotation (``snapshot``/``restore``) is used at once after a
restart and verified at the next stops.  A mounting that moves is noticed
when stops consistently show gravity more than ``moved_threshold_deg`` away
from up (or, for a turn about the vertical, when the forward fit on fresh
data disagrees); the calibration then starts again.  Until calibrated,
``to_vehicle`` returns None and the runtime uses the GNSS/OBD detector
(``status()['harsh_source']`` says so).

Pure and deterministic: no clock, no I/O.  Times of IMU samples, motion
reports and engine reports must be on one clock (the runtime's monotonic
clock live, the file's time in replay).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from agent.imu.sample import GRAVITY, ImuSample, VehicleAccel

__all__ = [
    "SNAPSHOT_VERSION",
    "CalibrationConfig",
    "CalibrationEvent",
    "CalibrationState",
    "GravityMeasurement",
    "MountingCalibrator",
    "euler_from_rotation",
]

SNAPSHOT_VERSION = 1
CalibrationState = Literal["uncalibrated", "gravity_only", "calibrated"]
EventKind = Literal["gravity", "calibrated", "verified", "moved", "restored"]

# Columns of one stored interval (see MountingCalibrator._intervals).
_T1, _T2, _A, _VMAX, _VMEAN, _FX, _FY, _FZ, _GX, _GY, _GZ, _LATC = range(12)


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """Tuning.  The defaults suit 50-200 Hz IMUs, 1 Hz GNSS and 2 Hz OBD speed."""

    bin_s: float = 0.1  # IMU samples are summed in bins of this length
    stop_speed_mps: float = 0.3  # below this the vehicle is stopped (GNSS jitter at rest)
    max_report_gap_s: float = 3.0  # motion reports further apart say nothing in between
    motion_timeout_s: float = 5.0  # IMU time without a later motion report: motion unknown
    stop_settle_s: float = 2.0  # the start of a stop is skipped (the body still rocks)
    stop_tail_s: float = 1.0  # ... and its end (engine jolts before moving off)
    chunk_s: float = 1.0  # a stop is judged in chunks of this length
    still_std_mps2: float = 0.6  # a chunk noisier than this (per axis) is not still
    chunk_outlier_mps2: float = 0.25  # a chunk this far from the stop's median is dropped
    min_stop_s: float = 3.0  # still seconds for one gravity measurement
    max_stop_s: float = 60.0  # a long stop gives one measurement per this much
    engine_on_only: bool = True  # stops with the engine known off are not used
    gravity_tolerance: float = 0.25  # |g| beyond (1 +- this) x GRAVITY: a bad sensor, ignored
    gravity_stops: int = 2  # stops before the forward axis is solved
    stop_tilt_deg: float = 1.5  # typical grade/camber of one stop: up's error floor
    interval_s: float = 1.0  # dv/dt over intervals of about this length
    max_interval_s: float = 3.0  # ... and never longer (a missed fix ends the pair)
    min_speed_mps: float = 1.0  # intervals where the vehicle never exceeds this are not used
    straight_lat_mps2: float = 0.4  # |speed x yaw rate| above this is a turn, not used
    min_intervals: int = 40
    episode_accel_mps2: float = 1.0  # |dv/dt| above this makes an acceleration/braking episode
    min_episodes: int = 3  # of each sign
    min_accel_range_mps2: float = 2.0  # max - min of dv/dt
    min_correlation: float = 0.8
    scale_range: tuple[float, float] = (0.7, 1.3)  # |slope|: IMU m/s² per speed m/s²
    max_uncertainty_deg: float = 2.0  # of the forward axis, to claim a calibration
    solve_every: int = 10  # new intervals between two attempts
    moved_threshold_deg: float = 7.0  # gravity (or forward) this far off: the mount moved
    moved_agree_deg: float = 3.0  # ... at stops agreeing with each other this closely
    moved_stops: int = 2  # ... this many distinct stops
    check_every: int = 60  # intervals between two forward checks once calibrated
    check_window_s: float = 600.0  # a forward check fits the intervals of this last span
    max_intervals: int = 5000
    max_gravity: int = 30  # gravity measurements kept
    retain_s: float = 30.0  # IMU bins kept for intervals whose speed report is late
    silent_imu_s: float = 120.0  # speed reports kept for an IMU this far behind, no longer


@dataclass(frozen=True, slots=True)
class CalibrationEvent:
    """Something the runtime should log or report: calibrated, moved, verified ..."""

    t: float | None  # on the samples' clock; None for ``restored`` (no sample yet)
    kind: EventKind
    detail: str


@dataclass(frozen=True, slots=True)
class GravityMeasurement:
    """The mean specific force over one still stop (or 60 s of a long one)."""

    t_start: float
    t_end: float
    stop_id: int
    up: tuple[float, float, float]  # unit vector, sensor frame
    magnitude: float  # m/s²
    seconds: float
    samples: int
    spread_deg: float  # angular scatter of the stop's 1 s means
    gyro: tuple[float, float, float] | None  # mean angular rate (the gyro's bias)


@dataclass(slots=True)
class _Stop:
    stop_id: int
    t_start: float
    bins: int = 0
    tail: deque[tuple[int, list[float]]] = field(default_factory=deque)
    chunk: list[float] = field(default_factory=lambda: [0.0] * 11)
    chunk_bins: int = 0
    chunk_bad: bool = False
    chunk_t0: float = 0.0
    # per still chunk: mean force (3), samples, mean gyro (3, nan without), time
    chunks: list[tuple[float, float, float, float, float, float, float, float]] = field(
        default_factory=list
    )


@dataclass(frozen=True, slots=True)
class _Fit:
    forward: NDArray[np.float64]
    scale: float
    correlation: float
    uncertainty_deg: float
    used: int
    accel_episodes: int
    brake_episodes: int
    accel_range: float
    problem: str  # empty when the evidence is enough


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = v / float(np.linalg.norm(v))
    return out


def _angle_deg(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def euler_from_rotation(rotation: NDArray[np.float64]) -> tuple[float, float, float]:
    """(roll, pitch, yaw) degrees of a sensor->vehicle rotation ``Rz(yaw) Ry(pitch) Rx(roll)``.

    For people: how the sensor sits in the vehicle (roll 180: upside down).
    """
    r = rotation
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -float(r[2, 0])))))
    roll = math.degrees(math.atan2(float(r[2, 1]), float(r[2, 2])))
    yaw = math.degrees(math.atan2(float(r[1, 0]), float(r[0, 0])))
    return roll, pitch, yaw


def _episodes(times: NDArray[np.float64], gap_s: float = 2.5) -> int:
    """How many separate episodes a sorted list of interval times makes."""
    if len(times) == 0:
        return 0
    return 1 + int(np.count_nonzero(np.diff(np.sort(times)) > gap_s))


class MountingCalibrator:
    """Learns the sensor->vehicle rotation from IMU samples and GNSS/OBD speed.

    Feed every IMU sample (``feed``), every speed report (``feed_motion``)
    and, when known, the engine state (``feed_engine``), in any interleaving
    (each stream in time order).  Read ``state``, ``to_vehicle``, ``status``;
    ``drain_events`` says when it calibrated, verified or noticed a move.
    """

    def __init__(self, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()
        self._events: list[CalibrationEvent] = []
        self._moved_count = 0
        self._last_moved_t: float | None = None
        self._dropped = 0
        self._clear_streams()
        self._clear_estimates()

    # ------------------------------------------------------------------ set-up

    def _clear_streams(self) -> None:
        """Forget buffered samples and reports (not the estimates)."""
        self._cur_k: int | None = None
        self._cur = [0.0] * 11  # n, sum f (3), sum f² (3), n gyro, sum gyro (3)
        self._bins: dict[int, list[float]] = {}
        self._queue: deque[int] = deque()  # completed bins awaiting their motion status
        self._last_k: int | None = None
        self._last_imu_t = -math.inf
        self._mt: list[float] = []  # motion report times, sorted
        self._mv: list[float] = []  # ... and speeds
        self._anchors: dict[str, tuple[float, float, float | None]] = {}
        self._pending_iv: list[tuple[float, float, float, float, float]] = []  # t1 t2 v1 v2 lat
        self._engine: list[tuple[float, bool]] = []
        self._stop: _Stop | None = None
        self._next_stop_id = 0

    def _clear_estimates(self) -> None:
        """Forget every estimate: back to uncalibrated."""
        self._gravity: list[GravityMeasurement] = []
        self._pending_moved: list[GravityMeasurement] = []
        self._intervals: list[tuple[float, ...]] = []
        self._new_intervals = 0
        self._rotation: NDArray[np.float64] | None = None
        self._rt: tuple[float, ...] | None = None  # rotation flattened, for to_vehicle
        self._g = GRAVITY
        self._gyro_bias: NDArray[np.float64] | None = None
        self._verified: bool | None = None
        self._restored = False
        self._calibrated_at: float | None = None
        self._check_from = -math.inf
        self._fit: _Fit | None = None
        self._quality: dict[str, float | int] = {}

    def reset(self) -> None:
        """Start from nothing (a new device, or a mounting known to have changed)."""
        self._clear_streams()
        self._clear_estimates()

    # ------------------------------------------------------------------ feeding

    def feed(self, sample: ImuSample) -> None:
        """One IMU sample (sensor frame, m/s² with gravity, rad/s)."""
        b = self.config.bin_s
        k = math.floor(sample.t / b)
        if k != self._cur_k:
            if self._cur_k is not None and k < self._cur_k:
                self._dropped += 1  # out of order: its bin is closed
                return
            self._close_bin()
            self._cur_k = k
            self._cur = [0.0] * 11
        c = self._cur
        ax, ay, az = sample.ax, sample.ay, sample.az
        c[0] += 1.0
        c[1] += ax
        c[2] += ay
        c[3] += az
        c[4] += ax * ax
        c[5] += ay * ay
        c[6] += az * az
        if sample.gx is not None and sample.gy is not None and sample.gz is not None:
            c[7] += 1.0
            c[8] += sample.gx
            c[9] += sample.gy
            c[10] += sample.gz
        self._last_imu_t = sample.t

    def feed_motion(
        self, t: float, speed_mps: float, source: str = "gnss", *, course_deg: float | None = None
    ) -> None:
        """A speed report (GNSS fix, OBD PID 0D) at time t; the course helps without a gyro."""
        if not (math.isfinite(t) and math.isfinite(speed_mps)) or speed_mps < 0:
            return
        i = bisect_right(self._mt, t)
        self._mt.insert(i, t)
        self._mv.insert(i, speed_mps)
        course = course_deg if course_deg is not None and math.isfinite(course_deg) else None
        anchor = self._anchors.get(source)
        if anchor is None or t - anchor[0] > self.config.max_interval_s:
            self._anchors[source] = (t, speed_mps, course)
        elif t - anchor[0] >= 0.75 * self.config.interval_s:
            t1, v1, c1 = anchor
            lat = math.nan
            if c1 is not None and course is not None and min(v1, speed_mps) > 2.0:
                turn = (course - c1 + 180.0) % 360.0 - 180.0  # degrees, + right
                lat = -(v1 + speed_mps) / 2 * math.radians(turn) / (t - t1)
            self._pending_iv.append((t1, t, v1, speed_mps, lat))
            self._anchors[source] = (t, speed_mps, course)
        self._advance()

    def feed_engine(self, t: float, running: bool) -> None:
        """The engine's state from t on (OBD RPM, ignition line)."""
        if self._engine and self._engine[-1][1] == running:
            return
        insort(self._engine, (t, running))

    # ------------------------------------------------------------------ results

    @property
    def state(self) -> CalibrationState:
        """``uncalibrated``, ``gravity_only`` (up known) or ``calibrated``."""
        if self._rotation is not None:
            return "calibrated"
        return "gravity_only" if self._gravity else "uncalibrated"

    @property
    def rotation(self) -> NDArray[np.float64] | None:
        """Sensor->vehicle rotation (rows: forward, left, up in sensor axes), or None."""
        return None if self._rotation is None else self._rotation.copy()

    @property
    def up(self) -> NDArray[np.float64] | None:
        """The up axis in sensor coordinates once gravity is known."""
        if self._rotation is not None:
            row: NDArray[np.float64] = self._rotation[2].copy()
            return row
        return self._up_estimate()

    def to_vehicle(self, sample: ImuSample) -> VehicleAccel | None:
        """The sample in the vehicle frame, gravity removed; None until calibrated."""
        r = self._rt
        if r is None:
            return None
        ax, ay, az = sample.ax, sample.ay, sample.az
        yaw: float | None = None
        if sample.gx is not None and sample.gy is not None and sample.gz is not None:
            gx, gy, gz = sample.gx, sample.gy, sample.gz
            if self._gyro_bias is not None:
                gx -= float(self._gyro_bias[0])
                gy -= float(self._gyro_bias[1])
                gz -= float(self._gyro_bias[2])
            yaw = r[6] * gx + r[7] * gy + r[8] * gz
        return VehicleAccel(
            t=sample.t,
            lon=r[0] * ax + r[1] * ay + r[2] * az,
            lat=r[3] * ax + r[4] * ay + r[5] * az,
            vert=r[6] * ax + r[7] * ay + r[8] * az - self._g,
            yaw_rate=yaw,
        )

    def drain_events(self) -> list[CalibrationEvent]:
        """Events since the last call (calibrated, gravity, verified, moved, restored)."""
        out, self._events = self._events, []
        return out

    def status(self) -> dict[str, Any]:
        """JSON-able state and quality figures for the status report."""
        state = self.state
        out: dict[str, Any] = {
            "state": state,
            "harsh_source": "imu" if state == "calibrated" else "gnss_obd_fallback",
            "detail": self._detail(),
            "verified": self._verified,
            "restored": self._restored,
            "moved_count": self._moved_count,
            "last_moved_t": self._last_moved_t,
            "stops_used": len(self._gravity),
            "stationary_s": round(sum(g.seconds for g in self._gravity), 1),
            "stationary_samples": sum(g.samples for g in self._gravity),
            "intervals": len(self._intervals),
            "dropped_samples": self._dropped,
            "up_uncertainty_deg": round(self._up_uncertainty_deg(), 2) if self._gravity else None,
        }
        out.update(self._quality)
        if self._rotation is not None:
            roll, pitch, yaw = euler_from_rotation(self._rotation)
            out["mount_deg"] = {
                "roll": round(roll, 1),
                "pitch": round(pitch, 1),
                "yaw": round(yaw, 1),
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-able calibration to persist; ``restore`` takes it back after a restart."""
        if self._rotation is None:
            return {"version": SNAPSHOT_VERSION, "state": self.state, "rotation": None}
        return {
            "version": SNAPSHOT_VERSION,
            "state": "calibrated",
            "rotation": [[float(x) for x in row] for row in self._rotation],
            "gravity_mps2": float(self._g),
            "gyro_bias": None if self._gyro_bias is None else [float(x) for x in self._gyro_bias],
            "quality": dict(self._quality),
            "moved_count": self._moved_count,
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Use a persisted calibration at once; it is verified at the next stops.

        Raises ValueError for a snapshot that is not a valid calibration
        (the caller logs it and calibrates from scratch).
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"calibration snapshot version {snapshot.get('version')!r} unknown")
        self.reset()
        rows = snapshot.get("rotation")
        if snapshot.get("state") != "calibrated" or rows is None:
            return
        try:
            r = np.array(rows, dtype=float)
            g = float(snapshot.get("gravity_mps2", GRAVITY))
            bias_raw = snapshot.get("gyro_bias")
            bias = None if bias_raw is None else np.array(bias_raw, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"calibration snapshot unreadable: {exc}") from None
        if r.shape != (3, 3) or not np.all(np.isfinite(r)):
            raise ValueError("calibration snapshot: rotation is not a 3x3 matrix")
        u, _s, vt = np.linalg.svd(r)
        nearest = u @ vt
        if np.linalg.det(nearest) < 0 or not np.allclose(nearest, r, atol=1e-3):
            raise ValueError("calibration snapshot: rotation is not a rotation")
        tol = self.config.gravity_tolerance
        if not (1 - tol) * GRAVITY <= g <= (1 + tol) * GRAVITY:
            raise ValueError(f"calibration snapshot: gravity {g:.2f} m/s² is implausible")
        if bias is not None and (bias.shape != (3,) or not np.all(np.isfinite(bias))):
            raise ValueError("calibration snapshot: gyro_bias is not 3 numbers")
        self._set_rotation(r if np.allclose(nearest, r, atol=1e-12) else nearest)
        self._g = g
        self._gyro_bias = bias
        quality = snapshot.get("quality") or {}
        self._quality = {
            k: v for k, v in quality.items() if isinstance(v, int | float) and math.isfinite(v)
        }
        moved = snapshot.get("moved_count", 0)
        self._moved_count = moved if isinstance(moved, int) else 0
        self._restored = True
        self._verified = False
        self._events.append(CalibrationEvent(None, "restored", "persisted rotation in use"))

    # ------------------------------------------------------------------ bins and stops

    def _close_bin(self) -> None:
        if self._cur_k is not None and self._cur[0] > 0:
            self._bins[self._cur_k] = self._cur
            self._queue.append(self._cur_k)
            self._advance()

    def _advance(self) -> None:
        """Consume every bin whose motion is known, then any interval the IMU covers."""
        while self._queue:
            k = self._queue[0]
            status = self._bin_status(k)
            if status is None:
                break
            self._queue.popleft()
            self._consume(k, status, self._bins[k])
        self._intervals_ready()
        self._prune()

    def _bin_status(self, k: int) -> Literal["stopped", "moving", "unknown"] | None:
        """Whether the vehicle was stopped during bin k; None until a later report says."""
        cfg = self.config
        t0, t1 = k * cfg.bin_s, (k + 1) * cfg.bin_s
        mt = self._mt
        j = bisect_left(mt, t1)
        if j == len(mt):
            return "unknown" if self._last_imu_t - t1 > cfg.motion_timeout_s else None
        i = bisect_right(mt, t0) - 1
        if i < 0 or mt[j] - mt[i] > cfg.max_report_gap_s:
            return "unknown"
        limit = cfg.stop_speed_mps
        return "stopped" if all(v < limit for v in self._mv[i : j + 1]) else "moving"

    def _engine_at(self, t: float) -> bool | None:
        i = bisect_right(self._engine, (t, True)) - 1
        return self._engine[i][1] if i >= 0 else None

    def _consume(self, k: int, status: str, acc: list[float]) -> None:
        cfg = self.config
        contiguous = self._last_k is not None and k == self._last_k + 1
        self._last_k = k
        if self._stop is not None and (status != "stopped" or not contiguous):
            self._close_stop()
        if status != "stopped":
            return
        if self._stop is None:
            self._stop = _Stop(self._next_stop_id, k * cfg.bin_s)
            self._next_stop_id += 1
        stop = self._stop
        stop.bins += 1
        if stop.bins <= round(cfg.stop_settle_s / cfg.bin_s):
            return
        stop.tail.append((k, acc))
        if len(stop.tail) > round(cfg.stop_tail_s / cfg.bin_s):
            kk, a = stop.tail.popleft()
            self._chunk_add(stop, kk, a)

    def _chunk_add(self, stop: _Stop, k: int, acc: list[float]) -> None:
        cfg = self.config
        if stop.chunk_bins == 0:
            stop.chunk_t0 = k * cfg.bin_s
        if cfg.engine_on_only and self._engine_at((k + 0.5) * cfg.bin_s) is False:
            stop.chunk_bad = True
        c = stop.chunk
        for i in range(11):
            c[i] += acc[i]
        stop.chunk_bins += 1
        if stop.chunk_bins < round(cfg.chunk_s / cfg.bin_s):
            return
        n = c[0]
        if not stop.chunk_bad and n >= 5:
            mean = (c[1] / n, c[2] / n, c[3] / n)
            var = max(c[4] / n - mean[0] ** 2, c[5] / n - mean[1] ** 2, c[6] / n - mean[2] ** 2)
            if var <= cfg.still_std_mps2**2:
                ng = c[7]
                gyro = (c[8] / ng, c[9] / ng, c[10] / ng) if ng > 0 else (math.nan,) * 3
                stop.chunks.append((*mean, n, *gyro, stop.chunk_t0))
        stop.chunk = [0.0] * 11
        stop.chunk_bins = 0
        stop.chunk_bad = False
        if len(stop.chunks) * cfg.chunk_s >= cfg.max_stop_s:
            self._measure(stop, (k + 1) * cfg.bin_s)
            stop.chunks = []

    def _close_stop(self) -> None:
        stop = self._stop
        self._stop = None
        if stop is not None and stop.chunks:
            end = stop.chunks[-1][7] + self.config.chunk_s
            self._measure(stop, end)

    def _measure(self, stop: _Stop, t_end: float) -> None:
        """One gravity measurement from a stop's still chunks, robust to a jolt or two."""
        cfg = self.config
        data = np.array(stop.chunks)
        means = data[:, 0:3]
        keep = np.linalg.norm(means - np.median(means, axis=0), axis=1) <= cfg.chunk_outlier_mps2
        if keep.sum() * cfg.chunk_s < cfg.min_stop_s:
            return
        weights = data[keep, 3]
        vec = (means[keep] * weights[:, None]).sum(axis=0) / weights.sum()
        magnitude = float(np.linalg.norm(vec))
        if abs(magnitude / GRAVITY - 1) > cfg.gravity_tolerance:
            return
        up = vec / magnitude
        angles = [_angle_deg(m, up) for m in means[keep]]
        gyro_rows = data[keep, 4:7]
        gyro_rows = gyro_rows[np.all(np.isfinite(gyro_rows), axis=1)]
        gyro = tuple(float(x) for x in gyro_rows.mean(axis=0)) if len(gyro_rows) else None
        m = GravityMeasurement(
            t_start=float(data[keep, 7].min()),
            t_end=t_end,
            stop_id=stop.stop_id,
            up=(float(up[0]), float(up[1]), float(up[2])),
            magnitude=magnitude,
            seconds=float(keep.sum() * cfg.chunk_s),
            samples=int(weights.sum()),
            spread_deg=float(np.sqrt(np.mean(np.square(angles)))),
            gyro=(gyro[0], gyro[1], gyro[2]) if gyro is not None else None,
        )
        self._on_gravity(m)

    # ------------------------------------------------------------------ gravity

    def _up_estimate(self) -> NDArray[np.float64] | None:
        if not self._gravity:
            return None
        w = np.array([min(g.seconds, self.config.max_stop_s) for g in self._gravity])
        ups = np.array([g.up for g in self._gravity])
        return _unit((ups * w[:, None]).sum(axis=0))

    def _up_uncertainty_deg(self) -> float:
        """Angular standard error of up: the stops' scatter, but at least a road's tilt per stop."""
        up = self._up_estimate() if self._rotation is None else self._rotation[2]
        n = len(self._gravity)
        if up is None or n == 0:
            return math.nan
        floor = self.config.stop_tilt_deg / math.sqrt(n)
        if n < 2:
            return max(floor, self._gravity[0].spread_deg)
        angles = np.array([_angle_deg(np.array(g.up), up) for g in self._gravity])
        return max(floor, float(np.sqrt(np.mean(angles**2) / (n - 1))))

    def _on_gravity(self, m: GravityMeasurement) -> None:
        cfg = self.config
        if m.gyro is not None:
            bias = np.array(m.gyro)
            self._gyro_bias = (
                bias if self._gyro_bias is None else 0.8 * self._gyro_bias + 0.2 * bias
            )
        ref = self._rotation[2] if self._rotation is not None else self._up_estimate()
        if ref is None:
            self._accept_gravity(m)
            return
        up = np.array(m.up)
        off = _angle_deg(up, ref)
        if off <= cfg.moved_threshold_deg:
            self._pending_moved.clear()
            if self._rotation is None:
                self._accept_gravity(m)
            elif not self._verified:
                self._verified = True
                self._events.append(
                    CalibrationEvent(m.t_end, "verified", f"gravity at a stop within {off:.1f}°")
                )
            return
        self._pending_moved.append(m)
        while _angle_deg(np.array(self._pending_moved[0].up), up) > cfg.moved_agree_deg:
            self._pending_moved.pop(0)
        if len({p.stop_id for p in self._pending_moved}) >= cfg.moved_stops:
            pending = list(self._pending_moved)
            since = pending[0].t_start
            kept = [iv for iv in self._intervals if iv[_T1] >= since]  # the new mounting's
            why = f"gravity {off:.1f}° away from up at {len(pending)} stops"
            if self._rotation is not None:
                self._moved(m.t_end, why)
            else:
                # Not calibrated yet: the earlier stops were tilted or the device moved
                # before anything was claimed.  Start the estimate again, report no move.
                moved, last = self._moved_count, self._last_moved_t
                self._clear_estimates()
                self._moved_count, self._last_moved_t = moved, last
                self._events.append(CalibrationEvent(m.t_end, "gravity", f"re-estimated: {why}"))
            self._intervals = kept
            for p in pending:
                self._accept_gravity(p)

    def _accept_gravity(self, m: GravityMeasurement) -> None:
        first = not self._gravity
        self._gravity.append(m)
        del self._gravity[: -self.config.max_gravity]
        if first and self._rotation is None:
            self._events.append(
                CalibrationEvent(m.t_end, "gravity", f"up from a {m.seconds:.0f} s stop")
            )

    def _moved(self, t: float, why: str) -> None:
        """The mounting moved: every estimate goes, the calibration starts again."""
        moved = self._moved_count + 1
        self._clear_estimates()
        self._moved_count, self._last_moved_t = moved, t
        self._events.append(CalibrationEvent(t, "moved", f"{why}; recalibrating"))

    # ------------------------------------------------------------------ forward axis

    def _intervals_ready(self) -> None:
        """Turn speed-report pairs into (dv/dt, IMU mean) intervals once the IMU covers them."""
        if not self._pending_iv:
            return
        b = self.config.bin_s
        waiting = []
        for iv in self._pending_iv:
            t1, t2, v1, v2, lat = iv
            if self._last_imu_t < t2 + b:
                waiting.append(iv)
                continue
            k0, k1 = math.ceil(t1 / b - 0.5), math.floor(t2 / b - 0.5)
            sums = np.zeros(11)
            present = 0
            for k in range(k0, k1 + 1):
                acc = self._bins.get(k)
                if acc is None and k == self._cur_k:
                    acc = self._cur
                if acc is not None:
                    sums += acc
                    present += 1
            if k1 < k0 or present < 0.8 * (k1 - k0 + 1) or sums[0] == 0:
                continue
            n, ng = sums[0], sums[7]
            gyro = sums[8:11] / ng if ng > 0 else np.full(3, math.nan)
            self._intervals.append(
                (
                    t1,
                    t2,
                    (v2 - v1) / (t2 - t1),
                    max(v1, v2),
                    (v1 + v2) / 2,
                    *(sums[1:4] / n).tolist(),
                    *gyro.tolist(),
                    lat,
                )
            )
            self._new_intervals += 1
        self._pending_iv = waiting
        del self._intervals[: -self.config.max_intervals]
        self._maybe_solve()

    def _maybe_solve(self) -> None:
        cfg = self.config
        if self._rotation is None:
            if self._new_intervals >= cfg.solve_every and len(self._gravity) >= cfg.gravity_stops:
                self._new_intervals = 0
                self._solve()
        elif self._new_intervals >= cfg.check_every:
            self._new_intervals = 0
            self._check_forward()

    def _fitted(self, rows: NDArray[np.float64], up: NDArray[np.float64]) -> _Fit | None:
        """Regress the horizontal specific force on dv/dt over straight, moving intervals."""
        cfg = self.config
        if len(rows) == 0:
            return None
        force = rows[:, _FX : _FZ + 1]
        gyro = rows[:, _GX : _GZ + 1]
        if self._gyro_bias is not None:
            gyro = gyro - self._gyro_bias
        lat = rows[:, _VMEAN] * (gyro @ up)
        lat = np.where(np.isfinite(lat), lat, rows[:, _LATC])
        straight = np.where(np.isfinite(lat), np.abs(lat) <= cfg.straight_lat_mps2, True)
        sel = (rows[:, _VMAX] >= cfg.min_speed_mps) & straight
        if sel.sum() < 3:
            return None
        a = rows[sel, _A]
        t = rows[sel, _T1]
        f = force[sel]
        h = f - np.outer(f @ up, up)
        keep = np.ones(len(a), dtype=bool)
        w = np.zeros(3)
        for _ in range(3):
            ac = a[keep] - a[keep].mean()
            hc = h[keep] - h[keep].mean(axis=0)
            sxx = float(ac @ ac)
            if sxx <= 1e-9:
                return None
            w = (ac @ hc) / sxx
            resid = np.linalg.norm(
                h - h[keep].mean(axis=0) - np.outer(a - a[keep].mean(), w), axis=1
            )
            limit = max(3.0 * 1.4826 * float(np.median(resid[keep])), 0.15)
            keep = resid <= limit
            if keep.sum() < 3:
                return None
        ac = a[keep] - a[keep].mean()
        hc = h[keep] - h[keep].mean(axis=0)
        sxx = float(ac @ ac)
        w = (ac @ hc) / sxx
        scale = float(np.linalg.norm(w))
        if scale <= 1e-9:
            return None
        forward = w / scale
        left = np.cross(up, forward)
        along = hc @ forward
        perp = (hc - np.outer(ac, w)) @ left
        dof = max(1, int(keep.sum()) - 2)
        sigma = math.sqrt(float(perp @ perp) / dof)
        uncertainty = math.degrees(math.atan2(sigma, scale * math.sqrt(sxx)))
        corr = float(np.corrcoef(ac, along)[0, 1]) if np.std(along) > 0 else 0.0
        a_kept, t_kept = a[keep], t[keep]
        ep = cfg.episode_accel_mps2
        fit = _Fit(
            forward=forward,
            scale=scale,
            correlation=corr,
            uncertainty_deg=uncertainty,
            used=int(keep.sum()),
            accel_episodes=_episodes(t_kept[a_kept >= ep]),
            brake_episodes=_episodes(t_kept[a_kept <= -ep]),
            accel_range=float(a_kept.max() - a_kept.min()),
            problem="",
        )
        return _with_problem(fit, cfg)

    def _solve(self) -> None:
        up = self._up_estimate()
        if up is None or not self._intervals:
            return
        fit = self._fitted(np.array(self._intervals), up)
        self._fit = fit
        if fit is None or fit.problem:
            return
        left = _unit(np.cross(up, fit.forward))
        forward = np.cross(left, up)
        self._set_rotation(np.vstack([forward, left, up]))
        self._g = float(np.mean([g.magnitude for g in self._gravity]))
        up_unc = self._up_uncertainty_deg()
        self._quality = {
            "forward_uncertainty_deg": round(fit.uncertainty_deg, 2),
            "calibration_up_uncertainty_deg": round(up_unc, 2),
            "angle_uncertainty_deg": round(math.hypot(fit.uncertainty_deg, up_unc), 2),
            "intervals_used": fit.used,
            "accel_episodes": fit.accel_episodes,
            "brake_episodes": fit.brake_episodes,
            "scale": round(fit.scale, 3),
            "correlation": round(fit.correlation, 3),
            "samples_used": sum(g.samples for g in self._gravity),
        }
        t = float(self._intervals[-1][_T2])
        self._calibrated_at = t
        self._check_from = t
        self._verified = True
        self._events.append(
            CalibrationEvent(
                t,
                "calibrated",
                f"±{self._quality['angle_uncertainty_deg']}° from {len(self._gravity)} stops "
                f"and {fit.used} intervals",
            )
        )

    def _check_forward(self) -> None:
        """Once calibrated: does fresh data still put forward where we think (a turn about up)?"""
        rot = self._rotation
        if rot is None or not self._intervals:
            return
        since = max(self._check_from, self._intervals[-1][_T2] - self.config.check_window_s)
        fresh = [iv for iv in self._intervals if iv[_T1] >= since]
        fit = self._fitted(np.array(fresh), rot[2]) if fresh else None
        if fit is None or fit.problem:
            return
        off = math.degrees(
            math.atan2(
                float(np.dot(np.cross(rot[0], fit.forward), rot[2])), float(rot[0] @ fit.forward)
            )
        )
        if abs(off) > self.config.moved_threshold_deg:
            t = float(fresh[-1][_T2])
            self._moved(t, f"forward axis {off:+.1f}° about up from the calibration")

    def _set_rotation(self, r: NDArray[np.float64]) -> None:
        self._rotation = r
        self._rt = tuple(float(x) for x in r.reshape(-1))

    # ------------------------------------------------------------------ housekeeping

    def _prune(self) -> None:
        """Drop bins and reports nobody needs any more (bounded memory on long drives)."""
        cfg = self.config
        # Speed reports keep coming when the IMU is silent (none fitted, or it
        # died): what it has not covered within silent_imu_s never will be.
        newest = self._mt[-1] if self._mt else -math.inf
        imu_t = max(self._last_imu_t, newest - cfg.silent_imu_s)
        if self._pending_iv and self._pending_iv[0][1] < imu_t - cfg.retain_s:
            self._pending_iv = [iv for iv in self._pending_iv if iv[1] >= imu_t - cfg.retain_s]
        horizon = imu_t - cfg.retain_s
        if self._queue:
            horizon = min(horizon, self._queue[0] * cfg.bin_s)
        for iv in self._pending_iv:
            horizon = min(horizon, iv[0] - cfg.bin_s)
        if len(self._bins) > 2 * cfg.retain_s / cfg.bin_s:
            floor_k = math.floor(horizon / cfg.bin_s)
            for k in [k for k in self._bins if k < floor_k]:
                del self._bins[k]
        if len(self._mt) > 400:
            cut = bisect_left(self._mt, horizon - 2 * cfg.max_report_gap_s)
            cut = min(cut, len(self._mt) - 2)
            if cut > 0:
                del self._mt[:cut]
                del self._mv[:cut]
        if len(self._engine) > 100:
            del self._engine[:-50]

    def _detail(self) -> str:
        state = self.state
        fallback = "harsh events from GNSS/OBD speed meanwhile"
        if state == "calibrated":
            text = (
                f"calibrated ±{self._quality.get('angle_uncertainty_deg', '?')}°; "
                "harsh events from the IMU"
            )
            if self._restored and not self._verified:
                text += " (restored, to be verified at the next stop)"
            return text
        if state == "uncalibrated":
            if not self._mt:
                return f"no GNSS/OBD speed yet, cannot tell a stop; {fallback}"
            return f"waiting for a still stop to measure gravity; {fallback}"
        if len(self._gravity) < self.config.gravity_stops:
            return f"gravity from 1 stop, waiting for another; {fallback}"
        fit = self._fit
        need = fit.problem if fit is not None else "waiting for driving data"
        return f"gravity known; forward axis: {need}; {fallback}"


def _with_problem(fit: _Fit, cfg: CalibrationConfig) -> _Fit:
    """The fit with the first missing piece of evidence named (empty: enough)."""
    lo, hi = cfg.scale_range
    problems = []
    if fit.used < cfg.min_intervals:
        problems.append(f"{fit.used}/{cfg.min_intervals} straight intervals")
    if fit.accel_episodes < cfg.min_episodes or fit.brake_episodes < cfg.min_episodes:
        problems.append(
            f"{fit.accel_episodes} accelerations and {fit.brake_episodes} brakings "
            f"of {cfg.min_episodes} each"
        )
    if fit.accel_range < cfg.min_accel_range_mps2:
        problems.append(f"dv/dt range {fit.accel_range:.1f}/{cfg.min_accel_range_mps2} m/s²")
    if not lo <= fit.scale <= hi:
        problems.append(f"scale {fit.scale:.2f} outside {lo}-{hi} (clocks aligned?)")
    if fit.correlation < cfg.min_correlation:
        problems.append(f"correlation {fit.correlation:.2f} < {cfg.min_correlation}")
    if fit.uncertainty_deg > cfg.max_uncertainty_deg:
        problems.append(f"±{fit.uncertainty_deg:.1f}° > {cfg.max_uncertainty_deg}°")
    if not problems:
        return fit
    return _Fit(
        fit.forward,
        fit.scale,
        fit.correlation,
        fit.uncertainty_deg,
        fit.used,
        fit.accel_episodes,
        fit.brake_episodes,
        fit.accel_range,
        "; ".join(problems),
    )
