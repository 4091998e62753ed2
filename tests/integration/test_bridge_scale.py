"""Scale-out: three bridge workers share one broker's stream into one PostgreSQL.

Fifty simulated vans publish through the agent's own outbox and uplink; the
workers subscribe with an MQTT 5 shared subscription (``$share/bridge/...``).
Every record must be stored exactly once, and every worker must take a share.
"""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

import httpx
import pytest

from cloud_bridge.storage import BridgeStore
from simulators.broker import Mosquitto, free_port
from simulators.fleet import run_fleet
from simulators.postgres import PostgresServer
from simulators.stack import Proc, bridge_worker
from tests.support.waiting import until

pytestmark = pytest.mark.slow

WORKERS = 3
VANS = 50


def worker_stored(port: int) -> tuple[float, float]:
    """(records stored, duplicates) that one worker reports on /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    got = dict(re.findall(r'^bridge_records_total\{outcome="(\w+)"\} (\S+)$', text, re.M))
    return float(got["stored"]), float(got["duplicate"])


def test_three_workers_store_every_record_of_fifty_vans_exactly_once(
    tmp_path: Path, pg_server: PostgresServer, figures: list[str]
) -> None:
    url = pg_server.create_database("scale")
    broker = Mosquitto(tmp_path / "broker").start()
    ports = [free_port() for _ in range(WORKERS)]
    workers: list[Proc] = []
    store = BridgeStore(url)
    try:
        for i, port in enumerate(ports):
            workers.append(
                bridge_worker(
                    url,
                    broker.port,
                    tmp_path / f"bridge-{i}.log",
                    client_id=f"bridge-{i}",
                    share_group="bridge",
                    http_port=port,
                    extra=("--no-webhooks",),
                )
            )
        result = run_fleet("127.0.0.1", broker.port, VANS, tmp_path / "fleet", minutes=5)
        assert result.all_delivered, result.to_json()
        sent = set().union(*(d.keys() for d in result.devices))
        assert len(sent) == result.total_records > 5000

        def held() -> int:
            return sum(d["positions"] + d["events"] + d["obd"] for d in store.summary())

        until(lambda: held() >= len(sent), f"{len(sent)} records in PostgreSQL", 60)
        rows = store.db.query(
            "SELECT device, epoch, seq FROM positions UNION ALL "
            "SELECT device, epoch, seq FROM events UNION ALL SELECT device, epoch, seq FROM obd"
        )
        stored = {(str(d), str(e), int(q)) for d, e, q in rows}
        assert stored == sent, "stored differs from what the vans sent"
        assert len(store.devices()) == VANS

        shares = [worker_stored(p) for p in ports]
        assert sum(s for s, _ in shares) == len(sent)
        assert all(s > 0 for s, _ in shares), f"a worker took no share: {shares}"
        assert all(w.alive() for w in workers)
        figures.append(
            f"scale-out: {VANS} vans, {len(sent)} records, {WORKERS} workers stored "
            f"{[int(s) for s, _ in shares]} (duplicates dropped {[int(d) for _, d in shares]}), "
            "each record exactly once"
        )
    finally:
        for w in workers:
            w.stop()
        broker.stop()
        store.close()


def test_a_worker_killed_mid_stream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, pg_server: PostgresServer
) -> None:
    """kill -9 one worker while the fleet drains; restarted, its session is redelivered."""
    url = pg_server.create_database("scale_kill")
    broker = Mosquitto(tmp_path / "broker").start()
    store = BridgeStore(url)
    logs = [tmp_path / f"bridge-{i}.log" for i in range(WORKERS)]

    def start(i: int) -> Proc:
        return bridge_worker(
            url,
            broker.port,
            logs[i],
            client_id=f"bridge-{i}",
            share_group="bridge",
            extra=("--no-webhooks",),
        )

    workers = [start(i) for i in range(WORKERS)]
    try:
        done: list[object] = []
        fleet = threading.Thread(
            target=lambda: done.append(
                run_fleet("127.0.0.1", broker.port, VANS, tmp_path / "fleet", minutes=10)
            )
        )
        fleet.start()

        def held() -> int:
            return sum(d["positions"] + d["events"] + d["obd"] for d in store.summary())

        until(lambda: held() > 1000, "the stream flowing", 60)
        workers[0].send(signal.SIGKILL)
        workers[0].stop()
        fleet.join(120)
        (result,) = done
        workers[0] = start(0)  # same client id: the broker hands over its session
        sent = set().union(*(d.keys() for d in result.devices))  # type: ignore[attr-defined]
        until(lambda: held() >= len(sent), f"{len(sent)} records in PostgreSQL", 60)
        rows = store.db.query(
            "SELECT device, epoch, seq FROM positions UNION ALL "
            "SELECT device, epoch, seq FROM events UNION ALL SELECT device, epoch, seq FROM obd"
        )
        assert {(str(d), str(e), int(q)) for d, e, q in rows} == sent
    finally:
        for w in workers:
            w.stop()
        broker.stop()
        store.close()
