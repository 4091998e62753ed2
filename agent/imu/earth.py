"""Vehicle-frame acceleration from samples already rotated into the earth frame.

Android's ``*_terra`` logs (and any source that applies the phone's rotation
vector) give acceleration and angular rate with z up, x east, y north.  The
vertical is then known but the vehicle's heading in that frame is not, and
it changes at every turn.  This module recovers it from the data alone and
emits :class:`VehicleAccel` (lon, lat, vert, yaw_rate) for the harsh
detector.

Method
------
1. **Smoothing.**  A 0.5 s moving average over the components: the norm used
   in step 3 turns vertical vibration into horizontal magnitude, and car body
   bounce sits at 1–2 Hz.  Output times are the window's centre.
2. **Fusion tilt.**  The rotation vector that put the samples in the earth
   frame is a gyro/accelerometer fusion: under a sustained acceleration it
   slowly tilts its "up" towards the total specific force, so the horizontal
   part of a 3 s acceleration fades within about a second (it reappears in z)
   and, when the manoeuvre ends, an equal false acceleration in the opposite
   direction decays over a few seconds.  On the real drives a hard stop reads
   -4.6 m/s² then +3.4 m/s² "acceleration" while the norm of the vector is
   back at 1 g.  The horizontal vector is therefore (a) reconstructed with the
   inverse of a first-order fusion, ``h + (1/tau)·∫h`` (``fusion_tau_s``, a
   leaky integral of ``fusion_leak_s``), and (b) its magnitude is capped by
   the rotation-independent ``sqrt(|a|² - g²)`` — no norm above 1 g, no
   horizontal acceleration, which removes the false rebounds — and by
   ``magnitude_gain`` times the reconstructed magnitude, so that a vertical
   bump alone (large norm, no horizontal direction) gives nothing.  ``g`` is
   the sensor's own 1 g, tracked while the vehicle is quiet (phones read
   9.6–9.8).
3. **Heading.**  Integrating the gyro's z (yaw rate, counter-clockwise
   positive) gives heading changes ``theta(t)``; the unknown is a slowly
   varying offset ``psi0`` with ``heading = psi0 + theta``.  In the frame
   turned by ``-theta`` the vehicle's acceleration is its (lon, lat) turned by
   ``psi0``, and two kinds of evidence fix ``psi0``: in turns the centripetal
   acceleration ``lat = v·omega`` points to the inside of the turn, so
   ``sum(b·omega)`` points at ``psi0 + 90°`` whatever the speed; on straight
   stretches (no yaw for ``quiet_s``) acceleration and braking lie along the
   heading, so ``sum(b²)`` gives its axis (not its sign).  Both are summed in
   1 s bins and combined over a Gaussian window of ``window_s`` around each
   bin, reaching ``lookahead_s`` into the future; the straight evidence has a
   smaller weight (``straight_weight``) because the fusion's false rebounds
   land on the same axis and lane changes are lateral.  Re-estimating every
   second absorbs the gyro's drift against the fusion's frame (0.4–0.6°/s on
   the real drives).
4. **Output** is delayed by ``lookahead_s`` (plus the smoothing): the
   estimate for a moment uses the turns that follow it, which a trip's first
   minutes need.  Harsh events are not urgent; impacts do not go through
   here (they use the rotation-free norm).

Limits
------
* Without a gyro there is no turn evidence: the axis is found but braking
  and acceleration cannot be told apart (the sign is arbitrary).
* A drive with no turn in ``window_s`` keeps the last sign it had; a long
  straight after a gyro glitch could stay reversed.
* The fusion model is first order; fusions that adapt their gain (most do)
  leave residual rebounds of about 1 m/s², below every default threshold.
* Heading is the direction the vehicle's body points, which is what harsh
  detection needs; it is not a navigation heading.

Pure and deterministic: times are the samples' own.
"""

from __future__ import annotations

import cmath
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from agent.imu.sample import ImuSample, VehicleAccel


@dataclass(frozen=True, slots=True)
class EarthConfig:
    """Tuning of the earth-frame path; see the module docstring for each step."""

    smoothing_s: float = 0.5
    fusion_tau_s: float = 1.0  # 0 turns the tilt compensation off
    fusion_leak_s: float = 5.0
    magnitude_gain: float = 1.5
    window_s: float = 60.0
    lookahead_s: float = 30.0
    bin_s: float = 1.0
    turn_rate: float = 0.1  # rad/s: a sample counts as turning evidence above it
    straight_rate: float = 0.05  # rad/s: below it for quiet_s counts as straight
    quiet_s: float = 3.0
    straight_weight: float = 0.3
    gravity_tau_s: float = 20.0
    max_gap_s: float = 1.0  # a longer gap restarts the smoothing and the fusion model

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or self.window_s <= 0 or self.lookahead_s < 0:
            raise ValueError("bin_s and window_s must be > 0, lookahead_s >= 0")
        if self.smoothing_s < 0 or self.fusion_tau_s < 0 or self.fusion_leak_s <= 0:
            raise ValueError("smoothing_s and fusion_tau_s >= 0, fusion_leak_s > 0")


_GRID = [math.radians(d) for d in range(0, 360, 2)]
_COS = [math.cos(a) for a in _GRID]
_SIN = [math.sin(a) for a in _GRID]
_COS2 = [math.cos(2 * a) for a in _GRID]
_SIN2 = [math.sin(2 * a) for a in _GRID]


def best_heading(turn: complex, straight: complex, straight_weight: float) -> float | None:
    """The offset (rad) that best explains the evidence; None when there is none.

    Maximises ``Re(turn·e^{-i(psi+90°)}) + w·Re(straight·e^{-2i·psi})`` on a 2° grid.
    """
    if abs(turn) + straight_weight * abs(straight) < 1e-9:
        return None
    tr, ti = turn.real, turn.imag
    sr, si = straight.real * straight_weight, straight.imag * straight_weight
    best, arg = -math.inf, 0.0
    for a, c, s, c2, s2 in zip(_GRID, _COS, _SIN, _COS2, _SIN2, strict=True):
        j = ti * c - tr * s + sr * c2 + si * s2
        if j > best:
            best, arg = j, a
    return arg


class EarthFrameAligner:
    """Earth-frame ImuSample (z up) -> VehicleAccel, heading inferred; see the module doc."""

    def __init__(self, config: EarthConfig | None = None) -> None:
        self.config = c = config or EarthConfig()
        self._k = 0.0 if c.fusion_tau_s == 0 else 1.0 / c.fusion_tau_s
        self._dn = math.ceil(c.lookahead_s / c.bin_s)  # bins of lookahead
        self._wn = math.ceil(c.window_s / c.bin_s)  # bins of history
        self._sigma_bins = max(c.window_s / 2.0 / c.bin_s, 1e-9)
        self._weights = [
            math.exp(-0.5 * (j / self._sigma_bins) ** 2) for j in range(max(self._wn, self._dn) + 1)
        ]
        self._smooth: deque[tuple[float, float, float, float, float]] = deque()
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._last_t: float | None = None
        self._t0: float | None = None  # start of bin 0
        self._theta = 0.0
        self._leak = 0j
        self.gravity: float | None = None  # the sensor's 1 g, m/s²
        self._g_n = 0  # quiet samples averaged into it so far
        self._last_turning = -math.inf
        self._has_gyro = False
        # bins: index -> [turn evidence, straight evidence]; pending output samples
        self._bins: deque[list[complex]] = deque()
        self._bin0 = 0  # index of self._bins[0]
        self._cur_bin = -1
        self._pending: deque[tuple[float, complex, float, float | None, int]] = deque()
        self._psi: dict[int, float] = {}
        self._last_psi = 0.0
        self._next_est = 0  # next bin whose heading is to be estimated
        self.samples = 0

    @property
    def heading_offset_deg(self) -> float:
        """Latest ``psi0`` (degrees, counter-clockwise from east, plus integrated yaw)."""
        return math.degrees(self._last_psi)

    def feed(self, s: ImuSample) -> list[VehicleAccel]:
        """Use one earth-frame sample; return the vehicle-frame samples now ready."""
        c = self.config
        last = self._last_t
        if last is not None and s.t <= last:
            return []
        if last is not None and s.t - last > c.max_gap_s:
            self._smooth.clear()
            self._sums = [0.0, 0.0, 0.0, 0.0]
            self._leak = 0j
            last = None
        dt = 0.0 if last is None else s.t - last
        self._last_t = s.t
        self.samples += 1
        gz_raw = s.gz if s.gz is not None else 0.0
        if s.gz is not None:
            self._has_gyro = True
        self._theta += gz_raw * dt
        # 1. smoothing
        buf, sums = self._smooth, self._sums
        buf.append((s.t, s.ax, s.ay, s.az, gz_raw))
        sums[0] += s.ax
        sums[1] += s.ay
        sums[2] += s.az
        sums[3] += gz_raw
        while buf[0][0] <= s.t - c.smoothing_s:
            old = buf.popleft()
            sums[0] -= old[1]
            sums[1] -= old[2]
            sums[2] -= old[3]
            sums[3] -= old[4]
        n_inv = 1.0 / len(buf)
        ax, ay, az, yaw = sums[0] * n_inv, sums[1] * n_inv, sums[2] * n_inv, sums[3] * n_inv
        t_out = s.t - c.smoothing_s / 2.0
        # 2. fusion tilt and magnitude
        norm = math.sqrt(ax * ax + ay * ay + az * az)
        h = complex(ax, ay)
        self._leak = self._leak * math.exp(-dt / c.fusion_leak_s) + h * dt
        rec = h + self._k * self._leak
        g = self.gravity
        if g is None:
            g = self.gravity = norm
            self._g_n = 1
        elif abs(yaw) < c.straight_rate and abs(rec) < 0.5 and abs(norm - g) < 0.5 and dt > 0:
            # a plain mean of the first quiet samples, then a slow average
            self._g_n += 1
            g += (norm - g) * max(dt / c.gravity_tau_s, 1.0 / self._g_n)
            self.gravity = g
        cap = math.sqrt(max(0.0, norm * norm - g * g))
        mag = abs(rec)
        vec = rec * (min(c.magnitude_gain * mag, cap) / mag) if mag > 1e-9 else 0j
        # 3. heading evidence, in the frame turned by -theta
        b = vec * cmath.exp(-1j * self._theta)
        if abs(yaw) >= c.straight_rate:
            self._last_turning = s.t
        if self._t0 is None:
            self._t0 = t_out
        k = int((t_out - self._t0) // c.bin_s)
        out: list[VehicleAccel] = []
        if k > self._cur_bin:
            while self._cur_bin < k:
                self._cur_bin += 1
                self._bins.append([0j, 0j])
            self._estimate_ready(self._cur_bin - 1 - self._dn, out)
        acc = self._bins[k - self._bin0]
        if abs(yaw) > c.turn_rate:
            acc[0] += b * yaw * dt
        if s.t - self._last_turning >= c.quiet_s:
            acc[1] += b * b * dt
        self._pending.append((t_out, b, norm - g, yaw if self._has_gyro else None, k))
        return out

    def feed_many(self, samples: Iterable[ImuSample]) -> list[VehicleAccel]:
        out: list[VehicleAccel] = []
        for s in samples:
            out.extend(self.feed(s))
        return out

    def flush(self) -> list[VehicleAccel]:
        """End of the stream: estimate the last bins with what there is, emit everything."""
        out: list[VehicleAccel] = []
        self._estimate_ready(self._cur_bin, out)
        return out

    def _estimate_ready(self, upto: int, out: list[VehicleAccel]) -> None:
        """Estimate headings for bins up to ``upto`` and release their samples."""
        while self._next_est <= upto:
            kb = self._next_est
            self._psi[kb] = self._estimate(kb)
            self._next_est += 1
        while self._pending and self._pending[0][4] in self._psi:
            t, b, vert, yaw, kb = self._pending.popleft()
            v = b * cmath.exp(-1j * self._psi[kb])
            out.append(VehicleAccel(t=t, lon=v.real, lat=v.imag, vert=vert, yaw_rate=yaw))
        # forget what no later estimate needs
        keep_from = self._next_est - self._wn - 1
        while self._bins and self._bin0 < keep_from:
            self._bins.popleft()
            self._bin0 += 1
        for kb in [kb for kb in self._psi if kb < keep_from]:
            del self._psi[kb]

    def _estimate(self, kb: int) -> float:
        turn = straight = 0j
        lo = max(kb - self._wn, self._bin0)
        hi = min(kb + self._dn, self._bin0 + len(self._bins) - 1)
        for j in range(lo, hi + 1):
            w = self._weights[abs(j - kb)]
            tb, sb = self._bins[j - self._bin0]
            turn += tb * w
            straight += sb * w
        psi = best_heading(turn, straight, self.config.straight_weight)
        if psi is not None:
            self._last_psi = psi
        return self._last_psi
