"""Benchmark: a 1-hour drive through parse -> sample -> outbox, as x realtime and peak RSS.

    .venv/bin/python bench/bench_pipeline.py [--rate 1 --rate 10] [--scenario highway]

The drive is rendered by the simulator (real NMEA: RMC, GGA, GSA, GSV, VTG),
then fed in 4 KiB chunks, as a serial read returns them, through the same
NmeaParser, Pipeline and Outbox the agent runs (the outbox on a real SQLite
file, WAL, synchronous=FULL, committing once per second of drive time and
deleting acknowledged rows as the uplink would).  Each rate runs in a fresh
process so peak RSS is its own.  Figures are printed, not asserted; README
records them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.gps.fix import Fix


def render(scenario: str, rate: int, seconds: float, out: Path) -> None:
    from simulators.cli import main as sim_main

    rc = sim_main(
        [
            "gps",
            "--scenario",
            scenario,
            "--rate",
            str(rate),
            "--duration",
            str(seconds),
            "--loop",
            "--out",
            str(out),
        ]
    )
    if rc != 0:
        raise SystemExit(f"simulator failed with {rc}")


def run_one(nmea: Path, workdir: Path) -> dict[str, float]:
    from agent.buffer.outbox import Outbox
    from agent.gps.nmea import NmeaParser
    from agent.messages import record_body
    from agent.pipeline import Pipeline

    data = nmea.read_bytes()
    outbox = Outbox(workdir / "outbox.sqlite", "bench", commit_interval_s=1.0)
    parser = NmeaParser()
    pipeline = Pipeline()
    fixes = records = 0
    first: datetime | None = None
    last: datetime | None = None
    last_commit: datetime | None = None
    t0 = time.perf_counter()

    def handle(fix: Fix) -> None:
        nonlocal fixes, records, first, last, last_commit
        fixes += 1
        if fix.time is not None:
            first = first or fix.time
            last = fix.time
        for stream, record in pipeline.feed_fix(fix):
            outbox.add(stream, record_body(record))
            records += 1
        if fix.time is not None and (
            last_commit is None or (fix.time - last_commit).total_seconds() >= 1.0
        ):
            outbox.commit()
            last_commit = fix.time
            sent = outbox.next_batch("telemetry", 0, 500, 1 << 20)
            outbox.ack([seq for seq, _ in sent])

    for i in range(0, len(data), 4096):
        for fix in parser.feed(data[i : i + 4096], mono=i / 1e6):
            handle(fix)
    for fix in parser.flush(mono=len(data) / 1e6):
        handle(fix)
    outbox.commit()
    elapsed = time.perf_counter() - t0
    outbox.close()
    drive_s = (last - first).total_seconds() if first and last else 0.0
    return {
        "drive_s": drive_s,
        "bytes": len(data),
        "lines": parser.stats.lines,
        "fixes": fixes,
        "records": records,
        "rejected": parser.stats.rejected(),
        "wall_s": elapsed,
        "x_realtime": drive_s / elapsed if elapsed else 0.0,
        "lines_per_s": parser.stats.lines / elapsed if elapsed else 0.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="highway")
    ap.add_argument("--rate", type=int, action="append", help="receiver Hz (repeatable)")
    ap.add_argument("--seconds", type=float, default=3600.0, help="drive length")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.child.parent)))
        return 0
    rates = args.rate or [1, 10]
    print(
        f"{'rate':>5} {'drive':>7} {'lines':>8} {'fixes':>7} {'records':>7} "
        f"{'wall s':>7} {'x realtime':>11} {'lines/s':>9} {'peak RSS':>9}"
    )
    for rate in rates:
        with tempfile.TemporaryDirectory() as tmp:
            nmea = Path(tmp) / "drive.nmea"
            render(args.scenario, rate, args.seconds, nmea)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(nmea)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{rate:>4g}Hz {r['drive_s']:>6.0f}s {r['lines']:>8d} {r['fixes']:>7d} "
            f"{r['records']:>7d} {r['wall_s']:>7.2f} {r['x_realtime']:>10.0f}x "
            f"{r['lines_per_s']:>9.0f} {r['peak_rss_mib']:>7.1f}MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
