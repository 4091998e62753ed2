"""The HTTP API over a real database (SQLite and PostgreSQL), through FastAPI's test client.

What a device publishes on MQTT is the downlink's job; here it is recorded
(the end-to-end test sends it through a real broker to a real agent).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from fastapi.testclient import TestClient

from agent.messages import Command, DesiredConfig, Status
from cloud_bridge.api import create_app
from cloud_bridge.cli import openapi_spec
from cloud_bridge.storage import BridgeStore
from cloud_bridge.subscriber import Bridge, BridgeSettings
from tests.bridge.fleetdata import T0, batch, drive, event, iso, trip_end

REPO = Path(__file__).resolve().parents[2]
GPX_XSD = REPO / "tests" / "data" / "gpx" / "gpx11.xsd"


class Api:
    def __init__(self, store: BridgeStore) -> None:
        self.store = store
        self.sent: list[tuple[str, str, str, bool]] = []
        self.bridge = Bridge(store, BridgeSettings())
        app = create_app(
            store,
            lambda *a: self.sent.append(a),
            ingest_counts=self.bridge.counts,
            now=lambda: T0 + timedelta(hours=1),
        )
        self.client = TestClient(app)
        self.token = store.add_token("tests", T0)
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: Any) -> Any:
        r = self.client.get(path, params=params, headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json() if "json" in r.headers["content-type"] else r.text


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    store = BridgeStore(db_url)
    a = Api(store)
    # van-1 drives 300 s; van-2 only says it is online.
    sent = drive("van-1", 300)
    for i in range(0, 300, 50):
        a.bridge.handle(
            "fleet/van-1/telemetry", batch("van-1", sent[i : i + 50]).model_dump_json().encode()
        )
    evs = [
        event(301, 5, "trip_start"),
        event(
            302,
            60,
            "harsh_braking",
            {"peak_g": 0.45, "speed_start_kmh": 52.0},
            lat=53.551,
            lon=10.001,
        ),
        event(303, 120, "geofence_enter", {"zone_id": "c1", "name": "Customer 1"}),
        event(304, 200, "overspeed", {"duration_s": 25.0, "max_over_kmh": 12.0}),
        trip_end(305, 5, 299, 2950.0),
    ]
    a.bridge.handle("fleet/van-1/events", batch("van-1", evs).model_dump_json().encode())
    a.bridge.handle(
        "fleet/van-2/status", Status(device="van-2", state="online").model_dump_json().encode()
    )
    yield a
    store.close()


def test_every_api_route_needs_a_valid_token(api: Api) -> None:
    assert api.client.get("/api/v1/devices").status_code == 401
    bad = api.client.get("/api/v1/devices", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    api.store.revoke_tokens("tests", T0)
    assert api.client.get("/api/v1/devices", headers=api.auth).status_code == 401
    # Fleet data never leaks without a token; health and metrics hold none.
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/metrics").status_code == 200


def test_devices_with_last_position_status_and_last_seen(api: Api) -> None:
    devices = {d["device"]: d for d in api.get("/api/v1/devices")["devices"]}
    assert set(devices) == {"van-1", "van-2"}
    last = devices["van-1"]["last_position"]
    assert last["ts"] == iso(T0 + timedelta(seconds=299))
    assert last["speed_kmh"] == 36.0
    assert devices["van-2"]["online"] is True and devices["van-2"]["last_position"] is None
    assert api.client.get("/api/v1/devices/nope", headers=api.auth).status_code == 404


def test_positions_in_a_range_are_what_the_device_sent(api: Api) -> None:
    sent = drive("van-1", 300)
    got = api.get(
        "/api/v1/devices/van-1/positions",
        **{"from": iso(T0 + timedelta(seconds=100)), "to": iso(T0 + timedelta(seconds=160))},
    )
    assert got["count"] == 60 and not got["truncated"]
    assert [(p["seq"], p["lat"], p["lon"], p["ts"]) for p in got["positions"]] == [
        (r["seq"], r["lat"], r["lon"], r["ts"]) for r in sent[100:160]
    ]
    capped = api.get("/api/v1/devices/van-1/positions", limit=10)
    assert capped["count"] == 10 and capped["truncated"]
    naive = api.client.get(
        "/api/v1/devices/van-1/positions", params={"from": "2026-11-23T08:00:00"}, headers=api.auth
    )
    assert naive.status_code == 422 and "time zone" in naive.text


def test_geojson_and_gpx_exports(api: Api) -> None:
    window = {"from": iso(T0), "to": iso(T0 + timedelta(seconds=100))}
    gj = api.get("/api/v1/devices/van-1/positions", format="geojson", events="true", **window)
    assert gj["type"] == "FeatureCollection"
    kinds = [f["properties"]["kind"] for f in gj["features"]]
    assert kinds.count("position") == 100 and kinds.count("track") == 1
    track = next(f for f in gj["features"] if f["properties"]["kind"] == "track")
    assert track["geometry"]["coordinates"][0] == [10.00009, 53.55006]  # [lon, lat]
    assert [
        f["properties"]["type"] for f in gj["features"] if f["properties"]["kind"] == "event"
    ] == ["harsh_braking"]

    r = api.client.get(
        "/api/v1/devices/van-1/positions", params={"format": "gpx", **window}, headers=api.auth
    )
    assert r.headers["content-type"].startswith("application/gpx+xml")
    xmlschema.XMLSchema(GPX_XSD).validate(r.text)  # raises on any violation
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    points = ET.fromstring(r.text).findall(".//g:trkpt", ns)
    assert len(points) == 100
    assert float(points[0].attrib["lat"]) == 53.55006


def test_events_filters_and_live_feed(api: Api) -> None:
    got = api.get("/api/v1/devices/van-1/events", type="harsh_braking,overspeed")
    assert [e["type"] for e in got["events"]] == ["harsh_braking", "overspeed"]
    assert got["events"][0]["data"]["peak_g"] == 0.45 and got["events"][0]["lat"] == 53.551
    window = api.get(
        "/api/v1/events",
        device="van-1",
        **{"from": iso(T0 + timedelta(seconds=100)), "to": iso(T0 + timedelta(seconds=250))},
    )
    assert [e["seq"] for e in window["events"]] == [303, 304]
    latest = api.get("/api/v1/events", limit=2)["events"]
    assert [e["seq"] for e in latest] == [304, 305]  # the newest two, oldest first


def test_trips_replay_and_scorecard(api: Api) -> None:
    (trip,) = api.get("/api/v1/devices/van-1/trips")["trips"]
    assert trip["distance_m"] == 2950.0 and trip["start"] == iso(T0 + timedelta(seconds=5))
    replay = api.get(f"/api/v1/trips/{trip['id']}/replay")
    assert len(replay["positions"]) == 296  # 4 s .. 299 s: the trip and a second either side
    assert {e["type"] for e in replay["events"]} >= {"harsh_braking", "trip_end"}
    card = api.get(
        "/api/v1/devices/van-1/scorecard", **{"from": iso(T0), "to": iso(T0 + timedelta(days=1))}
    )
    assert card["distance_km"] == 2.95
    assert card["harsh"]["harsh_braking"] == 1
    assert card["harsh"]["per_100km"] == pytest.approx(100 / 2.95, abs=0.1)
    assert card["overspeed"]["count"] == 1 and card["overspeed"]["seconds"] == 25.0
    assert api.client.get("/api/v1/trips/999", headers=api.auth).status_code == 404


def test_push_config_validates_geofences_and_publishes_retained(api: Api) -> None:
    zone = {
        "id": "depot",
        "name": "Depot",
        "shape": {"type": "circle", "lat": 53.55, "lon": 10.0, "radius_m": 80},
    }
    r = api.client.put("/api/v1/devices/van-1/config", json={"geofences": [zone]}, headers=api.auth)
    assert r.status_code == 202, r.text
    assert r.json()["version"] == 1 and r.json()["status"] == "pending"
    ((device, name, payload, retain),) = api.sent
    assert (device, name, retain) == ("van-1", "config", True)
    desired = DesiredConfig.model_validate_json(payload)
    assert desired.version == 1 and desired.geofences is not None
    assert desired.geofences[0]["id"] == "depot"

    bad = dict(zone, shape={"type": "circle", "lat": 95, "lon": 10.0, "radius_m": 80})
    r = api.client.put("/api/v1/devices/van-1/config", json={"geofences": [bad]}, headers=api.auth)
    assert r.status_code == 422 and "lat" in r.json()["detail"]
    assert len(api.sent) == 1  # nothing sent for a refused config

    # The device answers; the API shows it.
    from agent.messages import CommandResult

    answer = CommandResult(
        device="van-1", kind="config", version=1, status="applied", running_version=1
    )
    api.bridge.handle("fleet/van-1/cmd/result", answer.model_dump_json().encode())
    got = api.get("/api/v1/devices/van-1/config")
    assert got["status"] == "applied" and got["result_at"] is not None
    assert api.get("/api/v1/devices/van-1")["config_running"] == 1


def test_commands_are_sent_and_their_result_read(api: Api) -> None:
    r = api.client.post(
        "/api/v1/devices/van-1/commands", json={"name": "request_position"}, headers=api.auth
    )
    assert r.status_code == 202, r.text
    sent = r.json()
    assert sent["status"] == "sent"
    ((device, name, payload, retain, ttl_s),) = api.sent
    assert ttl_s == 300.0  # the broker's message expiry under MQTT 5
    cmd = Command.model_validate_json(payload)
    assert (device, name, retain, cmd.id, cmd.name) == (
        "van-1",
        "cmd",
        False,
        sent["id"],
        "request_position",
    )
    assert cmd.expires is not None and cmd.expires == T0 + timedelta(hours=1, minutes=5)

    from agent.messages import CommandResult

    done = CommandResult(
        device="van-1", kind="command", id=cmd.id, name=cmd.name, status="done",
        data={"lat": 53.56}, running_version=0,
    )  # fmt: skip
    # A device cannot answer on another device's topic.
    api.bridge.handle("fleet/van-2/cmd/result", done.model_dump_json().encode())
    assert api.bridge.counts["rejected.device_mismatch"] == 1
    api.bridge.handle("fleet/van-1/cmd/result", done.model_dump_json().encode())
    got = api.get(f"/api/v1/commands/{cmd.id}")
    assert got["status"] == "done" and got["result"]["data"] == {"lat": 53.56}


def test_webhooks_are_managed_without_showing_secrets(api: Api) -> None:
    r = api.client.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["impact", "dtc"]},
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert len(created["secret"]) >= 32
    (listed,) = api.get("/api/v1/webhooks")
    assert listed["id"] == created["id"] and created["secret"] not in json.dumps(listed)
    bad = api.client.post(
        "/api/v1/webhooks", json={"url": "ftp://x", "event_types": ["impact"]}, headers=api.auth
    )
    assert bad.status_code == 422
    assert (
        api.client.delete(f"/api/v1/webhooks/{created['id']}", headers=api.auth).status_code == 204
    )
    assert api.get("/api/v1/webhooks") == []


def test_metrics_count_rejects_per_reason(api: Api) -> None:
    api.bridge.handle("fleet/van-1/telemetry", b"{not json")
    api.bridge.handle("fleet/van-1/telemetry", b"x" * 300_000)
    api.bridge.handle(
        "fleet/van-9/telemetry", batch("van-1", drive("van-1", 1)).model_dump_json().encode()
    )
    text = api.client.get("/metrics").text
    assert 'bridge_rejected_total{reason="invalid_json"} 1.0' in text
    assert 'bridge_rejected_total{reason="oversized"} 1.0' in text
    assert 'bridge_rejected_total{reason="device_mismatch"} 1.0' in text
    assert 'bridge_records_total{outcome="stored"} 305.0' in text
    assert 'bridge_rows{table="positions"} 300.0' in text
    assert "bridge_database_up 1.0" in text


def test_committed_openapi_spec_is_current() -> None:
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == openapi_spec(), "regenerate: telematics-bridge openapi > docs/openapi.json"
