"""How far a sampled track strays from the full-rate track it was sampled from.

A fleet map draws straight lines between the positions a van sent.  What a
sampler setting costs in accuracy is how far the van really was from that
line: for every full-rate fix, its distance to the segment between the two
sent points that bracket it in time.  Bracketing in time, not the nearest
segment anywhere, because delivery rounds retrace streets (back to the depot,
a looped round): a fix must not be excused by a segment drawn an hour later.
Pure; a local equirectangular projection per segment is well under a
centimetre off at the few hundred metres a segment spans.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

from agent.gps.geo import EARTH_RADIUS_M, haversine_m

_M_PER_DEG = math.pi / 180.0 * EARTH_RADIUS_M


class TimedPoint(NamedTuple):
    """A position at a time (seconds on any one clock)."""

    t: float
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class PathError:
    """Distances (m) from every full-rate fix to the reconstructed path."""

    max_m: float
    p95_m: float
    mean_m: float


def path_length_m(track: Sequence[TimedPoint]) -> float:
    """Length of the polyline through the points, in order."""
    return sum(haversine_m(a.lat, a.lon, b.lat, b.lon) for a, b in pairwise(track))


def point_segment_m(p: TimedPoint, a: TimedPoint, b: TimedPoint) -> float:
    """Distance from ``p`` to the segment ``a``-``b`` (metres, projected about ``a``)."""
    kx = _M_PER_DEG * math.cos(math.radians(a.lat))
    bx, by = (b.lon - a.lon) * kx, (b.lat - a.lat) * _M_PER_DEG
    px, py = (p.lon - a.lon) * kx, (p.lat - a.lat) * _M_PER_DEG
    seg2 = bx * bx + by * by
    u = 0.0 if seg2 == 0.0 else min(1.0, max(0.0, (px * bx + py * by) / seg2))
    return math.hypot(px - u * bx, py - u * by)


def deviations_m(truth: Sequence[TimedPoint], sent: Sequence[TimedPoint]) -> list[float]:
    """Per truth fix, its distance to the sent segment that brackets it in time.

    Fixes before the first or after the last sent point are measured to that
    point: the map shows the van there.  ``sent`` must be in time order.
    """
    if not sent:
        raise ValueError("no sent points: the reconstructed path is empty")
    times = [s.t for s in sent]
    out: list[float] = []
    for p in truth:
        i = bisect_right(times, p.t)
        if i == 0:
            out.append(point_segment_m(p, sent[0], sent[0]))
        elif i == len(sent):
            out.append(point_segment_m(p, sent[-1], sent[-1]))
        else:
            out.append(point_segment_m(p, sent[i - 1], sent[i]))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def path_error(truth: Sequence[TimedPoint], sent: Sequence[TimedPoint]) -> PathError:
    """Largest, 95th-percentile and mean distance of the truth fixes to the sent path."""
    d = deviations_m(truth, sent)
    return PathError(max(d), percentile(d, 95.0), sum(d) / len(d))
