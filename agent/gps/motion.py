"""Speed over ground for fixes that carry none (GGA/GLL-only receivers).

Real GNSS error wanders slowly (tens of seconds), so over a window of
``window_s`` a parked receiver's metres of drift stay well under walking pace
while driving is unmistakable.  Fix-to-fix differences would read the drift
as motion.  Pure: times are the fixes' own, in seconds.
"""

from __future__ import annotations

from collections import deque

from agent.gps.geo import haversine_m


class WindowSpeed:
    """Average speed (m/s) over the last ``window_s`` of positions."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._recent: deque[tuple[float, float, float]] = deque()

    def reset(self) -> None:
        self._recent.clear()

    def update(self, t: float, lat: float, lon: float) -> float | None:
        """Add a position; the speed, or None until half a window is seen."""
        recent = self._recent
        recent.append((t, lat, lon))
        while t - recent[0][0] > self.window_s:
            recent.popleft()
        t0, lat0, lon0 = recent[0]
        span = t - t0
        if span < self.window_s / 2:
            return None
        return haversine_m(lat0, lon0, lat, lon) / span
