"""An impact goes out ahead of everything already waiting, through a real mosquitto."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.buffer.outbox import Outbox
from agent.compact import parse_batch
from agent.messages import EventData, record_body
from simulators.broker import Mosquitto, wait_for
from tests.test_uplink_bridge import DEVICE, T0, broker, make_uplink, position, running, until

__all__ = ["broker"]  # the fixture, imported for pytest


class Arrivals:
    """A subscriber recording, in arrival order, the first record of every batch."""

    def __init__(self, port: int) -> None:
        self.firsts: list[dict[str, Any]] = []
        self.records = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watch")
        self.client.on_connect = lambda c, *_: c.subscribe(f"fleet/{DEVICE}/+", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith(("/telemetry", "/events")):
            records = [r.model_dump() for r in parse_batch(msg.payload).records]
            self.firsts.append(records[0])
            self.records += len(records)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_impact_reaches_the_broker_before_a_10000_message_backlog(
    tmp_path: Path, broker: Mosquitto
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", DEVICE)
    for i in range(10_000):  # hours offline: positions ...
        box.add("telemetry", position(i))
    for i in range(200):  # ... and events
        box.add("events", record_body(EventData(ts=T0, type="stop_start", data={"i": i})))
    box.commit()
    impact = EventData(ts=T0, type="impact", lat=52.1, lon=5.07, data={"peak_g": 4.2})
    seq = box.add("events", record_body(impact), priority=True)
    box.commit()
    watch = Arrivals(broker.port)
    wait_for(watch.subscribed.is_set, 10, "watcher subscribed")

    async def scenario() -> None:
        async with running(make_uplink(box, broker.port)):
            await until(lambda: watch.records >= 10_201, 60, "the whole backlog")

    try:
        asyncio.run(scenario())
    finally:
        watch.close()
        box.close()
    first = watch.firsts[0]
    assert first["type"] == "impact" and first["seq"] == seq == 10_201
    assert watch.records == 10_201  # and nothing sent twice
