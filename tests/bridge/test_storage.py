"""Bridge storage on SQLite and on a real PostgreSQL server: same behaviour, same answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agent.messages import CommandResult, Status
from cloud_bridge.db import Database, describe_url
from cloud_bridge.migrations import MIGRATIONS, schema_version
from cloud_bridge.storage import BridgeStore
from tests.bridge.fleetdata import EPOCH, T0, batch, drive, event, position, trip_end


@pytest.fixture
def store(db_url: str) -> Iterator[BridgeStore]:
    s = BridgeStore(db_url)
    yield s
    s.close()


def test_positions_round_trip_in_time_order_and_range(store: BridgeStore) -> None:
    sent = drive("van-1", 100)
    # Sent out of order in two batches, the second one twice (a broker redelivery).
    r1 = store.store_batch("telemetry", batch("van-1", sent[50:]), T0)
    r2 = store.store_batch("telemetry", batch("van-1", sent[:50]), T0 + timedelta(seconds=1))
    r3 = store.store_batch("telemetry", batch("van-1", sent[:50]), T0 + timedelta(seconds=2))
    assert (r1.stored, r2.stored, r3.stored, r3.duplicates) == (50, 50, 0, 50)

    got = store.positions("van-1")
    assert [p.seq for p in got] == list(range(1, 101))
    assert [(p.lat, p.lon, p.speed, p.course, p.sats, p.hdop) for p in got] == [
        (r["lat"], r["lon"], 10.0, 45.0, 9, 0.8) for r in sent
    ]
    assert got[0].ts == T0 and got[0].ts.tzinfo is not None

    window = store.positions("van-1", T0 + timedelta(seconds=10), T0 + timedelta(seconds=20))
    assert [p.seq for p in window] == list(range(11, 21))  # [from, to)
    assert store.positions("van-2") == []

    (dev,) = store.devices()
    assert dev.device == "van-1" and dev.last_position is not None
    assert dev.last_position.seq == 0 and dev.last_position.lat == sent[-1]["lat"]
    assert dev.last_position.ts == T0 + timedelta(seconds=99)


def test_events_filter_by_type_device_time_and_arrival(store: BridgeStore) -> None:
    evs = [
        event(1, 10, "geofence_enter", {"zone_id": "depot"}, lat=53.55, lon=10.0),
        event(2, 20, "harsh_braking", {"peak_g": 0.45}),
        event(3, 30, "geofence_exit", {"zone_id": "depot"}),
        event(4, 40, "harsh_braking", {"peak_g": 0.52}),
    ]
    r = store.store_batch("events", batch("van-1", evs), T0 + timedelta(minutes=1))
    assert r.stored == 4 and [e.seq for e in r.new_events] == [1, 2, 3, 4]
    store.store_batch("events", batch("van-2", [event(1, 15, "impact")]), T0 + timedelta(minutes=2))

    braking = store.events("van-1", ["harsh_braking"])
    assert [(e.seq, e.data["peak_g"]) for e in braking] == [(2, 0.45), (4, 0.52)]
    assert [e.seq for e in store.events("van-1", None, T0 + timedelta(seconds=20))] == [2, 3, 4]
    assert [e.device for e in store.events(types=["impact", "geofence_enter"])] == [
        "van-1",
        "van-2",
    ]
    # The live feed: what arrived after a moment, by arrival.
    after = store.events(received_after=T0 + timedelta(seconds=90))
    assert [(e.device, e.type) for e in after] == [("van-2", "impact")]
    assert store.events("van-1", ["geofence_enter"])[0].lat == 53.55
    # Redelivered: nothing new, so no webhook is queued twice.
    again = store.store_batch("events", batch("van-1", evs[:2]), T0 + timedelta(minutes=3))
    assert (again.stored, again.duplicates, again.new_events) == (0, 2, [])


def test_trip_end_becomes_a_trip(store: BridgeStore) -> None:
    store.store_batch(
        "events",
        batch("van-1", [event(1, 0, "trip_start"), trip_end(2, 0, 600, 4321.5, idle_s=45.0)]),
        T0 + timedelta(minutes=11),
    )
    (trip,) = store.trips("van-1")
    assert (trip.start, trip.end) == (T0, T0 + timedelta(seconds=600))
    assert (trip.distance_m, trip.duration_s, trip.idle_s) == (4321.5, 600.0, 45.0)
    assert trip.harsh == {"harsh_braking": 1}
    assert store.trip(trip.id) == trip
    assert store.trips("van-1", T0 + timedelta(seconds=1)) == []  # started before


def test_status_obd_and_records_as_sent(store: BridgeStore) -> None:
    store.store_status(Status(device="van-1", state="online", epoch=EPOCH), T0)
    records = [
        position(1, 0),
        {"seq": 2, "kind": "obd", "ts": "2026-11-23T08:00:01Z", "signals": {"Vehicle.Speed": 31.0}},
    ]
    store.store_batch("telemetry", batch("van-1", records), T0)
    store.store_batch("events", batch("van-1", [event(3, 2, "engine_on")]), T0)
    (dev,) = store.devices()
    assert dev.state == "online" and dev.status is not None and dev.status["epoch"] == EPOCH
    assert [(r["seq"], r["kind"]) for r in store.records("van-1")] == [
        (1, "position"),
        (2, "obd"),
        (3, "event"),
    ]
    assert next(iter(store.records("van-1", "telemetry")))["lat"] == 53.55
    assert store.summary()[0]["obd"] == 1


def test_same_batch_from_two_workers_at_once_is_stored_once(db_url: str) -> None:
    """Shared subscriptions can hand a redelivered message to another worker."""
    stores = [BridgeStore(db_url) for _ in range(2)]
    records = drive("van-1", 200)
    results = []

    def work(s: BridgeStore) -> None:
        for i in range(0, 200, 20):
            results.append(s.store_batch("telemetry", batch("van-1", records[i : i + 20]), T0))

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.stored for r in results) == 200
    assert sum(r.duplicates for r in results) == 200
    assert [p.seq for p in stores[0].positions("van-1")] == list(range(1, 201))
    for s in stores:
        s.close()


def test_config_and_command_lifecycle(store: BridgeStore) -> None:
    store.store_status(Status(device="van-1", state="online"), T0)
    v1 = store.add_config("van-1", {"geofences": []}, T0)
    v2 = store.add_config("van-1", {"geofences": []}, T0)
    assert (v1, v2) == (1, 2)
    row = store.config("van-1")
    assert row is not None and row["version"] == 2 and row["status"] == "pending"
    assert row["config"] == {"geofences": [], "version": 2}
    answer = CommandResult(
        device="van-1", kind="config", version=2, status="applied", running_version=2
    )
    assert store.store_result(answer, T0)
    row = store.config("van-1")
    assert row is not None and row["status"] == "applied"
    assert store.devices()[0].config_running == 2
    # An answer to something this bridge never sent is reported as such.
    stray = answer.model_copy(update={"version": 7})
    assert not store.store_result(stray, T0)

    store.add_command("c1", "van-1", "request_position", {}, T0, T0 + timedelta(minutes=5))
    cmd = store.command("c1")
    assert cmd is not None and cmd["status"] == "sent" and cmd["result"] is None
    done = CommandResult(
        device="van-1",
        kind="command",
        id="c1",
        name="request_position",
        status="done",
        data={"lat": 53.5},
        running_version=2,
    )
    assert store.store_result(done, T0 + timedelta(seconds=2))
    cmd = store.command("c1")
    assert cmd is not None and cmd["status"] == "done" and cmd["result"]["data"] == {"lat": 53.5}
    assert cmd["result_at"] == T0 + timedelta(seconds=2)
    # Another device cannot answer for van-1's command.
    assert not store.store_result(done.model_copy(update={"device": "van-2"}), T0)


def test_tokens_are_stored_hashed_and_revocable(store: BridgeStore) -> None:
    token = store.add_token("dispatch", T0)
    assert store.token_name(token) == "dispatch"
    assert store.token_name(token + "x") is None
    stored = store.db.query("SELECT token_sha256 FROM api_tokens")
    assert token not in str(stored)
    assert store.revoke_tokens("dispatch", T0) == 1
    assert store.token_name(token) is None


def test_rejects_are_counted_by_reason(store: BridgeStore) -> None:
    store.store_reject("fleet/x/telemetry", "invalid_json", "line 1", 10, T0)
    store.store_reject("fleet/x/telemetry", "invalid_json", "line 2", 10, T0)
    store.store_reject("fleet/y/events", "oversized", "300000 bytes", 300000, T0)
    assert store.reject_counts() == {"invalid_json": 2, "oversized": 1}


def test_migrations_apply_once_and_record_the_version(db_url: str) -> None:
    a = BridgeStore(db_url)
    b = BridgeStore(db_url)  # a second worker starting: nothing to do
    assert schema_version(a.db) == MIGRATIONS[-1][0]
    assert b.db.scalar("SELECT COUNT(*) FROM schema_migrations") == len(MIGRATIONS)
    a.close()
    b.close()


def test_url_in_logs_hides_the_password(tmp_path: Path) -> None:
    assert describe_url("postgresql://bridge:s3cret@db:5432/fleet") == (
        "postgresql://bridge:***@db:5432/fleet"
    )
    assert describe_url(str(tmp_path / "b.sqlite")) == str(tmp_path / "b.sqlite")
    assert describe_url("postgresql://db/fleet?user=b&password=s3cret&sslmode=require") == (
        "postgresql://db/fleet?user=b&password=***&sslmode=require"
    )
    assert describe_url("host=db password=s3cret dbname=fleet") == (
        "host=db password=*** dbname=fleet"
    )
    db = Database(str(tmp_path / "x.sqlite"))
    assert db.dialect == "sqlite"
    db.close()


def test_every_worker_storing_the_first_status_of_new_devices_at_once(db_url: str) -> None:
    """Status is not shared between workers: all of them write it, first ones included."""
    stores = [BridgeStore(db_url) for _ in range(3)]
    errors: list[BaseException] = []

    def work(s: BridgeStore) -> None:
        try:
            for i in range(40):
                s.store_status(Status(device=f"van-{i}", state="online", ts=T0), T0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stores[0].devices()) == 40
    for s in stores:
        s.close()
