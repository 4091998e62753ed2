"""The one schema: generated JSON Schema is current, agent payloads validate at the bridge."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.messages import (
    Batch,
    EventData,
    Position,
    PositionData,
    Status,
    batch_json,
    json_schema_text,
    record_body,
    with_seq,
)

SCHEMA = Path(__file__).resolve().parent.parent / "agent" / "schema" / "messages.schema.json"
EPOCH = "0123456789abcdef0123456789abcdef"
T0 = datetime(2026, 3, 2, 8, 0, 0, 500000, tzinfo=UTC)


def test_committed_json_schema_is_current() -> None:
    assert SCHEMA.read_text() == json_schema_text(), (
        "agent/schema/messages.schema.json is stale: "
        "python -m agent.messages > agent/schema/messages.schema.json"
    )


def test_agent_batch_validates_with_the_bridge_model() -> None:
    pos = PositionData(
        ts=T0, lat=51.5, lon=-0.12, speed=13.9, course=359.9, mode=3, reason="periodic"
    )
    ev = EventData(ts=T0, type="gps_fix_lost", lat=51.5, lon=-0.12, data={"mode": 1})
    payload = batch_json(
        "van-1", EPOCH, T0, [with_seq(record_body(pos), 7), with_seq(record_body(ev), 8)]
    )
    batch = Batch.model_validate_json(payload)
    assert [r.seq for r in batch.records] == [7, 8]
    first = batch.records[0]
    assert isinstance(first, Position)
    assert (first.lat, first.lon, first.speed, first.ts) == (51.5, -0.12, 13.9, T0)
    assert batch.sent == T0
    assert json.loads(payload)["sent"] == "2026-03-02T08:00:00.500000Z"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(device="bad device"),
        lambda d: d.update(epoch="xyz"),
        lambda d: d.update(v=2),
        lambda d: d.update(extra=1),
        lambda d: d["records"][0].update(lat=91),
        lambda d: d["records"][0].update(seq=0),
        lambda d: d["records"][0].update(ts="2026-03-02T08:00:00"),  # naive time
        lambda d: d["records"][0].update(ts="2026-03-02T08:00:00+14:00"),  # not UTC
        lambda d: d["records"][0].update(alt=float("inf")),
        lambda d: d["records"][0].update(kind="teleport"),
        lambda d: d.update(records=[]),
    ],
)
def test_bridge_rejects_malformed(mutate) -> None:  # type: ignore[no-untyped-def]
    pos = PositionData(ts=T0, lat=1, lon=2, mode=2, reason="first")
    data = json.loads(batch_json("van-1", EPOCH, None, [with_seq(record_body(pos), 1)]))
    Batch.model_validate(data)
    mutate(data)
    with pytest.raises(ValidationError):
        Batch.model_validate(data)


def test_status_round_trip() -> None:
    s = Status(device="van-1", state="online", epoch=EPOCH, ts=T0, last_seq=12)
    assert Status.model_validate_json(s.model_dump_json()) == s
