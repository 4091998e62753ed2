"""IMU samples from files, for replay: the documented CSV and Android's ``_terra`` logs.

**The replay CSV** (docs/IMU.md): a header line naming the columns,
``t,ax,ay,az`` with optional ``gx,gy,gz``, in any order; ``t`` in seconds
(any origin, strictly increasing), ``ax ay az`` in m/s² *including* gravity,
``gx gy gz`` in rad/s.  Lines starting with ``#`` and blank lines are
ignored.  A file without a header is read in that default order when its
first line is numbers (and the report says so).  A bad line (wrong number
of fields, not a number, not finite, time not increasing, gyro only
partly given) is skipped and reported with its line number: a replay
must never die on one bad line of a long log.

**Android** (the driverBehaviorDataset layout): ``acelerometro_terra.csv``
and ``giroscopio_terra.csv``, columns ``timestamp,uptimeNanos,x,y,z``,
already in the earth frame.  The two sensors have their own timestamps;
they are merged on ``uptimeNanos`` (the wall-clock ``timestamp`` column has
one-second resolution and is ignored), the gyro linearly interpolated onto
each accelerometer time.  ``t`` is seconds from ``origin_ns``: by default
``firstCollectionUptimeNanos`` from ``viagem.json`` beside the files (the
origin of the dataset's labels), else the first accelerometer sample.

Both readers stream (a day of 100 Hz is 8.6 M lines) and fill a
:class:`CsvReport` as they go.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.imu.sample import ImuSample

COLUMNS = ("t", "ax", "ay", "az", "gx", "gy", "gz")
MAX_ERRORS_KEPT = 100


@dataclass
class CsvReport:
    """What a read found: counts and the first bad lines (number, reason)."""

    path: str
    lines: int = 0  # lines read, comments and blanks included
    samples: int = 0
    has_gyro: bool = False
    header: bool = False
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bad(self, line: int, reason: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append((line, reason))

    def summary(self) -> str:
        head = f"{self.path}: {self.samples} samples, {self.skipped} bad lines skipped"
        if self.errors:
            head += "; first: " + "; ".join(f"line {n}: {r}" for n, r in self.errors[:5])
        return head


def _floats(fields: list[str]) -> list[float | None] | str:
    """Fields as floats (None for an empty one), or the reason they are not."""
    out: list[float | None] = []
    for f in fields:
        f = f.strip()
        if f == "":
            out.append(None)
            continue
        try:
            v = float(f)
        except ValueError:
            return f"not a number: {f[:20]!r}"
        if not math.isfinite(v):
            return f"not finite: {f[:20]!r}"
        out.append(v)
    return out


def _header(fields: list[str]) -> dict[str, int] | str:
    names = [f.strip().lower() for f in fields]
    cols = {n: i for i, n in enumerate(names) if n in COLUMNS}
    missing = [n for n in COLUMNS[:4] if n not in cols]
    if missing:
        return f"header lacks {', '.join(missing)}"
    gyro = [n for n in COLUMNS[4:] if n in cols]
    if gyro and len(gyro) != 3:
        return "header names only part of gx, gy, gz"
    return cols


def iter_imu_csv(path: str | Path, report: CsvReport | None = None) -> Iterator[ImuSample]:
    """Samples from a replay CSV; bad lines go to ``report`` (see the module doc)."""
    rep = report if report is not None else CsvReport(str(path))
    cols: dict[str, int] | None = None
    last_t: float | None = None
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for n, raw in enumerate(fh, start=1):
            rep.lines = n
            line = raw.strip().lstrip("\ufeff")
            if not line or line.startswith("#"):
                continue
            fields = line.split(",")
            if cols is None:
                vals = _floats(fields)
                if isinstance(vals, str):  # words: a header
                    hdr = _header(fields)
                    if isinstance(hdr, str):
                        rep.bad(n, hdr)
                        rep.notes.append(f"line {n}: {hdr}; no samples read")
                        return
                    cols, rep.header = hdr, True
                    rep.has_gyro = "gx" in cols
                    continue
                if len(fields) not in (4, 7):
                    rep.bad(n, f"no header and {len(fields)} fields (need 4 or 7)")
                    continue
                cols = {name: i for i, name in enumerate(COLUMNS[: len(fields)])}
                rep.has_gyro = len(fields) == 7
                rep.notes.append("no header: columns taken as t,ax,ay,az[,gx,gy,gz]")
            width = max(cols.values()) + 1
            if len(fields) < width:
                rep.bad(n, f"{len(fields)} fields, need {width}")
                continue
            vals = _floats([fields[i] for i in cols.values()])  # only the columns used
            if isinstance(vals, str):
                rep.bad(n, vals)
                continue
            v = dict(zip(cols, vals, strict=True))
            t, ax, ay, az = (v[k] for k in COLUMNS[:4])
            if t is None or ax is None or ay is None or az is None:
                rep.bad(n, "empty t or acceleration")
                continue
            gyro: tuple[float | None, float | None, float | None] = (None, None, None)
            if rep.has_gyro:
                gx, gy, gz = (v[k] for k in COLUMNS[4:])
                present = [v is not None for v in (gx, gy, gz)]
                if any(present) and not all(present):
                    rep.bad(n, "gyro only partly given")
                    continue
                gyro = (gx, gy, gz)
            if last_t is not None and t <= last_t:
                rep.bad(n, f"time {t:g} not after {last_t:g}")
                continue
            last_t = t
            rep.samples += 1
            yield ImuSample(t, ax, ay, az, *gyro)


def read_imu_csv(path: str | Path) -> tuple[list[ImuSample], CsvReport]:
    """All samples of a replay CSV and the report."""
    rep = CsvReport(str(path))
    return list(iter_imu_csv(path, rep)), rep


# -- Android _terra logs ----------------------------------------------------------------


def _iter_android(path: Path, rep: CsvReport) -> Iterator[tuple[int, float, float, float]]:
    """(uptimeNanos, x, y, z) rows of one Android sensor file, bad rows reported."""
    last: int | None = None
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for n, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(",")
            if n == 1 and fields[0].strip().lower() == "timestamp":
                continue  # header: timestamp,uptimeNanos,x,y,z
            if len(fields) != 5:
                rep.bad(n, f"{path.name}: {len(fields)} fields, need 5")
                continue
            try:
                ns = int(fields[1])
                x, y, z = float(fields[2]), float(fields[3]), float(fields[4])
            except ValueError:
                rep.bad(n, f"{path.name}: not a number")
                continue
            if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
                rep.bad(n, f"{path.name}: not finite")
                continue
            if last is not None and ns <= last:
                rep.bad(n, f"{path.name}: uptimeNanos not increasing")
                continue
            last = ns
            yield ns, x, y, z


def android_origin_ns(directory: str | Path) -> int | None:
    """``firstCollectionUptimeNanos`` from the trip's viagem.json, if there is one."""
    p = Path(directory) / "viagem.json"
    try:
        v = json.loads(p.read_text(encoding="utf-8"))["firstCollectionUptimeNanos"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(v) if isinstance(v, int | float) else None


def iter_android_terra(
    directory: str | Path,
    report: CsvReport | None = None,
    *,
    origin_ns: int | None = None,
    max_gyro_gap_s: float = 0.1,
) -> Iterator[ImuSample]:
    """Earth-frame samples of one Android trip, gyro interpolated onto accel times.

    An accelerometer sample farther than ``max_gyro_gap_s`` from any gyro
    sample gets no gyro rather than a made-up one.
    """
    d = Path(directory)
    rep = report if report is not None else CsvReport(str(d))
    accel_path, gyro_path = d / "acelerometro_terra.csv", d / "giroscopio_terra.csv"
    origin = origin_ns if origin_ns is not None else android_origin_ns(d)
    if origin is None:
        rep.notes.append("no viagem.json: t counts from the first accelerometer sample")
    gyro_rows = _iter_android(gyro_path, rep) if gyro_path.exists() else iter(())
    if not gyro_path.exists():
        rep.notes.append("no giroscopio_terra.csv: samples without gyro")
    prev: tuple[int, float, float, float] | None = None
    nxt = next(gyro_rows, None)
    max_gap_ns = max_gyro_gap_s * 1e9
    for ns, x, y, z in _iter_android(accel_path, rep):
        if origin is None:
            origin = ns
        while nxt is not None and nxt[0] <= ns:
            prev, nxt = nxt, next(gyro_rows, None)
        g: tuple[float | None, float | None, float | None] = (None, None, None)
        if prev is not None and nxt is not None and nxt[0] - prev[0] <= 2 * max_gap_ns:
            f = (ns - prev[0]) / (nxt[0] - prev[0])
            g = (
                prev[1] + (nxt[1] - prev[1]) * f,
                prev[2] + (nxt[2] - prev[2]) * f,
                prev[3] + (nxt[3] - prev[3]) * f,
            )
        elif prev is not None and ns - prev[0] <= max_gap_ns:
            g = prev[1:]
        elif nxt is not None and nxt[0] - ns <= max_gap_ns:
            g = nxt[1:]
        if g[0] is not None:
            rep.has_gyro = True
        rep.samples += 1
        yield ImuSample((ns - origin) / 1e9, x, y, z, *g)


def read_android_terra(
    directory: str | Path, *, origin_ns: int | None = None
) -> tuple[list[ImuSample], CsvReport]:
    """All samples of one Android trip and the report."""
    rep = CsvReport(str(directory))
    return list(iter_android_terra(directory, rep, origin_ns=origin_ns)), rep
