"""A bridge whose database fails exits without acknowledging; the broker redelivers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import Mosquitto, wait_for
from simulators.stack import Proc, command
from tests.test_uplink_bridge import position

EPOCH = "0123456789abcdef0123456789abcdef"


def start_bridge(db: Path, port: int, log: Path) -> Proc:
    proc = Proc(
        [
            command("telematics-bridge"),
            "run",
            "--db",
            str(db),
            "--port",
            str(port),
            "--client-id",
            "bridge-failure-test",
            "--busy-timeout",
            "0.3",
        ],
        log,
    )
    wait_for(lambda: "bridge connected" in log.read_text(), 20, "bridge subscribed")
    return proc


def test_storage_failure_exits_and_the_message_is_redelivered(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    db = tmp_path / "bridge.sqlite"
    log = tmp_path / "bridge.log"
    bridge = start_bridge(db, broker.port, log)
    try:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the disk "fails": every write is refused
        payload = (
            f'{{"v":1,"device":"van-9","epoch":"{EPOCH}","sent":null,'
            f'"records":[{{"seq":1,{position(1)[1:]}]}}'
        )
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("fleet/van-9/telemetry", payload, qos=1).wait_for_publish(10)
        pub.loop_stop()
        wait_for(lambda: not bridge.alive(), 20, "bridge to exit on the storage failure")
        assert bridge.stop() == 1
        assert "storage failed" in log.read_text()
        blocker.execute("ROLLBACK")
        blocker.close()

        bridge = start_bridge(db, broker.port, log)

        def stored() -> list[tuple[int]]:
            con = sqlite3.connect(db)
            try:
                return con.execute("SELECT seq FROM positions WHERE device = 'van-9'").fetchall()
            finally:
                con.close()

        wait_for(lambda: stored() == [(1,)], 20, "the redelivered record stored once")
    finally:
        bridge.stop()
        broker.kill()


def test_query_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`telematics-bridge query ... | head` must not end in a traceback."""
    import subprocess

    from cloud_bridge.storage import BridgeStore
    from cloud_bridge.subscriber import Bridge, BridgeSettings

    db = tmp_path / "b.sqlite"
    bridge = Bridge(BridgeStore(db), BridgeSettings())
    for seq in range(1, 3001):
        bridge.handle(
            "fleet/van-9/telemetry",
            (
                f'{{"v":1,"device":"van-9","epoch":"{EPOCH}","sent":null,'
                f'"records":[{{"seq":{seq},{position(seq)[1:]}]}}'
            ).encode(),
        )
    assert bridge.counts["stored"] == 3000
    proc = subprocess.Popen(
        [command("telematics-bridge"), "query", "--db", str(db), "--device", "van-9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert b'"seq":1' in proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(30) == 0
    assert b"Traceback" not in proc.stderr.read()
