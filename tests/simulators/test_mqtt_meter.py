"""The byte meter the uplink bench relies on counts MQTT packets exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import Mosquitto
from simulators.mqtt_meter import MqttMeter


def test_a_publish_and_its_puback_are_counted_to_the_byte(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    topic, payload = "fleet/van-1/telemetry", b"x" * 300

    async def session() -> MqttMeter:
        async with MqttMeter(broker.port) as meter:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="m", protocol=mqtt.MQTTv311)
            client.connect("127.0.0.1", meter.port)
            client.loop_start()
            info = client.publish(topic, payload, qos=1)
            while not info.is_published() or meter.down.packets["PUBACK"] < 1:
                await asyncio.sleep(0.01)
            client.disconnect()
            client.loop_stop()
            while meter.up.packets["DISCONNECT"] < 1:
                await asyncio.sleep(0.01)
            return meter

    try:
        meter = asyncio.run(asyncio.wait_for(session(), 20))
    finally:
        broker.kill()
    # MQTT 3.1.1 PUBLISH QoS 1: 1 type byte, 2 length bytes (remaining 325),
    # 2 + 21 topic bytes, 2 packet-id bytes, 300 payload bytes.
    assert meter.up.size["PUBLISH telemetry"] == 1 + 2 + 2 + len(topic) + 2 + len(payload)
    assert meter.down.size["PUBACK"] == 4
    assert meter.up.packets["CONNECT"] == 1 and meter.down.packets["CONNACK"] == 1
    assert meter.up.total == sum(meter.up.size.values())
