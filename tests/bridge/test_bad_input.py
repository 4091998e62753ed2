"""Payloads the schema admits but a database refuses, and other poison: rejected, not fatal.

A worker that exited on such a message would get it again at every restart
(persistent session) and its share of the fleet would stop for good.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.messages import Status
from cloud_bridge.storage import BridgeStore
from cloud_bridge.subscriber import Bridge, BridgeSettings
from tests.bridge.fleetdata import EPOCH, T0, batch, drive


def raw_events(data_json: str, seq: int = 1) -> bytes:
    return (
        f'{{"v":1,"device":"van-1","epoch":"{EPOCH}","sent":null,"records":['
        f'{{"seq":{seq},"kind":"event","ts":"2026-11-23T08:00:00Z","type":"dtc","data":{data_json}}}]}}'
    ).encode()


@pytest.fixture
def bridge(db_url: str) -> Bridge:
    return Bridge(BridgeStore(db_url), BridgeSettings())


def test_values_the_database_refuses_are_rejected_and_the_bridge_goes_on(
    bridge: Bridge,
) -> None:
    bridge.handle("fleet/van-1/events", raw_events('{"code":"P0301","x":NaN}', 1))
    bridge.handle("fleet/van-1/events", raw_events('{"code":"P0301\\u0000"}', 2))
    result = (
        '{"v":1,"device":"van-1","kind":"config","version":1,"status":"applied",'
        '"running_version":4294967296}'
    )
    bridge.handle("fleet/van-1/cmd/result", result.encode())
    assert bridge.fatal is None
    # Still storing: the next good batch goes in.
    good = batch("van-1", drive("van-1", 3)).model_dump_json().encode()
    bridge.handle("fleet/van-1/telemetry", good)
    counts = bridge.store.reject_counts()
    assert counts["invalid_schema"] == 1  # the version does not fit the protocol
    if bridge.store.dialect == "postgres":  # jsonb refuses NaN and NUL
        assert counts == {"invalid_schema": 1, "unstorable": 2}
        assert bridge.counts["stored"] == 3
    else:  # SQLite keeps JSON as text: both events are stored as sent
        assert counts == {"invalid_schema": 1}
        assert bridge.counts["stored"] == 5


def test_rejects_are_logged_once_a_minute_per_reason(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="cloud_bridge.subscriber")
    t = T0.timestamp()
    for i in range(50):
        bridge.handle("fleet/van-1/telemetry", b"{not json", received_at=t + i)
    bridge.handle("fleet/van-1/telemetry", b"{not json", received_at=t + 61)
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 2
    assert "49 more invalid_json" in lines[1]
    assert bridge.store.reject_counts() == {"invalid_json": 51}


def test_a_retained_status_replayed_at_subscribe_does_not_make_a_device_seen(
    bridge: Bridge,
) -> None:
    store = bridge.store
    week_ago = T0 - timedelta(days=7)
    status = Status(device="van-1", state="offline", ts=week_ago)
    bridge.handle("fleet/van-1/status", status.model_dump_json().encode(), T0.timestamp(), True)
    (dev,) = store.devices()
    assert dev.last_seen == week_ago and dev.state == "offline"
    # An older status arriving late (another worker, a replay) does not win.
    old = Status(device="van-1", state="online", ts=week_ago - timedelta(hours=1))
    bridge.handle("fleet/van-1/status", old.model_dump_json().encode(), T0.timestamp())
    assert store.devices()[0].state == "offline"
    fresh = Status(device="van-1", state="online", ts=T0)
    bridge.handle("fleet/van-1/status", fresh.model_dump_json().encode(), T0.timestamp())
    (dev,) = store.devices()
    assert dev.state == "online" and dev.last_seen == T0
