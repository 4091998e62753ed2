"""Benchmark: bridge ingest into PostgreSQL, positions per second, at 1 and 3 workers.

    .venv/bin/python bench/bench_bridge_ingest.py [--vans 100] [--workers 1 --workers 3]

Everything is real and on this machine: a mosquitto broker, a PostgreSQL
server (fsync on, as in production), ``telematics-bridge run`` worker
processes sharing the stream (``--share-group``), and a simulated fleet that
publishes a full delivery round per van through the agent's own outbox and
uplink (QoS 1 batches, as fast as the broker takes them).  The rate is
records stored / (last arrival - first arrival), read from the rows'
``received_at`` (the worker's clock as it handled each batch); positions are
most of them.  Figures are printed, not asserted; README and docs/SCALING.md record them.  On a 2-core machine the
broker, the database, the workers and the fleet share the two cores, so the
3-worker figure is a floor, not what three machines would do.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from cloud_bridge.storage import BridgeStore
from simulators.broker import Mosquitto, wait_for
from simulators.fleet import run_fleet
from simulators.postgres import PostgresServer
from simulators.stack import Proc, bridge_worker


def one_run(workdir: Path, pg: PostgresServer, workers: int, vans: int) -> dict[str, Any]:
    url = pg.create_database(f"ingest_{workers}w")
    broker = Mosquitto(workdir / "broker").start()
    store = BridgeStore(url)
    procs: list[Proc] = []
    try:
        for i in range(workers):
            procs.append(
                bridge_worker(
                    url,
                    broker.port,
                    workdir / f"bridge-{i}.log",
                    client_id=f"bench-{i}",
                    share_group="bench",
                    extra=("--no-webhooks",),
                )
            )
        started = time.monotonic()
        result = run_fleet(
            "127.0.0.1", broker.port, vans, workdir / "fleet", until_delivered_timeout=600
        )
        total = result.total_records

        def count() -> int:
            return int(
                store.db.scalar(
                    "SELECT (SELECT COUNT(*) FROM positions) + (SELECT COUNT(*) FROM events) "
                    "+ (SELECT COUNT(*) FROM obd)"
                )
            )

        wait_for(lambda: count() >= total, 600, f"{total} records stored", poll=0.2)
        wall = time.monotonic() - started
        positions, first, last = store.db.query(
            "SELECT COUNT(*), MIN(received_at), MAX(received_at) FROM positions"
        )[0]
        span = (last - first).total_seconds()
        return {
            "workers": workers,
            "vans": vans,
            "records": total,
            "positions": int(positions),
            "ingest_s": round(span, 2),
            "positions_per_s": round(positions / span) if span > 0 else None,
            "records_per_s": round(total / span) if span > 0 else None,
            "fleet_publish_s": round(result.deliver_seconds, 2),
            "wall_s": round(wall, 1),
        }
    finally:
        for p in procs:
            p.stop()
        broker.stop()
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vans", type=int, default=100)
    ap.add_argument("--workers", type=int, action="append")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        with PostgresServer(root / "pg", fsync=True) as pg:
            rows = [one_run(root / f"w{n}", pg, n, args.vans) for n in (args.workers or [1, 3])]
    for r in rows:
        print(
            f"{r['workers']} worker(s): {r['positions']} positions ({r['records']} records) from "
            f"{r['vans']} vans stored in {r['ingest_s']} s = {r['positions_per_s']} positions/s "
            f"({r['records_per_s']} records/s); the fleet published in {r['fleet_publish_s']} s"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
