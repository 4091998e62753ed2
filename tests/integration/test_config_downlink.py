"""Acceptance (geofences): a zone set pushed while the agent is offline is
applied when it connects, acknowledged with its version, refused when invalid,
and survives a restart.  Real broker, the real agent process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import Mosquitto, free_port, wait_for
from simulators.stack import Proc, command

DEVICE = "van-geo"
DEPOT = {
    "id": "depot",
    "name": "Depot",
    "tags": ["depot"],
    "shape": {"type": "circle", "lat": 52.0907, "lon": 5.1214, "radius_m": 80},
}
CUSTOMER = {
    "id": "cust-1",
    "name": "Bakker",
    "tags": ["customer"],
    "shape": {
        "type": "polygon",
        "outer": [[5.118, 52.089], [5.119, 52.089], [5.119, 52.090], [5.118, 52.090]],
    },
}


class Watcher:
    """Collects what the device publishes on cmd/result and status."""

    def __init__(self, port: int) -> None:
        self.results: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"fleet/{DEVICE}/cmd/result", 1), (f"fleet/{DEVICE}/status", 1)])
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            target = self.results if msg.topic.endswith("cmd/result") else self.status
            target.append(json.loads(msg.payload))

    def push(self, payload: dict[str, Any] | None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.client.publish(f"fleet/{DEVICE}/config", body, qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Mosquitto, Watcher, Path]]:
    broker = Mosquitto(tmp_path / "broker").start()
    watcher = Watcher(broker.port)
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[device]\nid = "{DEVICE}"\n'
        # No GPS in this test: a TCP source on a closed port keeps retrying.
        f'[gps]\nsource = "tcp"\nport = {free_port()}\n'
        f'[buffer]\npath = "{tmp_path / "outbox.sqlite"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nbackoff_min_s = 0.2\nbackoff_max_s = 1\n'
        '[clock]\nsource = "system"\n'
    )
    yield broker, watcher, conf
    watcher.close()
    broker.kill()


def start_agent(conf: Path) -> Proc:
    return Proc(
        [command("telematics-agent"), "run", "--config", str(conf)], conf.parent / "agent.log"
    )


def test_pushed_zones_applied_acknowledged_and_kept(world: tuple[Mosquitto, Watcher, Path]) -> None:
    _broker, watcher, conf = world
    watcher.push({"v": 1, "version": 3, "geofences": [DEPOT, CUSTOMER]})  # agent not running yet

    agent = start_agent(conf)
    try:
        wait_for(
            lambda: watcher.results[-1:] and watcher.results[-1]["version"] == 3,
            30,
            "result for v3",
        )
        first = watcher.results[-1]
        assert (first["status"], first["running_version"], first["device"]) == (
            "applied",
            3,
            DEVICE,
        )

        # An invalid set is refused with its reason; v3 stays in force.
        bad = {**CUSTOMER, "shape": {"type": "circle", "lat": 52.0, "lon": 5.0, "radius_m": -5}}
        watcher.push({"v": 1, "version": 4, "geofences": [DEPOT, bad]})
        wait_for(lambda: watcher.results[-1]["version"] == 4, 20, "result for v4")
        refused = watcher.results[-1]
        assert refused["status"] == "rejected" and refused["running_version"] == 3
        assert "radius_m" in refused["reason"]

        # An older version is refused too.
        watcher.push({"v": 1, "version": 2, "geofences": [DEPOT]})
        wait_for(lambda: watcher.results[-1]["version"] == 2, 20, "result for v2")
        assert watcher.results[-1]["status"] == "rejected"
    finally:
        assert agent.stop() == 0

    # Clear the retained config: after a restart the agent must still run v3
    # from its own storage (as it would offline).
    watcher.push(None)
    seen = len(watcher.status)
    agent = start_agent(conf)
    try:
        wait_for(
            lambda: any(s.get("state") == "online" for s in watcher.status[seen:]),
            30,
            "birth after restart",
        )
        birth = next(s for s in watcher.status[seen:] if s.get("state") == "online")
        assert birth["health"]["config_version"] == 3
        assert birth["health"]["zones"] == 2
    finally:
        agent.stop()
