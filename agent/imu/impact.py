"""Impacts: a spike of acceleration reported at once, then a full-rate trace around it.

**What is measured.**  The *dynamic* acceleration ``|a - g|``: the sample
minus the gravity vector as the sensor sees it, tracked as a slow average
(``gravity_tau_s``) of quiet samples.  Not ``|a|`` and not ``|a| - 1 g``:
with gravity included a 2.5 g shove sideways reads sqrt(2.5² + 1) = 2.69 g
total, only 1.69 g above 1 g, so a side impact would need more than a
frontal one to trigger.  The vector difference treats every direction the
same, needs no mounting calibration (it works in the sensor frame, before
calibration is done) and is zero at rest in any orientation.  Default
threshold 2.5 g (``threshold_g``): a pothole at speed reaches 1–2 g at a
dashboard-mounted unit, a kerb strike or minor collision 3 g and more.

**Timing.**  The first sample over the threshold yields an
:class:`ImpactDetection` at once (peak so far, vector), so the runtime can
send it ahead of any backlog.  Samples of the last ``pre_s`` (2 s) are kept
in a ring buffer; the ``post_s`` (3 s) after the first spike are collected,
and then an :class:`ImpactTrace` is yielded: every sample of the 5 s at the
sensor's full rate, as compact lists, with the peak over the whole window.
Further spikes inside those 3 s belong to the same impact (a crash is
several hits: the bumper, then the rebound) and only raise the trace's
peak; a spike after the window is a new impact.

**Saturation.**  A phone or a ±2 g chip clips at full scale: the peak is
then a lower bound; agent.imu.health reports the clipping.

Pure and deterministic: times are the samples' own seconds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any

from agent.imu.sample import GRAVITY, ImuSample
from agent.messages import EventData, utc_iso
from agent.trips.stops import event


@dataclass(frozen=True, slots=True)
class ImpactDetection:
    """An impact, as soon as it is seen."""

    seq: int  # numbers impacts; the trace carries the same
    t: float  # first sample over the threshold
    peak_g: float  # dynamic |a - g| at that sample, in g
    vector: tuple[float, float, float]  # a - g at that sample, m/s², sensor frame


@dataclass(frozen=True, slots=True)
class ImpactTrace:
    """The samples around an impact at full rate: ``pre_s`` before, ``post_s`` after."""

    seq: int
    t0: float  # the impact's time; sample times below are relative to it
    rate_hz: float  # median rate of the samples in the trace
    peak_g: float  # over the whole window
    peak_t: float  # relative to t0
    complete: bool  # False when the stream ended early
    dt: list[float]  # sample time - t0, s
    ax: list[float]  # m/s², gravity included, sensor frame
    ay: list[float]
    az: list[float]
    gx: list[float] | None = None  # rad/s, when the sensor has a gyro
    gy: list[float] | None = None
    gz: list[float] | None = None

    def data(self) -> dict[str, Any]:
        """The trace as an event's ``data``: rounded, compact lists."""
        d: dict[str, Any] = {
            "impact_seq": self.seq,
            "rate_hz": round(self.rate_hz, 1),
            "peak_g": round(self.peak_g, 2),
            "peak_dt_s": round(self.peak_t, 3),
            "complete": self.complete,
            "dt_s": [round(x, 4) for x in self.dt],
            "ax": [round(x, 3) for x in self.ax],
            "ay": [round(x, 3) for x in self.ay],
            "az": [round(x, 3) for x in self.az],
        }
        if self.gx is not None and self.gy is not None and self.gz is not None:
            d["gx"] = [round(x, 4) for x in self.gx]
            d["gy"] = [round(x, 4) for x in self.gy]
            d["gz"] = [round(x, 4) for x in self.gz]
        return d


def impact_event(
    det: ImpactDetection,
    ts: datetime,
    lat: float | None = None,
    lon: float | None = None,
    *,
    threshold_g: float | None = None,
    speed_kmh: float | None = None,
    heading_deg: float | None = None,
) -> EventData:
    """The ``impact`` event, sent at once (priority lane)."""
    data: dict[str, Any] = {
        "impact_seq": det.seq,
        "peak_g": round(det.peak_g, 2),
        "vector_mps2": [round(x, 2) for x in det.vector],
        "speed_kmh": None if speed_kmh is None else round(speed_kmh, 1),
        "heading_deg": None if heading_deg is None else round(heading_deg % 360.0, 1),
    }
    if threshold_g is not None:
        data["threshold_g"] = threshold_g
    pos = None if lat is None or lon is None else (lat, lon)
    return event("impact", ts, pos, data)


def trace_event(trace: ImpactTrace, ts0: datetime) -> EventData:
    """The trace as its own event, ``imu_trace``, dated at the impact.

    Not named ``impact_*``: trip summaries count event types starting with
    ``impact`` as impacts, and a trace is not a second impact.
    """
    data = trace.data()
    data["t0"] = utc_iso(ts0)
    return event("imu_trace", ts0, None, data)


class ImpactDetector:
    """Impacts and their traces from raw samples; see the module docstring."""

    def __init__(
        self,
        threshold_g: float = 2.5,
        *,
        pre_s: float = 2.0,
        post_s: float = 3.0,
        gravity_tau_s: float = 1.0,
        quiet_g: float = 0.5,
    ) -> None:
        if threshold_g <= 0 or pre_s < 0 or post_s <= 0 or gravity_tau_s <= 0:
            raise ValueError("threshold_g, post_s, gravity_tau_s > 0 and pre_s >= 0")
        self.threshold_g = threshold_g
        self.pre_s = pre_s
        self.post_s = post_s
        self.gravity_tau_s = gravity_tau_s
        self.quiet_g = quiet_g
        self._ring: deque[ImuSample] = deque()
        self._g: tuple[float, float, float] | None = None
        self._last_t: float | None = None
        self._seq = 0
        # the impact being collected
        self._open: ImpactDetection | None = None
        self._trace: list[ImuSample] = []
        self._peak = (0.0, 0.0)  # (g, t)
        self.impacts = 0

    @property
    def collecting(self) -> bool:
        return self._open is not None

    def feed(self, s: ImuSample) -> list[ImpactDetection | ImpactTrace]:
        """Use one sample; return an impact (at once) and/or a finished trace."""
        out: list[ImpactDetection | ImpactTrace] = []
        if self._last_t is not None and s.t <= self._last_t:
            return out
        dt = 0.0 if self._last_t is None else s.t - self._last_t
        self._last_t = s.t
        g = self._g
        if g is None:
            g = self._g = (s.ax, s.ay, s.az)
        dx, dy, dz = s.ax - g[0], s.ay - g[1], s.az - g[2]
        dyn_g = math.sqrt(dx * dx + dy * dy + dz * dz) / GRAVITY
        if dyn_g < self.quiet_g and dt > 0:
            f = min(1.0, dt / self.gravity_tau_s)
            self._g = (g[0] + dx * f, g[1] + dy * f, g[2] + dz * f)
        op = self._open
        merged = False  # this sample belongs to the open impact's window
        if op is not None:
            merged = s.t - op.t <= self.post_s + 1e-9
            if merged:
                self._trace.append(s)
                if dyn_g > self._peak[0]:
                    self._peak = (dyn_g, s.t)
            if s.t - op.t >= self.post_s - 1e-9:
                out.append(self._finish(True))
        if not merged and dyn_g >= self.threshold_g:
            self._seq += 1
            self.impacts += 1
            det = ImpactDetection(self._seq, s.t, dyn_g, (dx, dy, dz))
            self._open = det
            self._trace = [x for x in self._ring if x.t >= s.t - self.pre_s]
            self._trace.append(s)
            self._peak = (dyn_g, s.t)
            out.append(det)
        self._ring.append(s)
        while self._ring[0].t < s.t - self.pre_s:
            self._ring.popleft()
        return out

    def flush(self) -> list[ImpactDetection | ImpactTrace]:
        """End of the stream: the trace being collected, marked incomplete."""
        return [self._finish(False)] if self._open is not None else []

    def _finish(self, complete: bool) -> ImpactTrace:
        op = self._open
        assert op is not None
        self._open = None
        samples, self._trace = self._trace, []
        gaps = sorted(b.t - a.t for a, b in pairwise(samples))
        rate = 1.0 / gaps[len(gaps) // 2] if gaps and gaps[len(gaps) // 2] > 0 else 0.0
        gyro = all(x.has_gyro for x in samples)
        return ImpactTrace(
            seq=op.seq,
            t0=op.t,
            rate_hz=rate,
            peak_g=self._peak[0],
            peak_t=self._peak[1] - op.t,
            complete=complete,
            dt=[x.t - op.t for x in samples],
            ax=[x.ax for x in samples],
            ay=[x.ay for x in samples],
            az=[x.az for x in samples],
            gx=[x.gx for x in samples if x.gx is not None] if gyro else None,
            gy=[x.gy for x in samples if x.gy is not None] if gyro else None,
            gz=[x.gz for x in samples if x.gz is not None] if gyro else None,
        )
