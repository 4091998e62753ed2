"""Benchmark: positions sent per km against path error, per sampler setting.

    .venv/bin/python bench/bench_sampling.py [--scenario urban_delivery --scenario highway]
                                             [--sweep]

Each drive is rendered by the simulator at 1 Hz (real NMEA), parsed by the
agent's NmeaParser and fed through the real PositionSampler once per
setting.  The urban delivery round (32 min, 7.4 km) is looped to one hour
(``--duration 3600 --loop``: two rounds, the second cut short in its final
depot idle); the highway run is its whole route (63.6 min, 78 km).

Per setting: points sent, points per km of the 1 Hz path (every fix-to-fix
step, parked GNSS wander included: about 1 %), and how far each 1 Hz fix is
from the line a map draws through the sent points (agent.gps.path_error:
the segment bracketing the fix in time): the largest and the 95th
percentile, in metres.  ``spd`` is the largest difference between a fix's
speed and the speed of the last point sent (km/h): what a live map shows,
and what a speed-change criterion bounds.  ``--sweep`` adds, for the first
scenario, the settings of a grid that no other grid setting beats on both
points per km and largest error.  Figures are printed, not asserted; README
records them.  The last line is JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.gps.fix import Fix
    from agent.gps.path_error import TimedPoint

OFF = math.inf
MPS_TO_KMH = 3.6


@dataclass(frozen=True, slots=True)
class Setting:
    """Sampler arguments; OFF disables a criterion (None: no speed-change criterion)."""

    period_s: float = OFF
    distance_m: float = OFF
    heading_change_deg: float = OFF
    speed_change_kmh: float | None = None
    heartbeat_s: float = 300.0
    moving_speed_kmh: float = 5.0

    def label(self) -> str:
        parts = [
            "-" if self.period_s == OFF else f"{self.period_s:g}s",
            "-" if self.distance_m == OFF else f"{self.distance_m:g}m",
            "-" if self.heading_change_deg == OFF else f"{self.heading_change_deg:g}deg",
        ]
        if self.speed_change_kmh is not None:
            parts.append(f"{self.speed_change_kmh:g}kmh")
        return "/".join(parts)


def defaults() -> Setting:
    """The agent's defaults, read from SamplerConfig so the bench follows them."""
    from agent.config import SamplerConfig

    cfg = SamplerConfig()
    return Setting(
        period_s=cfg.period_s,
        distance_m=cfg.distance_m,
        heading_change_deg=cfg.heading_change_deg,
        speed_change_kmh=getattr(cfg, "speed_change_kmh", None),
        heartbeat_s=cfg.heartbeat_s,
        moving_speed_kmh=cfg.moving_speed_kmh,
    )


# Criteria a setting does not name are off; heartbeat and moving threshold are
# the defaults'.  Combined settings fire on whichever criterion comes first.
SETTINGS: list[tuple[str, Setting]] = [
    ("period 1 s", Setting(period_s=1)),
    ("period 5 s", Setting(period_s=5)),
    ("period 10 s", Setting(period_s=10)),
    ("period 30 s", Setting(period_s=30)),
    ("distance 50 m", Setting(distance_m=50)),
    ("distance 100 m", Setting(distance_m=100)),
    ("heading 10 deg", Setting(heading_change_deg=10)),
    ("heading 15 deg", Setting(heading_change_deg=15)),
    ("heading 30 deg", Setting(heading_change_deg=30)),
    ("30s/200m/15deg", Setting(30, 200, 15)),
    ("30s/200m/20deg", Setting(30, 200, 20)),
    ("30s/200m/20deg/20kmh", Setting(30, 200, 20, 20)),
    ("30s/300m/20deg", Setting(30, 300, 20)),
    ("10s/100m/10deg/10kmh", Setting(10, 100, 10, 10)),
    ("60s/500m/20deg", Setting(60, 500, 20)),
]

SCENARIOS: dict[str, tuple[float | None, bool]] = {
    # name: (--duration, --loop); others run their whole route
    "urban_delivery": (3600.0, True),
    "highway": (None, False),
}


@dataclass(frozen=True, slots=True)
class Drive:
    scenario: str
    fixes: list[Fix]
    truth: list[TimedPoint]
    speeds: list[float | None]
    km: float


def render(scenario: str, out: Path) -> None:
    from simulators.cli import main as sim_main

    seconds, loop = SCENARIOS.get(scenario, (None, False))
    argv = ["gps", "--scenario", scenario, "--rate", "1", "--out", str(out)]
    if seconds is not None:
        argv += ["--duration", str(seconds)]
    if loop:
        argv.append("--loop")
    rc = sim_main(argv)
    if rc != 0:
        raise SystemExit(f"simulator failed with {rc}")


def load(scenario: str) -> Drive:
    from agent.gps.nmea import NmeaParser
    from agent.gps.path_error import TimedPoint, path_length_m

    with tempfile.TemporaryDirectory() as tmp:
        nmea = Path(tmp) / "drive.nmea"
        render(scenario, nmea)
        data = nmea.read_bytes()
    parser = NmeaParser()
    fixes: list[Fix] = []
    for i in range(0, len(data), 4096):
        fixes.extend(parser.feed(data[i : i + 4096], mono=i / 1e6))
    fixes.extend(parser.flush(mono=len(data) / 1e6))
    truth: list[TimedPoint] = []
    speeds: list[float | None] = []
    for f in fixes:
        if f.time is not None and f.lat is not None and f.lon is not None:
            truth.append(TimedPoint(f.time.timestamp(), f.lat, f.lon))
            speeds.append(f.speed)
    return Drive(scenario, fixes, truth, speeds, path_length_m(truth) / 1000.0)


def speed_error_kmh(
    truth: Sequence[TimedPoint], speeds: Sequence[float | None], sent: Sequence[tuple[float, float]]
) -> float:
    """Largest |fix speed - speed of the last point sent at or before it|, km/h.

    The last point's speed is what a live map shows; linear interpolation
    would invent 10 km/h across a traffic-light stop.
    """
    if not sent:
        return math.nan
    times = [t for t, _ in sent]
    worst = 0.0
    for p, v in zip(truth, speeds, strict=True):
        i = bisect_right(times, p.t)
        if v is not None and i > 0:
            worst = max(worst, abs(v - sent[i - 1][1]) * MPS_TO_KMH)
    return worst


def run(drive: Drive, setting: Setting) -> dict[str, float]:
    from agent.gps.path_error import TimedPoint, path_error
    from agent.gps.sampler import PositionSampler

    sampler = PositionSampler(**asdict(setting))
    sent: list[TimedPoint] = []
    sent_speed: list[tuple[float, float]] = []
    for fix in drive.fixes:
        for p in sampler.feed(fix):
            t = p.ts.timestamp()
            sent.append(TimedPoint(t, p.lat, p.lon))
            if p.speed is not None:
                sent_speed.append((t, p.speed))
    err = path_error(drive.truth, sent)
    return {
        "points": len(sent),
        "per_km": len(sent) / drive.km,
        "max_m": err.max_m,
        "p95_m": err.p95_m,
        "speed_err_kmh": speed_error_kmh(drive.truth, drive.speeds, sent_speed),
    }


def sweep(drive: Drive, base: Setting) -> list[tuple[str, dict[str, float]]]:
    """Grid settings that no other grid setting beats on both points/km and max error."""
    grid = itertools.product(
        (5, 10, 15, 20, 30, 60, 120),
        (50, 75, 100, 150, 200, 300, 500, OFF),
        (10, 15, 20, 30, OFF),
        (None, 10, 15, 20),
    )
    rows: list[tuple[str, dict[str, float]]] = []
    for period, dist, heading, dv in grid:
        s = replace(
            base, period_s=period, distance_m=dist, heading_change_deg=heading, speed_change_kmh=dv
        )
        rows.append((s.label(), run(drive, s)))
    front = [
        (name, r)
        for name, r in rows
        if not any(
            o["per_km"] <= r["per_km"]
            and o["max_m"] <= r["max_m"]
            and (o["per_km"], o["max_m"]) != (r["per_km"], r["max_m"])
            for _, o in rows
        )
    ]
    front.sort(key=lambda x: x[1]["per_km"])
    return front


HEADER = f"{'setting':<26} {'points':>6} {'pts/km':>7} {'max m':>7} {'p95 m':>6} {'spd':>6}"


def _row(name: str, r: dict[str, float]) -> str:
    return (
        f"{name:<26} {r['points']:>6.0f} {r['per_km']:>7.1f} {r['max_m']:>7.1f} "
        f"{r['p95_m']:>6.1f} {r['speed_err_kmh']:>6.1f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", action="append", help="scenario (repeatable)")
    ap.add_argument("--sweep", action="store_true", help="print the grid's trade-off front")
    args = ap.parse_args()
    scenarios = args.scenario or list(SCENARIOS)
    base = defaults()
    report: dict[str, object] = {}
    drives: list[Drive] = []
    for scenario in scenarios:
        drive = load(scenario)
        drives.append(drive)
        hours = (drive.truth[-1].t - drive.truth[0].t) / 3600.0
        print(f"\n{scenario}: {len(drive.truth)} fixes at 1 Hz, {hours:.2f} h, {drive.km:.2f} km")
        print(HEADER)
        rows: dict[str, dict[str, float]] = {}
        named = [(f"defaults {base.label()}", base)]
        named += [
            (n, replace(s, heartbeat_s=base.heartbeat_s, moving_speed_kmh=base.moving_speed_kmh))
            for n, s in SETTINGS
        ]
        for name, setting in named:
            rows[name] = run(drive, setting)
            print(_row(name, rows[name]))
        report[scenario] = {
            "km": round(drive.km, 3),
            "fixes": len(drive.truth),
            "settings": {k: {m: round(v, 2) for m, v in r.items()} for k, r in rows.items()},
        }
    if args.sweep:
        drive = drives[0]
        print(f"\n{drive.scenario}: grid front, period/distance/heading[/speed change]")
        print(HEADER)
        for name, r in sweep(drive, base):
            print(_row(name, r))
    print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
