"""Benchmark: a van offline for a day, its buffer at its caps, then the backlog drains.

    .venv/bin/python bench/bench_offline.py [--hours 24] [--max-mb 4 --hard-mb 6]

One van (simulators.fleet: the agent's pipeline, outbox and uplink, the
scenario's engine state for idles) drives the urban delivery round for
``--hours`` with no link, generated at speed.  The outbox runs with the given
caps (small by default, so that a day overflows them; ``--max-mb 64
--hard-mb 96`` are the agent's defaults).  Printed: records made, the most
the outbox held, what the caps removed, what waited.  Then the uplink
connects to a real mosquitto with the bridge subscribed (an in-process
cloud_bridge Bridge storing to SQLite) and the backlog drains: records per
second until every record is in the bridge's store, and whether every
event arrived.  The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from simulators.offline_day import offline_day


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--max-mb", type=float, default=4.0, help="buffer.max_mb (agent: 64)")
    ap.add_argument("--hard-mb", type=float, default=6.0, help="buffer.hard_max_mb (agent: 96)")
    ap.add_argument("--keep-every", type=int, default=4, help="buffer.thin_keep_every")
    args = ap.parse_args()
    buffer = {
        "max_mb": args.max_mb,
        "hard_max_mb": args.hard_mb,
        "thin_keep_every": args.keep_every,
        "reserve_mb": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        r = offline_day(Path(tmp), args.hours, buffer)
    made, t = r["made"], r["trimmed"]
    print(f"{args.hours:g} h offline, caps {args.max_mb:g} MB soft / {args.hard_mb:g} MB hard")
    print(f"  made: {made['telemetry']} telemetry records, {made['events']} events")
    print(
        f"  outbox: peak {r['peak_used_mb']:.2f} MB used, file {r['outbox_file_mb']:.2f} MB; "
        f"thinned {t.get('thinned', 0)}, expired {t.get('expired', 0)}, "
        f"dropped {t.get('dropped', 0)} (events {t.get('dropped_events', 0)})"
    )
    print(f"  waiting at reconnect: {r['backlog']}")
    print(
        f"  drain: {sum(r['backlog'].values())} records in {r['drain_s']:.1f} s = "
        f"{r['drain_records_per_s']:.0f} records/s to mosquitto and the bridge; "
        f"bridge holds {r['bridge']['positions']} positions, {r['bridge']['events']} events"
    )
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
