"""Which zones can be within a distance of a point: a uniform lat/lon grid.

Pure Python (no rtree/GEOS, so it runs on a Pi and on Termux).  Each zone is
filed under every grid cell its bounding circle touches; a query visits the
cells of its own box and keeps zones whose bounding circle is within the
margin.  Zones too big for the grid (or touching a pole) sit in a short list
checked on every query.  Columns wrap around the antimeridian.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.geofence.geometry import M_PER_DEG, CompiledZone, wrap_dlon

_MAX_CELLS_PER_ZONE = 256
_MAX_CELLS_PER_QUERY = 4096
_RAD = math.pi / 180.0


class ZoneIndex:
    """Spatial index over compiled zones; ``near`` is exact on bounding circles."""

    def __init__(self, zones: Sequence[CompiledZone], cell_deg: float = 0.01) -> None:
        self.zones = list(zones)
        self.cell_deg = cell_deg
        self._ncols = max(1, round(360.0 / cell_deg))
        self._cells: dict[tuple[int, int], list[CompiledZone]] = {}
        self._big: list[CompiledZone] = []
        for z in self.zones:
            cells = self._cells_for(z.lat0, z.lon0, z.bound_m, _MAX_CELLS_PER_ZONE)
            if cells is None:
                self._big.append(z)
                continue
            for key in cells:
                self._cells.setdefault(key, []).append(z)

    def _cells_for(
        self, lat: float, lon: float, radius_m: float, limit: int, pad: int = 0
    ) -> list[tuple[int, int]] | None:
        """Grid cells covering a circle's box, or None when more than ``limit``."""
        dlat = radius_m / M_PER_DEG
        lat_lo, lat_hi = lat - dlat, lat + dlat
        if lat_lo <= -89.9 or lat_hi >= 89.9:
            return None
        cos_min = math.cos(math.radians(max(abs(lat_lo), abs(lat_hi))))
        dlon = radius_m / (M_PER_DEG * cos_min)
        if dlon >= 180.0:
            return None
        c = self.cell_deg
        i0 = math.floor((lat_lo + 90.0) / c) - pad
        i1 = math.floor((lat_hi + 90.0) / c) + pad
        j0 = math.floor((lon - dlon + 180.0) / c) - pad
        j1 = math.floor((lon + dlon + 180.0) / c) + pad
        if (i1 - i0 + 1) * (j1 - j0 + 1) > limit:
            return None
        n = self._ncols
        return [(i, j % n) for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]

    def near(self, lat: float, lon: float, margin_m: float) -> list[CompiledZone]:
        """Zones whose bounding circle is within ``margin_m`` of the point, in zone order.

        Every zone with a signed distance <= ``margin_m`` is returned (and
        possibly a few that are a little farther: their bounding circle is
        close even though their border is not).
        """
        return [z for z, _ in self.near_d(lat, lon, margin_m)]

    def near_d(self, lat: float, lon: float, margin_m: float) -> list[tuple[CompiledZone, float]]:
        """As :meth:`near`, with each zone's centre distance (saves the caller a recompute)."""
        margin_m = max(margin_m, 0.0)
        # One cell of padding absorbs the few metres by which the zone's and
        # the query's box widths (each at its own latitude) can fall short.
        cells = self._cells_for(lat, lon, margin_m, _MAX_CELLS_PER_QUERY, pad=1)
        candidates: Sequence[CompiledZone]
        if cells is None:
            candidates = self.zones
        else:
            found: dict[int, CompiledZone] = {}
            grid = self._cells
            for key in cells:
                bucket = grid.get(key)
                if bucket:
                    for z in bucket:
                        found[z.index] = z
            for z in self._big:
                found[z.index] = z
            candidates = [found[k] for k in sorted(found)]
        # center_distance_m, inlined with its cos/sin hoisted: same expression.
        c = math.cos(lat * _RAD)
        sh = math.sin(lat * _RAD) * (_RAD / 2.0)
        out = []
        for z in candidates:
            dlon = z.lon0 - lon
            if dlon > 180.0 or dlon < -180.0:
                dlon = wrap_dlon(dlon)
            dlat = z.lat0 - lat
            dx = dlon * M_PER_DEG * (c - sh * dlat)
            dy = dlat * M_PER_DEG
            d = math.sqrt(dx * dx + dy * dy)
            if d <= z.bound_m + margin_m:
                out.append((z, d))
        return out
