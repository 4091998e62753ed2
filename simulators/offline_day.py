"""A van offline for hours, its buffer at its caps, then the backlog drains.

One van (simulators.fleet: the agent's pipeline, outbox with the given caps,
uplink) drives with no link, generated at speed; then its uplink connects to
a real mosquitto with an in-process bridge subscribed, storing to SQLite, and
the backlog drains.  bench/bench_offline.py prints it; the integration test
asserts on it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from cloud_bridge.storage import BridgeStore
from cloud_bridge.subscriber import Bridge, BridgeSettings
from simulators.broker import Mosquitto, wait_for
from simulators.fleet import run_fleet

DEVICE = "van-001"


def offline_day(
    workdir: Path, hours: float, buffer: dict[str, Any], timeout: float = 600.0
) -> dict[str, Any]:
    """Drive offline, then drain to mosquitto and a bridge; what happened, as a dict."""
    broker = Mosquitto(workdir / "broker").start()
    store = BridgeStore(workdir / "bridge.sqlite")
    bridge = Bridge(store, BridgeSettings(host="127.0.0.1", port=broker.port, client_id="bridge"))
    client = bridge.make_client()
    bridge.connect(client)
    client.loop_start()
    try:
        wait_for(bridge.connected.is_set, 10, "bridge connected")
        began = time.monotonic()
        result = run_fleet(
            "127.0.0.1",
            broker.port,
            1,
            workdir / "vans",
            minutes=hours * 60,
            buffer=buffer,
            until_delivered_timeout=timeout,
        )
        van = result.devices[0]
        kept = sum(van.backlog.values())
        wait_for(lambda: bridge.counts["stored"] >= kept, 60, "every kept record at the bridge")
        wall = time.monotonic() - began
    finally:
        client.disconnect()
        client.loop_stop()
        broker.kill()
    db = sqlite3.connect(workdir / "bridge.sqlite")
    at_bridge = dict(db.execute("SELECT 'events', COUNT(*) FROM events").fetchall())
    at_bridge["positions"] = db.execute("SELECT COUNT(*) FROM positions").fetchone()[0]
    db.close()
    store.close()
    outbox = workdir / "vans" / DEVICE / "outbox.db"
    return {
        "hours": hours,
        "buffer": buffer,
        "made": van.records,
        "peak_used_mb": van.peak_used_mb,
        "outbox_file_mb": round(outbox.stat().st_size / 1048576, 3),
        "trimmed": van.trimmed,
        "backlog": van.backlog,
        "generate_s": round(result.generate_seconds, 2),
        "drain_s": round(result.deliver_seconds, 2),
        "drain_records_per_s": round(kept / result.deliver_seconds, 1),
        "all_delivered": result.all_delivered,
        "bridge": {"stored": bridge.counts["stored"], **at_bridge},
        "duplicates": bridge.counts["duplicates"],
        "wall_s": round(wall, 1),
    }
