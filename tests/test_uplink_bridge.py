"""Uplink -> real mosquitto -> bridge: PUBACK-driven deletion, outages, rejects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import compact
from agent.buffer.outbox import Outbox
from agent.clock import Clock
from agent.config import MqttConfig
from agent.messages import EventData, PositionData, Status, record_body
from agent.uplink import Uplink
from cloud_bridge.storage import BridgeStore
from cloud_bridge.subscriber import Bridge, BridgeSettings
from simulators.broker import Mosquitto, wait_for

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DEVICE = "van-7"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def bridge(tmp_path: Path, broker: Mosquitto) -> Iterator[Bridge]:
    store = BridgeStore(tmp_path / "bridge.sqlite")
    br = Bridge(store, BridgeSettings(host="127.0.0.1", port=broker.port, client_id="bridge-test"))
    client = br.make_client()
    br.connect(client)  # a persistent session, as `telematics-bridge run` has
    client.loop_start()
    wait_for(br.connected.is_set, 10, "bridge connected")
    yield br
    client.disconnect()
    client.loop_stop()
    store.close()


def position(i: int) -> str:
    return record_body(
        PositionData(
            ts=T0 + timedelta(seconds=i), lat=52 + i * 1e-5, lon=4.0, mode=3, reason="periodic"
        )
    )


def status_json(state: str) -> str:
    return Status(device=DEVICE, state=state).model_dump_json()


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[Uplink]:
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(cond, timeout: float, what, detail=lambda: "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} {detail()}")
        await asyncio.sleep(0.05)


def make_uplink(outbox: Outbox, port: int, **kw: object) -> Uplink:
    # These tests are about delivery, not batching: no telemetry hold unless
    # a test asks (test_telemetry_hold_* cover it).
    kw = {"telemetry_hold_s": 0.0, **kw}
    cfg = MqttConfig(host="127.0.0.1", port=port, backoff_min_s=0.2, backoff_max_s=1.0, **kw)  # type: ignore[arg-type]
    clock = Clock("system", synced=lambda: True)
    return Uplink(
        cfg,
        DEVICE,
        outbox,
        clock,
        birth=lambda: status_json("online"),
        will=lambda: status_json("offline"),
        rng=random.Random(1),
    )


@pytest.mark.parametrize(("protocol", "encoding"), [("5", "c1"), ("3.1.1", "c1"), ("5", "json")])
def test_backlog_reaches_bridge_and_leaves_outbox(
    tmp_path: Path, broker: Mosquitto, bridge: Bridge, protocol: str, encoding: str
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", DEVICE)
    for i in range(250):
        outbox.add("telemetry", position(i))
    outbox.add("events", record_body(EventData(ts=T0, type="agent_started")))
    outbox.commit()
    uplink = make_uplink(
        outbox, broker.port, protocol=protocol, encoding=encoding, batch_max=20, inflight=3
    )

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: bridge.counts["stored"] == 251, 20, "251 records at the bridge")
            await until(
                lambda: outbox.commit() >= 0 and outbox.depth()["telemetry"] == 0,
                10,
                "outbox drained",
            )

    asyncio.run(scenario())
    order = bridge.store.arrival_order(DEVICE)
    assert order[0] == ("events", outbox.epoch, 251)  # events go first
    assert [seq for s, _, seq in order if s == "telemetry"] == list(range(1, 251))
    assert bridge.counts["duplicates"] == 0
    assert bridge.counts["rejected.invalid_schema"] == 0
    assert uplink.stats.publishes == 1 + 13  # 250 positions in batches of 20


def test_broker_outage_keeps_everything(tmp_path: Path, broker: Mosquitto, bridge: Bridge) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", DEVICE)
    uplink = make_uplink(outbox, broker.port)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.stats.connected, 10, "uplink connected")
            for i in range(1, 51):
                outbox.add("telemetry", position(i))
            outbox.commit()
            uplink.wake()
            await until(lambda: bridge.counts["stored"] == 50, 10, "first 50")
            broker.kill()
            await until(lambda: not uplink.stats.connected, 10, "uplink notices the outage")
            for i in range(51, 151):
                outbox.add("telemetry", position(i))
            outbox.commit()
            uplink.wake()
            assert outbox.depth()["telemetry"] >= 100
            broker.start()
            await until(
                lambda: bridge.counts["stored"] == 150,
                30,
                "backlog after the outage",
                lambda: f"{bridge.counts} {uplink.status()} {outbox.depth()}",
            )
            await until(
                lambda: outbox.commit() >= 0 and outbox.depth()["telemetry"] == 0,
                10,
                "outbox drained",
            )

    asyncio.run(scenario())
    seqs = sorted(seq for _, _, seq in bridge.store.arrival_order(DEVICE))
    assert seqs == list(range(1, 151))
    assert uplink.stats.connects >= 2


class TrickleOutbox(Outbox):
    """A real outbox where new records are committed right after the 2nd PUBACK:
    on loopback a 600-record backlog drains in ~0.1 s, too fast to race by hand."""

    acks = 0

    def ack(self, seqs: list[int]) -> None:
        super().ack(seqs)
        self.acks += 1
        if self.acks == 2:
            for i in range(600, 605):
                self.add("telemetry", position(i))
            self.commit()


def test_long_backlog_does_not_starve_new_data(
    tmp_path: Path, broker: Mosquitto, bridge: Bridge
) -> None:
    outbox = TrickleOutbox(tmp_path / "outbox.sqlite", DEVICE)
    for i in range(600):
        outbox.add("telemetry", position(i))
    outbox.commit()
    uplink = make_uplink(outbox, broker.port, batch_max=10, inflight=1, live_lane_after=100)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: bridge.counts["stored"] == 605, 30, "everything")

    asyncio.run(scenario())
    arrived = [seq for _, _, seq in bridge.store.arrival_order(DEVICE)]
    assert sorted(arrived) == list(range(1, 606))
    assert arrived.index(601) < 40  # live data overtook the 600-record backlog
    backlog = [q for q in arrived if q <= 600]
    assert backlog == sorted(backlog)  # the backlog itself still drains oldest first


def test_short_backlog_drains_strictly_in_order(
    tmp_path: Path, broker: Mosquitto, bridge: Bridge
) -> None:
    outbox = TrickleOutbox(tmp_path / "outbox.sqlite", DEVICE)
    for i in range(90):
        outbox.add("telemetry", position(i))
    outbox.commit()
    uplink = make_uplink(outbox, broker.port, batch_max=10, inflight=1, live_lane_after=100)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: bridge.counts["stored"] == 95, 30, "everything")

    asyncio.run(scenario())
    assert [seq for _, _, seq in bridge.store.arrival_order(DEVICE)] == list(range(1, 96))


def test_retained_birth_and_will(tmp_path: Path, broker: Mosquitto) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", DEVICE)
    uplink = make_uplink(outbox, broker.port, status_interval_s=0.2)
    seen: list[str] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    watcher.on_message = lambda c, u, m: seen.append(json.loads(m.payload)["state"])
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe(f"fleet/{DEVICE}/status", 1)
    watcher.loop_start()

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: seen.count("online") >= 3, 10, "birth, then refreshes")

    asyncio.run(scenario())
    wait_for(lambda: seen[-1:] == ["offline"], 10, "offline status after a clean stop")
    watcher.loop_stop()
    late: list[bool] = []
    late_client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="late")
    late_client.on_message = lambda c, u, m: late.append(m.retain)
    late_client.connect("127.0.0.1", broker.port)
    late_client.subscribe(f"fleet/{DEVICE}/status", 1)
    late_client.loop_start()
    wait_for(lambda: late == [True], 10, "retained status for a late subscriber")
    late_client.loop_stop()


def test_bridge_rejects_and_counts_bad_payloads(tmp_path: Path) -> None:
    store = BridgeStore(tmp_path / "b.sqlite")
    br = Bridge(store, BridgeSettings())
    good = (
        '{"v":1,"device":"van-7","epoch":"0123456789abcdef0123456789abcdef","sent":null,'
        '"records":[{"seq":1,' + position(1)[1:] + "]}"
    )
    br.handle("fleet/van-7/telemetry", good.encode())
    br.handle("fleet/van-7/telemetry", good.encode())  # exact duplicate
    br.handle("fleet/van-8/telemetry", good.encode())  # foreign device
    br.handle("fleet/van-7/telemetry", b"{not json")
    br.handle("fleet/van-7/telemetry", b'{"v":1}')
    br.handle("fleet/van-7/telemetry", b"x" * 300_000)
    br.handle("other/van-7/telemetry", good.encode())
    br.handle("fleet/van-7/events", good.encode())  # a position on the events stream
    epoch = "0123456789abcdef0123456789abcdef"
    c1 = compact.encode("van-7", epoch, None, [(2, position(2))])
    br.handle("fleet/van-7/telemetry", c1)  # the compact encoding of a good batch
    br.handle("fleet/van-7/telemetry", c1[:-4])  # cut short
    br.handle("fleet/van-7/telemetry", zlib.compress(b"\0" * 2_000_000))  # deflate bomb
    br.handle("fleet/van-7/telemetry", compact.encode("van-7", epoch, None, [(3, "{}")]))
    assert br.counts == {
        "stored": 2,
        "duplicates": 1,
        "batches": 3,
        "rejected.invalid_compact": 2,
        "rejected.device_mismatch": 1,
        "rejected.invalid_json": 1,
        "rejected.invalid_schema": 2,
        "rejected.oversized": 1,
        "rejected.foreign_topic": 1,
        "rejected.wrong_stream": 1,
    }
    assert store.reject_counts() == {
        "device_mismatch": 1,
        "foreign_topic": 1,
        "invalid_compact": 2,
        "invalid_json": 1,
        "invalid_schema": 2,
        "oversized": 1,
        "wrong_stream": 1,
    }
    assert [r["seq"] for r in store.records("van-7")] == [1, 2]


def test_cancel_always_stops_the_uplink(tmp_path: Path) -> None:
    """Shutdown must never hang. On Python 3.11 asyncio.wait_for swallows a
    cancel() that lands while its inner wait completes: a PUBACK waking the
    uplink as the agent stops. A CI run hung on exactly that."""
    outbox = Outbox(tmp_path / "outbox.sqlite", DEVICE)
    rng = random.Random(5)

    async def scenario() -> None:
        for _ in range(150):
            uplink = Uplink(
                MqttConfig(host="127.0.0.1", port=1, backoff_min_s=5, backoff_max_s=5),
                DEVICE,
                outbox,
                Clock("system", synced=lambda: True),
                birth=lambda: status_json("online"),
                will=lambda: status_json("offline"),
                tick_s=0.01,
            )
            task = asyncio.create_task(uplink.run())
            await asyncio.sleep(rng.uniform(0.005, 0.03))
            uplink.wake()  # e.g. a PUBACK arriving in the same loop iteration
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=10)
            assert done, "uplink ignored cancel()"

    asyncio.run(scenario())


def test_telemetry_is_held_for_one_batch_and_events_take_it_along(
    tmp_path: Path, broker: Mosquitto, bridge: Bridge
) -> None:
    """A part batch of positions waits for the hold; an event sends it at once."""
    outbox = Outbox(tmp_path / "outbox.sqlite", DEVICE)
    hold = 1.5
    uplink = make_uplink(outbox, broker.port, telemetry_hold_s=hold)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.stats.connected, 10, "uplink connected")
            for i in range(5):
                outbox.add("telemetry", position(i))
            outbox.commit()
            uplink.wake()
            committed = time.monotonic()
            await until(lambda: bridge.counts["stored"] == 5, 10, "the held batch")
            assert time.monotonic() - committed >= hold
            assert bridge.counts["batches"] == 1  # five positions, one publish

            uplink.cfg = uplink.cfg.model_copy(update={"telemetry_hold_s": 3600.0})
            for i in range(5, 8):
                outbox.add("telemetry", position(i))
            outbox.commit()
            uplink.wake()
            outbox.add("events", record_body(EventData(ts=T0, type="harsh_braking")))
            outbox.commit()
            uplink.wake()
            # An hour's hold, yet the positions arrive with the event.
            await until(lambda: bridge.counts["stored"] == 9, 10, "event and positions")

    asyncio.run(scenario())
    assert bridge.counts["batches"] == 3


def test_a_full_batch_goes_at_once_and_flush_sends_the_rest(
    tmp_path: Path, broker: Mosquitto, bridge: Bridge
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", DEVICE)
    uplink = make_uplink(outbox, broker.port, telemetry_hold_s=3600.0, batch_max=10)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.stats.connected, 10, "uplink connected")
            for i in range(25):
                outbox.add("telemetry", position(i))
            outbox.commit()
            uplink.wake()
            await until(lambda: bridge.counts["stored"] == 20, 10, "two full batches")
            assert uplink.stats.publishes == 2 and outbox.waiting("telemetry", 20) == (5, 25)
            uplink.flush()  # the `flush` command
            await until(lambda: bridge.counts["stored"] == 25, 10, "the held five")
            # A requested position (priority) is never held.
            outbox.add("telemetry", position(25), priority=True)
            outbox.commit()
            uplink.wake()
            await until(lambda: bridge.counts["stored"] == 26, 10, "the requested position")

    asyncio.run(scenario())
    assert uplink.stats.publishes == 4
