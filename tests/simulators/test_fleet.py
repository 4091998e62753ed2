"""simulators.fleet: vans through the agent's pipeline, outbox and uplink to a real mosquitto."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.compact import parse_batch
from agent.messages import Batch, Event, Position, Status
from simulators.broker import Mosquitto
from simulators.fleet import FleetResult, Variant, run_fleet
from simulators.route import build_drive, haversine_m, state_at
from simulators.scenario import load_scenario
from tests.support.waiting import until


class Watcher:
    """A plain QoS 1 subscriber to every van's telemetry, events and status."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-watcher")
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(f"fleet/+/{name}", 1) for name in ("telemetry", "events", "status")]
        )
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        until(self.subscribed.is_set, "watcher subscribed")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def batches(self) -> list[tuple[str, str, Batch]]:
        """(device, stream, batch) of every data publish so far."""
        with self.lock:
            got = list(self.messages)
        out = []
        for topic, payload in got:
            _, device, name = topic.split("/")
            if name != "status":
                out.append((device, name, parse_batch(payload)))
        return out

    def statuses(self, device: str) -> list[Status]:
        with self.lock:
            got = list(self.messages)
        return [Status.model_validate_json(p) for t, p in got if t == f"fleet/{device}/status"]

    def records(self) -> int:
        return sum(len(b.records) for _, _, b in self.batches())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def watcher(broker: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(broker.port)
    yield w
    w.close()


def delivered_exactly_once(result: FleetResult, watcher: Watcher) -> list[Position]:
    """Every reported (device, epoch, seq) arrived once, on its stream; the positions."""
    until(lambda: watcher.records() >= result.total_records, "every record at the watcher", 30)
    seen: Counter[tuple[str, str, int]] = Counter()
    per_stream: Counter[tuple[str, str]] = Counter()
    positions: list[Position] = []
    for device, stream, batch in watcher.batches():
        assert batch.device == device
        for record in batch.records:
            seen[(device, batch.epoch, record.seq)] += 1
            per_stream[(device, stream)] += 1
            if isinstance(record, Position):
                assert stream == "telemetry"
                positions.append(record)
            else:
                assert isinstance(record, Event) and stream == "events"
    expected = set().union(*(d.keys() for d in result.devices))
    assert set(seen) == expected
    assert [k for k, n in seen.items() if n > 1] == []
    for d in result.devices:
        for stream in ("telemetry", "events"):
            assert per_stream[(d.device, stream)] == d.records[stream], (d.device, stream)
    return positions


def test_fleet_delivers_every_record_once_from_distinct_vans(
    tmp_path: Path, broker: Mosquitto, watcher: Watcher
) -> None:
    result = run_fleet(
        "127.0.0.1", broker.port, 4, tmp_path / "fleet", minutes=3, until_delivered_timeout=60
    )
    assert result.all_delivered
    assert [d.device for d in result.devices] == ["van-001", "van-002", "van-003", "van-004"]
    assert len({d.epoch for d in result.devices}) == 4
    for d in result.devices:
        assert d.first_seq == 1 and d.last_seq == sum(d.records.values())
        assert d.fixes == 181 and d.records["telemetry"] > 10 and d.records["events"] >= 1
        assert d.outbox_empty and d.dropped == 0
        db = sqlite3.connect(tmp_path / "fleet" / d.device / "outbox.db")
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
        db.close()
    positions = delivered_exactly_once(result, watcher)

    # Near the route: undoing a van's offset lands on the scenario's truth at
    # that moment (within the receiver's 2.5 m parked jitter).
    scenario = load_scenario("urban_delivery")
    drive = build_drive(scenario, loop=True)
    by_device: dict[str, list[Position]] = {}
    for device, _, batch in watcher.batches():
        by_device.setdefault(device, []).extend(r for r in batch.records if isinstance(r, Position))
    assert sum(map(len, by_device.values())) == len(positions)
    starts = []
    for number, d in enumerate(result.devices, start=1):
        v = Variant.of(number, drive.first.duration)
        track = sorted(by_device[d.device], key=lambda p: p.ts)
        for p in track:
            truth = state_at(drive, v.scenario_s(p.ts, result.start_utc))
            lat, lon = v.place(truth.lat, truth.lon)
            assert haversine_m(p.lat, p.lon, lat, lon) < 5.0, (d.device, p)
            assert haversine_m(p.lat, p.lon, truth.lat, truth.lon) > 90.0  # moved off the route
        assert track[0].reason == "first" and track[0].ts == result.start_utc
        starts.append(track[0])
    # Spread out: no two vans start within 50 m of each other, or share a point.
    for a, b in itertools.combinations(starts, 2):
        assert haversine_m(a.lat, a.lon, b.lat, b.lon) > 50.0
    points = [{(p.lat, p.lon) for p in track} for track in by_device.values()]
    for pa, pb in itertools.combinations(points, 2):
        assert not pa & pb

    # Retained presence as the agent publishes it: birth first, will on the way out.
    for d in result.devices:
        statuses = statuses_of(watcher, d.device)
        assert statuses[0].state == "online" and statuses[0].epoch == d.epoch
        assert statuses[-1].state == "offline" and statuses[-1].last_seq == d.last_seq


def statuses_of(watcher: Watcher, device: str) -> list[Status]:
    until(lambda: any(s.state == "offline" for s in watcher.statuses(device)), f"{device} will")
    return watcher.statuses(device)


def test_speedup_releases_fixes_in_simulated_time(
    tmp_path: Path, broker: Mosquitto, watcher: Watcher
) -> None:
    result = run_fleet(
        "127.0.0.1", broker.port, 2, tmp_path / "fleet", minutes=1, speedup=40, max_fixes=61
    )
    assert result.all_delivered
    assert result.deliver_seconds >= 60 / 40  # 60 simulated seconds at 40x
    positions = delivered_exactly_once(result, watcher)
    spread = max(p.ts for p in positions) - min(p.ts for p in positions)
    assert 50 <= spread.total_seconds() <= 60
