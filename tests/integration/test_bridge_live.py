"""The bridge as a fleet backend uses it, end to end with real parts only.

A real agent drives 10 minutes of the urban round (20x) through a real
mosquitto into a bridge worker on a real PostgreSQL server, serving its
HTTP API.  A webhook receiver is down for the whole drive and comes back
afterwards; a tap on the broker records what the device really sent.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import xmlschema
from paho.mqtt.enums import CallbackAPIVersion

from agent.compact import parse_batch
from agent.messages import Batch, Position
from cloud_bridge.storage import BridgeStore
from simulators.broker import free_port
from simulators.postgres import PostgresServer
from simulators.stack import Stack
from tests.support.bridge_api import api_up, create_token
from tests.support.receiver import Receiver
from tests.support.waiting import until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HOOK_TYPES = ["geofence_enter", "geofence_dwell", "geofence_approach", "impact", "dtc"]


@dataclass
class Live:
    stack: Stack
    store: BridgeStore
    api: httpx.Client
    receiver: Receiver
    hook_id: int
    sent: list[Batch] = field(default_factory=list)

    def get(self, path: str, **params: Any) -> Any:
        r = self.api.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


def _tap(port: int, into: list[Batch]) -> mqtt.Client:
    """An independent subscriber: what the device put on the wire."""
    lock = threading.Lock()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tap")

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            into.append(parse_batch(msg.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe([("fleet/+/telemetry", 1), ("fleet/+/events", 1)])
    client.loop_start()
    return client


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer) -> Iterator[Live]:
    url = pg_server.create_database("live")
    token = create_token(url, "backend")
    stack = Stack(
        tmp_path_factory.mktemp("live"),
        speed=20,
        duration_s=600,
        bridge_db=url,
        http=True,
        bridge_extra=("--webhook-backoff-max", "3"),
    )
    receiver = Receiver(free_port())  # not started: down during the drive
    sent: list[Batch] = []
    store = BridgeStore(url)
    stack.start_broker()
    tap = _tap(stack.broker.port, sent)
    try:
        stack.start_bridge()
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.http_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        until(lambda: api_up(api), "the bridge's API", 20)
        r = api.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": HOOK_TYPES})
        assert r.status_code == 201, r.text
        receiver.secret = r.json()["secret"]
        stack.start_sim()
        stack.start_agent()
        stack.wait_sim_done(120)

        def delivered() -> bool:
            held = store.summary()
            total = sum(d["positions"] + d["events"] + d["obd"] for d in held)
            return stack.outbox_depth() == 0 and total >= stack.outbox_high_water() > 0

        until(delivered, "every committed record in PostgreSQL", 60)
        yield Live(stack, store, api, receiver, r.json()["id"], sent)
    finally:
        tap.loop_stop()
        receiver.stop()
        stack.stop()
        store.close()


def test_positions_for_a_time_range_match_what_the_device_sent(live: Live) -> None:
    on_wire = sorted(
        {
            (r.seq, r.ts, r.lat, r.lon)
            for b in live.sent
            for r in b.records
            if isinstance(r, Position)
        }
    )
    assert len(on_wire) > 300
    lo, hi = on_wire[100][1], on_wire[250][1]
    want = [p for p in on_wire if lo <= p[1] < hi]
    got = live.get(
        "/api/v1/devices/van-demo/positions",
        **{"from": lo.isoformat(), "to": hi.isoformat()},
    )["positions"]
    assert [(p["seq"], p["lat"], p["lon"]) for p in got] == [(s, la, lo_) for s, _, la, lo_ in want]
    assert got[0]["ts"] == lo.isoformat().replace("+00:00", "Z")

    r = live.api.get(
        "/api/v1/devices/van-demo/positions",
        params={"from": lo.isoformat(), "to": hi.isoformat(), "format": "gpx"},
    )
    xmlschema.XMLSchema(REPO / "tests/data/gpx/gpx11.xsd").validate(r.text)
    points = ET.fromstring(r.text).findall(".//{http://www.topografix.com/GPX/1/1}trkpt")
    assert len(points) == len(want)


def test_webhooks_held_while_the_receiver_was_down_arrive_once_each_signed(live: Live) -> None:
    due = live.store.db.scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ? AND delivered_at IS NULL",
        (live.hook_id,),
    )
    # Tried while the receiver was down: attempted, or held back behind a failed
    # attempt of the same webhook (one connection per backoff step, not per event).
    tried = live.store.db.scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NULL "
        "AND (attempts > 0 OR next_attempt_at > created_at)"
    )
    attempted = live.store.db.scalar("SELECT SUM(attempts) FROM webhook_deliveries")
    subscribed = live.store.events("van-demo", HOOK_TYPES, limit=10_000)
    assert due == len(subscribed) >= 4, "two drops entered and dwelled in the first 10 minutes"
    assert tried == due and attempted >= 1, "tried while the receiver was down"

    live.receiver.start()
    until(lambda: len(live.receiver.received()) >= due, f"{due} webhooks delivered", 30)
    got = live.receiver.received()
    assert len(got) == due
    assert len({g.delivery for g in got}) == due
    assert all(g.signature_ok for g in got)
    keys = sorted((g.body["event"]["epoch"], g.body["event"]["seq"]) for g in got)
    assert keys == sorted((e.epoch, e.seq) for e in subscribed)
    assert {g.event_type for g in got} <= set(HOOK_TYPES)
    until(
        lambda: (
            live.store.db.scalar(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NULL"
            )
            == 0
        ),
        "the queue marked delivered",
        10,
    )


def test_request_position_command_round_trip(live: Live) -> None:
    r = live.api.post("/api/v1/devices/van-demo/commands", json={"name": "request_position"})
    assert r.status_code == 202, r.text
    cmd_id = r.json()["id"]

    def answered() -> bool:
        return bool(live.get(f"/api/v1/commands/{cmd_id}")["status"] != "sent")

    until(answered, "the device's answer", 20)
    cmd = live.get(f"/api/v1/commands/{cmd_id}")
    assert cmd["status"] == "done", cmd
    data = cmd["result"]["data"]
    # The drive is over: the device answers with its last fix and says how old it is.
    last = live.get("/api/v1/devices/van-demo/positions", **{"from": data["ts"]})["positions"]
    assert (last[0]["lat"], last[0]["lon"]) == (data["lat"], data["lon"])
    assert data["age_s"] >= 0

    def requested() -> list[dict[str, Any]]:
        ps = live.get("/api/v1/devices/van-demo/positions", **{"from": data["ts"]})["positions"]
        return [p for p in ps if p["reason"] == "requested"]

    until(lambda: requested(), "the requested position stored", 20)
    assert requested()[0]["seq"] == data["seq"]

    unknown = live.api.post("/api/v1/devices/van-demo/commands", json={"name": "self_destruct"})
    unknown_id = unknown.json()["id"]
    until(
        lambda: live.get(f"/api/v1/commands/{unknown_id}")["status"] != "sent",
        "the refusal",
        20,
    )
    refused = live.get(f"/api/v1/commands/{unknown_id}")
    assert refused["status"] == "rejected" and "unknown command" in refused["result"]["reason"]


def test_pushed_geofences_are_applied_and_reported(live: Live) -> None:
    zone = {
        "id": "hub-north",
        "name": "Hub North",
        "shape": {"type": "circle", "lat": 52.1, "lon": 5.1, "radius_m": 120},
    }
    r = live.api.put("/api/v1/devices/van-demo/config", json={"geofences": [zone]})
    assert r.status_code == 202, r.text
    version = r.json()["version"]
    until(
        lambda: live.get("/api/v1/devices/van-demo/config")["status"] != "pending",
        "the device's answer to the config",
        20,
    )
    got = live.get("/api/v1/devices/van-demo/config")
    assert (got["version"], got["status"]) == (version, "applied")
    assert live.get("/api/v1/devices/van-demo")["config_running"] == version


def test_metrics_show_what_was_stored_and_nothing_rejected(live: Live) -> None:
    text = live.api.get("/metrics").text
    stored = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('bridge_records_total{outcome="stored"}')
    )
    assert stored >= live.stack.outbox_high_water()
    assert "bridge_rejected_total{" not in text
    assert "bridge_database_up 1.0" in text


def _answer(live: Live, name: str, **args: Any) -> dict[str, Any]:
    r = live.api.post("/api/v1/devices/van-demo/commands", json={"name": name, "args": args})
    assert r.status_code == 202, r.text
    cmd_id = r.json()["id"]
    until(
        lambda: live.get(f"/api/v1/commands/{cmd_id}")["status"] != "sent",
        f"the answer to {name}",
        20,
    )
    return dict(live.get(f"/api/v1/commands/{cmd_id}"))


def test_flush_and_a_bad_config_by_command(live: Live) -> None:
    flushed = _answer(live, "flush")
    assert flushed["status"] == "done"
    assert set(flushed["result"]["data"]["waiting"]) >= {"telemetry", "events"}

    running = live.get("/api/v1/devices/van-demo")["config_running"]
    bad_zone = {
        "id": "x",
        "name": "X",
        "shape": {"type": "circle", "lat": 95, "lon": 5, "radius_m": 50},
    }
    refused = _answer(live, "apply_config", v=1, version=running + 1, geofences=[bad_zone])
    assert refused["status"] == "rejected"
    assert "lat" in refused["result"]["reason"]  # the result says why
    assert refused["result"]["running_version"] == running  # the old one keeps running
    assert live.get("/api/v1/devices/van-demo")["config_running"] == running


def test_restart_answers_then_exits_for_the_service_manager(live: Live) -> None:
    """Last in the module: the agent is gone afterwards."""
    answer = _answer(live, "restart")
    assert answer["status"] == "done"
    agent = live.stack.agent
    assert agent is not None
    until(lambda: not agent.alive(), "the agent to stop", 15)
    assert agent.popen.returncode == 75
