"""Harsh acceleration, braking and cornering from vehicle-frame acceleration.

Input is :class:`VehicleAccel` (calibrated: x forward, y left, gravity
removed) plus the vehicle speed from GNSS or OBD when there is one.  Four
channels are watched: ``lon`` (harsh_acceleration), ``-lon``
(harsh_braking), ``lat`` (harsh_cornering, left) and ``-lat``
(harsh_cornering, right).

Per class there is a threshold (m/s²), an end threshold below it
(hysteresis: a driver hovering at the threshold makes one event, not a
burst), a minimum time above the threshold and a minimum speed.

* **Filtering.**  A centred moving average of ``smoothing_s`` (0.3 s) runs
  over lon and lat first.  Road bumps and potholes are 20–100 ms spikes and
  engine vibration is 20–100 Hz; a 0.3 s average cuts an 80 ms, 6 m/s² bump
  to 1.6 m/s² while a real manoeuvre (0.5–4 s) keeps its full peak.  At
  50–200 Hz this is 15–60 samples.  Reported times are corrected for the
  filter's delay of ``smoothing_s / 2``.
* **Extent.**  An event runs from where the filtered signal rose above the
  end threshold to where it fell back below it, so its duration is the
  manoeuvre's, not the part above the trigger; it counts when the signal
  spent ``min_duration_s`` above the threshold (crossings interpolated
  between samples, so the rate does not change it).  A gap in the samples
  longer than ``max_gap_s`` ends an event at its last sample.
* **Speed.**  The speed at the start and end comes from the latest GNSS/OBD
  speed no older than ``speed_max_age_s``.  When a speed is known the
  minimum-speed rule applies to the larger of the speeds seen over the event
  (a hard take-off from a standstill starts at 0 km/h but is past 10 km/h a
  second later; a hard stop ends at 0).  When no speed is known (no GNSS or
  OBD, or it went stale: a tunnel) the event is *not* dropped: it is emitted
  with speeds None and confidence ``medium``, because an IMU-only install must
  still see a harsh brake; with a speed it is ``high``.

Pure and deterministic: times are the samples' own seconds.  The runtime
turns a :class:`HarshDetection` into an event with :func:`harsh_event`,
adding UTC time, position and heading at the edge.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from agent.imu.sample import GRAVITY, VehicleAccel
from agent.messages import EventData, utc_iso
from agent.trips.stops import KMH_PER_MPS, event

HarshKind = Literal["harsh_acceleration", "harsh_braking", "harsh_cornering"]
Direction = Literal["left", "right"]
SpeedSource = Literal["gnss", "obd"]
Source = Literal["imu", "gnss", "obd"]
Confidence = Literal["high", "medium", "low"]


@dataclass(frozen=True, slots=True)
class ClassThresholds:
    """When one class of event starts, ends and counts."""

    threshold: float  # m/s², start when the filtered value exceeds it
    end_threshold: float  # m/s², end when it falls below (hysteresis)
    min_duration_s: float = 0.1  # time above ``threshold`` to count
    min_speed_kmh: float = 0.0  # applied when a speed is known

    def __post_init__(self) -> None:
        if not 0 < self.end_threshold <= self.threshold:
            raise ValueError("need 0 < end_threshold <= threshold")
        if self.min_duration_s < 0 or self.min_speed_kmh < 0:
            raise ValueError("min_duration_s and min_speed_kmh must be >= 0")


def _cls(threshold: float, min_speed_kmh: float, ratio: float = 0.75) -> ClassThresholds:
    return ClassThresholds(threshold, round(threshold * ratio, 2), 0.1, min_speed_kmh)


@dataclass(frozen=True, slots=True)
class HarshConfig:
    """Thresholds per class and the shared filtering; ``van`` are the defaults."""

    acceleration: ClassThresholds = field(default_factory=lambda: _cls(2.5, 10.0))
    braking: ClassThresholds = field(default_factory=lambda: _cls(2.7, 10.0))
    cornering: ClassThresholds = field(default_factory=lambda: _cls(3.4, 30.0))
    smoothing_s: float = 0.3  # centred moving average over lon/lat
    speed_max_age_s: float = 3.0  # older speed counts as unknown
    max_gap_s: float = 0.5  # a longer gap in samples ends events, restarts the filter

    def __post_init__(self) -> None:
        if self.smoothing_s < 0 or self.speed_max_age_s <= 0 or self.max_gap_s <= 0:
            raise ValueError("smoothing_s >= 0, speed_max_age_s > 0 and max_gap_s > 0")


# Presets, m/s².  Commercial trackers ship per-vehicle-class sensitivity
# profiles rather than one number (Samsara: passenger car / light truck /
# heavy duty; Geotab and Teltonika: per-device thresholds in g or m/s²), and
# their light-vehicle defaults sit around 0.25-0.4 g; heavy-vehicle profiles
# are roughly a third lower.  Why: a car can brake at 0.8-1 g and corner at
# 0.8 g, so 0.3-0.4 g is deliberate driving; a loaded van brakes and corners
# less and carries load that shifts; a laden heavy goods vehicle rolls over
# at 0.3-0.4 g lateral (its static stability factor) and cannot accelerate at
# 0.25 g at all, so its warning levels must be well below a car's.  The
# figures below follow that ratio; a fleet tunes them per vehicle in config.
PRESETS: dict[str, HarshConfig] = {
    "car": HarshConfig(
        acceleration=_cls(2.9, 10.0), braking=_cls(3.1, 10.0), cornering=_cls(3.9, 30.0)
    ),
    "van": HarshConfig(),
    "truck": HarshConfig(
        acceleration=_cls(1.8, 10.0), braking=_cls(2.2, 10.0), cornering=_cls(2.5, 30.0)
    ),
}


def preset(name: str) -> HarshConfig:
    """The preset called ``name`` (car, van, truck)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown harsh preset {name!r}: one of {sorted(PRESETS)}") from None


@dataclass(frozen=True, slots=True)
class HarshDetection:
    """One harsh manoeuvre; times are seconds on the samples' clock."""

    kind: HarshKind
    direction: Direction | None  # cornering only
    t_start: float
    t_end: float
    peak: float  # m/s², magnitude (braking and right turns reported positive)
    mean: float  # m/s², over the event
    speed_start_kmh: float | None
    speed_end_kmh: float | None
    source: Source = "imu"
    confidence: Confidence = "high"

    @property
    def duration_s(self) -> float:
        return self.t_end - self.t_start


def harsh_event_data(
    det: HarshDetection, ts_start: datetime, heading_deg: float | None = None
) -> dict[str, Any]:
    """The event's ``data``: what a fleet manager reads, in documented units."""
    data: dict[str, Any] = {
        "start": utc_iso(ts_start),
        "duration_s": round(det.duration_s, 2),
        "peak_mps2": round(det.peak, 2),
        "peak_g": round(det.peak / GRAVITY, 3),
        "mean_mps2": round(det.mean, 2),
        "speed_start_kmh": None if det.speed_start_kmh is None else round(det.speed_start_kmh, 1),
        "speed_end_kmh": None if det.speed_end_kmh is None else round(det.speed_end_kmh, 1),
        "heading_deg": None if heading_deg is None else round(heading_deg % 360.0, 1),
        "source": det.source,
        "confidence": det.confidence,
    }
    if det.direction is not None:
        data["direction"] = det.direction
    return data


def harsh_event(
    det: HarshDetection,
    ts_start: datetime,
    lat: float | None = None,
    lon: float | None = None,
    heading_deg: float | None = None,
) -> EventData:
    """``harsh_acceleration`` / ``harsh_braking`` / ``harsh_cornering`` at the event's start."""
    pos = None if lat is None or lon is None else (lat, lon)
    return event(det.kind, ts_start, pos, harsh_event_data(det, ts_start, heading_deg))


class SpeedTrack:
    """Recent speed samples: the speed at a time, None when unknown or stale."""

    def __init__(self, max_age_s: float, keep_s: float = 30.0) -> None:
        self.max_age_s = max_age_s
        self.keep_s = keep_s
        self.ever = False  # any speed ever fed
        self._buf: deque[tuple[float, float, SpeedSource]] = deque()

    def add(self, t: float, speed_mps: float, source: SpeedSource) -> None:
        if speed_mps != speed_mps or speed_mps < 0:  # NaN or negative: not a speed
            return
        if self._buf and t < self._buf[-1][0]:
            return  # out of order: keep the track monotonic
        self.ever = True
        self._buf.append((t, speed_mps, source))
        while self._buf and self._buf[0][0] < t - self.keep_s:
            self._buf.popleft()

    def at(self, t: float) -> float | None:
        """Speed (m/s) at ``t``: interpolated between samples, else the latest not too old."""
        before: tuple[float, float, SpeedSource] | None = None
        after: tuple[float, float, SpeedSource] | None = None
        for s in reversed(self._buf):
            if s[0] <= t:
                before = s
                break
            after = s
        if before is None:
            if after is not None and after[0] - t <= self.max_age_s:
                return after[1]
            return None
        if t - before[0] > self.max_age_s and (after is None or after[0] - t > self.max_age_s):
            return None
        if after is None:
            return before[1]
        span = after[0] - before[0]
        if span <= 0 or span > 2 * self.max_age_s:
            return before[1] if t - before[0] <= after[0] - t else after[1]
        return before[1] + (after[1] - before[1]) * (t - before[0]) / span

    def max_between(self, t0: float, t1: float) -> float | None:
        """Largest speed sampled in [t0, t1] (m/s), None when none was."""
        vals = [v for t, v, _ in self._buf if t0 <= t <= t1]
        return max(vals) if vals else None


@dataclass(slots=True)
class _Episode:
    """One channel's event in progress (times already delay-corrected)."""

    t_start: float
    t_last: float
    peak: float
    area: float = 0.0  # ∫ value dt, for the mean
    above_s: float = 0.0  # time spent above the trigger threshold


class _Channel:
    """Start/end with hysteresis on one signed signal (e.g. -lon for braking)."""

    def __init__(self, kind: HarshKind, direction: Direction | None, th: ClassThresholds) -> None:
        self.kind = kind
        self.direction = direction
        self.th = th
        self.rise_t: float | None = None  # first sample of the run above end_threshold
        self.rise_area = 0.0  # ∫ value dt since rise_t, before the trigger
        self.ep: _Episode | None = None
        self.prev: float | None = None  # previous value, for threshold crossings

    def _above(self, x: float, dt: float) -> float:
        """Time of the last ``dt`` spent above the threshold (crossings interpolated)."""
        thr, prev = self.th.threshold, self.prev
        if prev is None or dt <= 0:
            return 0.0
        if x >= thr and prev >= thr:
            return dt
        if x >= thr:
            return dt * (x - thr) / (x - prev)
        if prev >= thr:
            return dt * (prev - thr) / (prev - x)
        return 0.0

    def step(self, t: float, x: float, dt: float) -> _Episode | None:
        """Feed one filtered value; return a finished episode (not yet judged)."""
        above = self._above(x, dt)
        self.prev = x
        th = self.th
        ep = self.ep
        if ep is None:
            if x < th.end_threshold:
                self.rise_t = None
                return None
            if self.rise_t is None:
                self.rise_t, self.rise_area = t, 0.0
            else:
                self.rise_area += x * dt
            if x >= th.threshold:
                self.ep = _Episode(self.rise_t, t, x, self.rise_area, above)
            return None
        if x < th.end_threshold:
            self.ep, self.rise_t = None, None
            ep.t_last = t
            ep.above_s += above
            return ep
        ep.t_last = t
        ep.peak = max(ep.peak, x)
        ep.area += x * dt
        ep.above_s += above
        return None

    def cut(self, t: float) -> _Episode | None:
        """End at ``t`` (a gap or the end of the stream)."""
        ep = self.ep
        self.ep, self.rise_t, self.prev = None, None, None
        if ep is not None:
            ep.t_last = t
        return ep


class _Smoother:
    """Time-based moving average over (lon, lat), reported at the window's centre."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._buf: deque[tuple[float, float, float]] = deque()
        self._sum_lon = 0.0
        self._sum_lat = 0.0

    def reset(self) -> None:
        self._buf.clear()
        self._sum_lon = self._sum_lat = 0.0

    def add(self, t: float, lon: float, lat: float) -> tuple[float, float]:
        self._buf.append((t, lon, lat))
        self._sum_lon += lon
        self._sum_lat += lat
        while self._buf[0][0] <= t - self.window_s:
            _, a, b = self._buf.popleft()
            self._sum_lon -= a
            self._sum_lat -= b
        n = len(self._buf)
        return self._sum_lon / n, self._sum_lat / n


class HarshDetector:
    """Harsh events from vehicle-frame acceleration; see the module docstring."""

    def __init__(self, config: HarshConfig | None = None, *, source: Source = "imu") -> None:
        self.config = config or HarshConfig()
        self.source: Source = source
        c = self.config
        self.speed = SpeedTrack(c.speed_max_age_s)
        self._channels = (
            _Channel("harsh_acceleration", None, c.acceleration),
            _Channel("harsh_braking", None, c.braking),
            _Channel("harsh_cornering", "left", c.cornering),
            _Channel("harsh_cornering", "right", c.cornering),
        )
        self._smooth = _Smoother(c.smoothing_s)
        self._delay = c.smoothing_s / 2.0
        self._last_t: float | None = None
        self.samples = 0

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> HarshDetector:
        """A detector with preset ``name``; ``overrides`` replace HarshConfig fields."""
        return cls(replace(preset(name), **overrides))

    def feed_speed(self, t: float, speed_mps: float, source: SpeedSource = "gnss") -> None:
        """A speed reading (GNSS or OBD) on the same clock as the samples."""
        self.speed.add(t, speed_mps, source)

    def feed(self, s: VehicleAccel) -> list[HarshDetection]:
        """Use one sample; return the events it finished."""
        out: list[HarshDetection] = []
        last = self._last_t
        if last is not None and s.t <= last:
            return out  # duplicate or out of order: the filter needs monotonic time
        if last is not None and s.t - last > self.config.max_gap_s:
            self._cut(last - self._delay, out)
            self._smooth.reset()
            last = None
        dt = 0.0 if last is None else s.t - last
        self._last_t = s.t
        self.samples += 1
        lon, lat = self._smooth.add(s.t, s.lon, s.lat)
        tc = s.t - self._delay
        acc, brake, left, right = self._channels
        for ch, x in ((acc, lon), (brake, -lon), (left, lat), (right, -lat)):
            ep = ch.step(tc, x, dt)
            if ep is not None:
                self._judge(ch, ep, out)
        return out

    def feed_many(self, samples: Iterable[VehicleAccel]) -> list[HarshDetection]:
        out: list[HarshDetection] = []
        for s in samples:
            out.extend(self.feed(s))
        return out

    def flush(self) -> list[HarshDetection]:
        """End of the stream: close events still open at the last sample."""
        out: list[HarshDetection] = []
        if self._last_t is not None:
            self._cut(self._last_t - self._delay, out)
        return out

    def _cut(self, t: float, out: list[HarshDetection]) -> None:
        for ch in self._channels:
            ep = ch.cut(t)
            if ep is not None:
                self._judge(ch, ep, out)

    def _judge(self, ch: _Channel, ep: _Episode, out: list[HarshDetection]) -> None:
        th = ch.th
        if ep.above_s + 1e-9 < th.min_duration_s:
            return
        duration = ep.t_last - ep.t_start
        v0 = self.speed.at(ep.t_start)
        v1 = self.speed.at(ep.t_last)
        known = [
            v for v in (v0, v1, self.speed.max_between(ep.t_start, ep.t_last)) if v is not None
        ]
        if known and max(known) * KMH_PER_MPS < th.min_speed_kmh:
            return
        mean = ep.area / duration if duration > 0 else ep.peak
        out.append(
            HarshDetection(
                kind=ch.kind,
                direction=ch.direction,
                t_start=ep.t_start,
                t_end=ep.t_last,
                peak=ep.peak,
                mean=min(mean, ep.peak),
                speed_start_kmh=None if v0 is None else v0 * KMH_PER_MPS,
                speed_end_kmh=None if v1 is None else v1 * KMH_PER_MPS,
                source=self.source,
                confidence="high" if known else "medium",
            )
        )
