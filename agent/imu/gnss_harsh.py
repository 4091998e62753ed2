"""Harsh events without an IMU: from the GNSS or OBD speed and the GNSS course.

Used when there is no IMU, or before the mounting is calibrated.  The same
classes, thresholds and :class:`HarshDetection` as :mod:`agent.imu.harsh`,
with ``source`` "gnss" or "obd" and confidence ``low``:

* **Longitudinal**: the speed's derivative, the least-squares slope over
  ``window_s`` (1 s for 1 Hz GNSS: the difference of two Doppler speeds,
  whose noise of ~0.1 m/s makes ~0.2 m/s² of slope noise; 1.5 s for 2 Hz OBD,
  whose 1 km/h steps would make 0.56 m/s² of noise over 0.5 s).
* **Cornering**: lateral acceleration = speed × yaw rate, the yaw rate being
  the course's rate of change over the same window, unwrapped across
  359°->0° (course is clockwise, yaw counter-clockwise: a left turn has the
  course decreasing and positive yaw).  Course is ignored below
  ``course_min_speed_kmh``, where receivers report noise; OBD has no course,
  so OBD gives longitudinal events only.

An event spans the windows whose value stayed above the end threshold, so
it starts at the first speed sample of the first such window and ends at the
last sample of the last one; its speeds are those samples' speeds.

What a receiver can see: at 1 Hz the derivative is a 1 s average, so a
0.5 s stab on the brake at 5 m/s² reads 2.5 m/s² and a bump reads nothing;
only manoeuvres lasting about 1.5 s or more (two epochs) are measured at
their real level.  Peaks are averages over the window, lower than an
IMU's, hence the low confidence.  A gap over ``max_gap_s`` restarts.

Pure and deterministic: times are the speed samples' own seconds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

from agent.imu.harsh import (
    ClassThresholds,
    Direction,
    HarshConfig,
    HarshDetection,
    HarshKind,
    SpeedTrack,
)
from agent.trips.stops import KMH_PER_MPS

_WINDOW = {"gnss": 1.0, "obd": 1.5}


@dataclass(slots=True)
class _Run:
    """Consecutive windows above a channel's end threshold."""

    t_start: float
    t_end: float
    values: list[float] = field(default_factory=list)
    triggered: bool = False


class _GChannel:
    def __init__(self, kind: HarshKind, direction: Direction | None, th: ClassThresholds) -> None:
        self.kind = kind
        self.direction = direction
        self.th = th
        self.run: _Run | None = None

    def step(self, t_a: float, t_b: float, x: float | None) -> _Run | None:
        """One window [t_a, t_b] with value ``x``; return a finished run."""
        if x is None or x < self.th.end_threshold:
            done, self.run = self.run, None
            return done
        if self.run is None:
            self.run = _Run(t_a, t_b)
        self.run.t_end = t_b
        self.run.values.append(x)
        if x >= self.th.threshold:
            self.run.triggered = True
        return None


def _wrap_deg(d: float) -> float:
    """A course difference in (-180, 180]."""
    d = math.fmod(d, 360.0)
    if d > 180.0:
        d -= 360.0
    elif d <= -180.0:
        d += 360.0
    return d


class GnssHarshDetector:
    """Harsh events from speed (and course) samples; see the module docstring."""

    def __init__(
        self,
        config: HarshConfig | None = None,
        *,
        source: str = "gnss",
        window_s: float | None = None,
        course_min_speed_kmh: float = 10.0,
        max_gap_s: float = 3.0,
    ) -> None:
        if source not in _WINDOW:
            raise ValueError(f"source must be gnss or obd, not {source!r}")
        self.config = c = config or HarshConfig()
        self.source = "gnss" if source == "gnss" else "obd"
        self.window_s = _WINDOW[source] if window_s is None else window_s
        self.course_min_mps = course_min_speed_kmh / KMH_PER_MPS
        self.max_gap_s = max_gap_s
        self.speed = SpeedTrack(max_age_s=max(2 * self.window_s, 2.0))
        self._buf: deque[tuple[float, float, float | None]] = deque()
        self._channels = (
            _GChannel("harsh_acceleration", None, c.acceleration),
            _GChannel("harsh_braking", None, c.braking),
            _GChannel("harsh_cornering", "left", c.cornering),
            _GChannel("harsh_cornering", "right", c.cornering),
        )

    def feed(
        self, t: float, speed_mps: float, course_deg: float | None = None
    ) -> list[HarshDetection]:
        """One speed sample (m/s) with the course (degrees from north) when known."""
        out: list[HarshDetection] = []
        if not math.isfinite(speed_mps) or speed_mps < 0:
            return out
        if course_deg is not None and not math.isfinite(course_deg):
            course_deg = None
        buf = self._buf
        if buf and t <= buf[-1][0]:
            return out
        if buf and t - buf[-1][0] > self.max_gap_s:
            self._close_all(out)
            buf.clear()
        buf.append((t, speed_mps, course_deg))
        self.speed.add(t, speed_mps, "gnss" if self.source == "gnss" else "obd")
        while buf[0][0] < t - self.window_s - 1e-6:
            buf.popleft()
        if len(buf) < 2:
            return out
        t_a = buf[0][0]
        lon = self._slope()
        lat = self._lateral()
        acc, brake, left, right = self._channels
        for ch, x in (
            (acc, lon),
            (brake, -lon),
            (left, lat),
            (right, None if lat is None else -lat),
        ):
            run = ch.step(t_a, t, x)
            if run is not None:
                self._judge(ch, run, out)
        return out

    def flush(self) -> list[HarshDetection]:
        """End of the stream: close runs still open."""
        out: list[HarshDetection] = []
        self._close_all(out)
        return out

    def _close_all(self, out: list[HarshDetection]) -> None:
        for ch in self._channels:
            run, ch.run = ch.run, None
            if run is not None:
                self._judge(ch, run, out)

    def _slope(self) -> float:
        """Least-squares d(speed)/dt over the window, m/s²."""
        buf = self._buf
        n = len(buf)
        mt = sum(s[0] for s in buf) / n
        mv = sum(s[1] for s in buf) / n
        num = sum((s[0] - mt) * (s[1] - mv) for s in buf)
        den = sum((s[0] - mt) ** 2 for s in buf)
        return num / den if den > 0 else 0.0

    def _lateral(self) -> float | None:
        """Speed × yaw rate over the window (+ left), None without a usable course."""
        ok = [s for s in self._buf if s[2] is not None and s[1] >= self.course_min_mps]
        if len(ok) < 2 or ok[-1][0] - ok[0][0] <= 0:
            return None
        turned = 0.0
        for (_, _, c0), (_, _, c1) in pairwise(ok):
            assert c0 is not None and c1 is not None
            turned += _wrap_deg(c1 - c0)
        yaw = -math.radians(turned) / (ok[-1][0] - ok[0][0])
        v = sum(s[1] for s in ok) / len(ok)
        return v * yaw

    def _judge(self, ch: _GChannel, run: _Run, out: list[HarshDetection]) -> None:
        if not run.triggered or run.t_end - run.t_start + 1e-9 < ch.th.min_duration_s:
            return
        v0 = self.speed.at(run.t_start)
        v1 = self.speed.at(run.t_end)
        vmax = self.speed.max_between(run.t_start, run.t_end)
        known = [v for v in (v0, v1, vmax) if v is not None]
        if known and max(known) * KMH_PER_MPS < ch.th.min_speed_kmh:
            return
        out.append(
            HarshDetection(
                kind=ch.kind,
                direction=ch.direction,
                t_start=run.t_start,
                t_end=run.t_end,
                peak=max(run.values),
                mean=sum(run.values) / len(run.values),
                speed_start_kmh=None if v0 is None else v0 * KMH_PER_MPS,
                speed_end_kmh=None if v1 is None else v1 * KMH_PER_MPS,
                source="gnss" if self.source == "gnss" else "obd",
                confidence="low",
            )
        )
