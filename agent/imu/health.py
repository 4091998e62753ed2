"""Is the IMU telling the truth?  Pure checks over the sample stream, for status.

Harsh-event and impact figures are only as good as the samples under them,
and the usual ways an IMU goes wrong are silent: the range is too small and
impacts clip at full scale; the sensor (or its I2C link) freezes and repeats
one value; the chip runs at another rate than configured (a wrong divider,
a phone that ignores the requested delay) so every duration is off; samples
stop for a while (a full FIFO, a phone putting Termux to sleep).  Each is
detected here from the samples alone, reported as numbers in ``status()``
and, while it lasts, as a ``Problem`` with plain-language advice.

Pure: no clock is read.  Windows are measured on the samples' own ``t``;
``problems(now)`` takes the current time only to notice that samples have
stopped altogether.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.imu.sample import GRAVITY, ImuSample


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong, for a person: what (``message``) and what to do (``advice``)."""

    code: str  # saturated_accel | saturated_gyro | stuck_accel | stuck_gyro | rate | gap | silent
    message: str
    advice: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "advice": self.advice}


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """What the stream is expected to look like; ``None`` disables that check.

    ``accel_range`` and ``gyro_range`` are the configured full scales in SI
    units (m/s², rad/s): a phone reports none, a chip over I2C does.
    """

    expected_rate_hz: float | None = None
    accel_range: float | None = None
    gyro_range: float | None = None
    saturation_fraction: float = 0.98  # |value| >= this x full scale counts as clipped
    stuck_samples: int = 100  # identical consecutive readings before "stuck"
    rate_tolerance: float = 0.2  # measured rate off by more than this fraction: wrong rate
    rate_window_s: float = 5.0  # rate measured over the last seconds of samples
    min_rate_samples: int = 20  # no verdict on the rate before this many intervals
    gap_periods: float = 3.0  # an interval longer than this many periods is a gap ...
    min_gap_s: float = 0.05  # ... and never shorter than this
    problem_window_s: float = 60.0  # clipping and gaps stay reported this long


def accel_range_si(range_g: float) -> float:
    """Full scale in m/s² from a range in g (the unit datasheets use)."""
    return range_g * GRAVITY


def gyro_range_si(range_dps: float) -> float:
    """Full scale in rad/s from a range in degrees per second."""
    return math.radians(range_dps)


class HealthMonitor:
    """Feed every sample (``update``); read ``status()`` and ``problems()`` at any time.

    Costs a few comparisons per sample, so it can watch a 200 Hz stream live.
    """

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config if config is not None else HealthConfig()
        c = self.config
        self._accel_clip = None if c.accel_range is None else c.accel_range * c.saturation_fraction
        self._gyro_clip = None if c.gyro_range is None else c.gyro_range * c.saturation_fraction
        self.samples = 0
        self.last_t: float | None = None
        self.non_monotonic = 0
        # clipping: totals, and sample times of recent clipping for the problem window
        self.accel_saturated = 0
        self.gyro_saturated = 0
        self._accel_clips: deque[float] = deque()
        self._gyro_clips: deque[float] = deque()
        self.accel_peak = 0.0  # largest |axis| seen, m/s²
        # stuck: current run of identical readings, and the longest run
        self._last_accel: tuple[float, float, float] | None = None
        self._last_gyro: tuple[float, float, float] | None = None
        self.accel_run = 0
        self.gyro_run = 0
        self.longest_accel_run = 0
        self.longest_gyro_run = 0
        # rate: recent intervals between samples (gaps excluded), and their sum
        self._recent: deque[tuple[float, float]] = deque()  # (t, dt)
        self._recent_sum = 0.0
        # gaps: (start t, duration) of recent gaps; totals
        self.gaps = 0
        self.gap_s = 0.0
        self.longest_gap_s = 0.0
        self._recent_gaps: deque[tuple[float, float]] = deque()

    # -- feeding -------------------------------------------------------------------

    def update(self, samples: Iterable[ImuSample]) -> None:
        for s in samples:
            self._one(s)

    def _one(self, s: ImuSample) -> None:
        c = self.config
        self.samples += 1
        if self.last_t is not None:
            dt = s.t - self.last_t
            if dt <= 0:
                self.non_monotonic += 1
            elif dt > self._gap_threshold():
                self.gaps += 1
                self.gap_s += dt
                self.longest_gap_s = max(self.longest_gap_s, dt)
                self._recent_gaps.append((self.last_t, dt))
            else:
                self._recent.append((s.t, dt))
                self._recent_sum += dt
        if self.last_t is None or s.t > self.last_t:
            self.last_t = s.t
        horizon = self.last_t - c.rate_window_s
        while self._recent and self._recent[0][0] < horizon:
            self._recent_sum -= self._recent.popleft()[1]
        if not self._recent:
            self._recent_sum = 0.0  # no rounding residue carried over
        old = self.last_t - c.problem_window_s
        for q in (self._accel_clips, self._gyro_clips):
            while q and q[0] < old:
                q.popleft()
        while self._recent_gaps and self._recent_gaps[0][0] < old:
            self._recent_gaps.popleft()

        accel = (s.ax, s.ay, s.az)
        peak = max(abs(s.ax), abs(s.ay), abs(s.az))
        self.accel_peak = max(self.accel_peak, peak)
        if self._accel_clip is not None and peak >= self._accel_clip:
            self.accel_saturated += 1
            self._accel_clips.append(s.t)
        self.accel_run = self.accel_run + 1 if accel == self._last_accel else 1
        self.longest_accel_run = max(self.longest_accel_run, self.accel_run)
        self._last_accel = accel

        if s.gx is not None and s.gy is not None and s.gz is not None:
            gyro = (s.gx, s.gy, s.gz)
            if self._gyro_clip is not None and max(map(abs, gyro)) >= self._gyro_clip:
                self.gyro_saturated += 1
                self._gyro_clips.append(s.t)
            self.gyro_run = self.gyro_run + 1 if gyro == self._last_gyro else 1
            self.longest_gyro_run = max(self.longest_gyro_run, self.gyro_run)
            self._last_gyro = gyro

    def _gap_threshold(self) -> float:
        c = self.config
        period = self._period_hint()
        if period is None:
            return float("inf")  # nothing to compare with yet
        return max(c.min_gap_s, c.gap_periods * period)

    def _period_hint(self) -> float | None:
        """The expected interval: configured, else what the stream has shown so far."""
        if self.config.expected_rate_hz:
            return 1.0 / self.config.expected_rate_hz
        rate = self.measured_rate_hz()
        return None if rate is None else 1.0 / rate

    # -- reading -------------------------------------------------------------------

    def measured_rate_hz(self) -> float | None:
        """Intervals per second over the rate window, gaps excluded (so a gap is not a slow rate).

        The mean, not the median: FIFO batches and pipe reads space samples
        unevenly (2, 3, 2, 3 per read), which biases a median but not a mean.
        """
        n = len(self._recent)
        if n < self.config.min_rate_samples or self._recent_sum <= 0:
            return None
        return n / self._recent_sum

    def status(self) -> dict[str, Any]:
        rate = self.measured_rate_hz()
        return {
            "samples": self.samples,
            "rate_hz": None if rate is None else round(rate, 1),
            "expected_rate_hz": self.config.expected_rate_hz,
            "accel_saturated": self.accel_saturated,
            "gyro_saturated": self.gyro_saturated,
            "accel_peak_g": round(self.accel_peak / GRAVITY, 2),
            "longest_identical_accel": self.longest_accel_run,
            "longest_identical_gyro": self.longest_gyro_run,
            "gaps": self.gaps,
            "gap_s": round(self.gap_s, 3),
            "longest_gap_s": round(self.longest_gap_s, 3),
            "non_monotonic": self.non_monotonic,
        }

    def problems(self, now: float | None = None) -> list[Problem]:
        """What is wrong right now (clipping and gaps: within ``problem_window_s``).

        ``now`` is the current time on the samples' clock (the monotonic
        clock live); with it, samples that stopped coming are reported too.
        """
        c = self.config
        out: list[Problem] = []
        if self._accel_clips and c.accel_range is not None:
            g = c.accel_range / GRAVITY
            out.append(
                Problem(
                    "saturated_accel",
                    f"acceleration clipped at ±{g:g} g in {len(self._accel_clips)} samples "
                    f"in the last {c.problem_window_s:g} s",
                    f"impacts and potholes are cut off at ±{g:g} g: configure a larger "
                    "accelerometer range (±8 g or ±16 g)",
                )
            )
        if self._gyro_clips and c.gyro_range is not None:
            dps = math.degrees(c.gyro_range)
            out.append(
                Problem(
                    "saturated_gyro",
                    f"rotation rate clipped at ±{dps:.0f} °/s in {len(self._gyro_clips)} "
                    f"samples in the last {c.problem_window_s:g} s",
                    "configure a larger gyroscope range (±1000 or ±2000 °/s)",
                )
            )
        if self.accel_run >= c.stuck_samples:
            out.append(
                Problem(
                    "stuck_accel",
                    f"accelerometer repeated the same reading {self.accel_run} times",
                    "a working accelerometer always shows some noise: the sensor or its "
                    "connection has frozen; check the wiring and power, then restart the agent",
                )
            )
        if self.gyro_run >= c.stuck_samples:
            out.append(
                Problem(
                    "stuck_gyro",
                    f"gyroscope repeated the same reading {self.gyro_run} times",
                    "the gyroscope has frozen or is powered down; check the wiring and "
                    "power, then restart the agent",
                )
            )
        rate = self.measured_rate_hz()
        if (
            rate is not None
            and c.expected_rate_hz
            and abs(rate - c.expected_rate_hz) > c.rate_tolerance * c.expected_rate_hz
        ):
            out.append(
                Problem(
                    "rate",
                    f"rate {rate:.0f} Hz, expected {c.expected_rate_hz:.0f} Hz",
                    "durations and thresholds assume the configured rate: check the chip's "
                    "rate setting, or on a phone use a delay the sensor supports and keep "
                    "Termux out of battery optimisation",
                )
            )
        if self._recent_gaps:
            start, longest = max(self._recent_gaps, key=lambda g: g[1])
            out.append(
                Problem(
                    "gap",
                    f"{len(self._recent_gaps)} gap(s) in the samples in the last "
                    f"{c.problem_window_s:g} s, longest {longest:.2f} s at t={start:.2f}",
                    "samples were lost: events in the gap are missed; check the I2C "
                    "bus (FIFO overflows in status), the CPU load, or on a phone the "
                    "battery optimisation for Termux",
                )
            )
        if now is not None and self.last_t is not None:
            silent = now - self.last_t
            limit = self._gap_threshold()
            if silent > (max(1.0, limit) if math.isfinite(limit) else 1.0):
                out.append(
                    Problem(
                        "silent",
                        f"no samples for {silent:.1f} s",
                        "the IMU stopped delivering: see the source's last_error",
                    )
                )
        return out
