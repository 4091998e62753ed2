"""The c1 encoding carries exactly the Batch the JSON encoding carries, in fewer bytes."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import compact
from agent.messages import (
    Batch,
    EventData,
    ObdData,
    PositionData,
    batch_json,
    record_body,
    with_seq,
)

EPOCH = "0123456789abcdef0123456789abcdef"
SENT = datetime(2026, 3, 2, 8, 14, 3, 120000, tzinfo=UTC)


def _both(rows: list[tuple[int, str]]) -> tuple[Batch, Batch, bytes, str]:
    text = batch_json("van-042", EPOCH, SENT, [with_seq(b, s) for s, b in rows])
    blob = compact.encode("van-042", EPOCH, SENT, rows)
    assert compact.is_compact(blob) and not compact.is_compact(text.encode())
    return Batch.model_validate_json(text), Batch.model_validate(compact.decode(blob)), blob, text


def _drive(n: int, start: datetime) -> list[tuple[int, str]]:
    """A straight 1 Hz run with receiver-like jitter in every field."""
    rows = []
    for i in range(n):
        p = PositionData(
            ts=start + timedelta(seconds=i),
            lat=round(52.3702157 + i * 0.0000931 + (i % 3) * 3e-7, 7),
            lon=round(4.8951679 + i * 0.0001733 - (i % 5) * 2e-7, 7),
            alt=round(2.1 + (i % 4) * 0.3, 1),
            speed=round(12.47 + (i % 7) * 0.11, 2),
            course=round(87.3 + (i % 3) * 0.4, 1),
            mode=3,
            sats=11 + i % 2,
            hdop=0.8,
            reason="periodic",
        )
        rows.append((100 + i, record_body(p)))
    return rows


def test_a_drive_round_trips_and_is_a_tenth_of_json() -> None:
    rows = _drive(30, datetime(2026, 3, 2, 8, 14, 2, tzinfo=UTC))
    via_json, via_c1, blob, text = _both(rows)
    assert via_c1 == via_json
    assert len(via_c1.records) == 30
    # 30 positions: the JSON is ~5.6 kB, c1 a few hundred bytes.
    assert len(blob) * 10 < len(text.encode()), (len(blob), len(text))


def test_events_obd_and_odd_positions_travel_whole_in_order() -> None:
    t = datetime(2026, 3, 2, 8, 0, 0, 250000, tzinfo=UTC)
    rows = _drive(3, t)
    rows.append((103, record_body(EventData(ts=t, type="harsh_braking", data={"peak_g": 0.52}))))
    rows.append((104, record_body(ObdData(ts=t, signals={"Vehicle.Speed": 51.0}))))
    # Finer than the column scale (a producer other than our sampler): kept exactly.
    fine = PositionData(ts=t, lat=52.123456789, lon=4.9, mode=2, reason="requested")
    rows.append((105, record_body(fine)))
    via_json, via_c1, blob, _ = _both(rows)
    assert via_c1 == via_json
    assert [r.seq for r in via_c1.records] == [100, 101, 102, 103, 104, 105]
    inner = json.loads(zlib.decompress(blob))
    assert [r["seq"] for r in inner["other"]] == [103, 104, 105]
    assert inner["pos"]["tu"] == 1000  # 250 ms fixes: millisecond time unit


positions = st.builds(
    PositionData,
    ts=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    lat=st.integers(-900_000_000, 900_000_000).map(lambda v: v / 1e7),
    lon=st.floats(-180, 180),
    alt=st.none() | st.integers(-5000, 90000).map(lambda v: v / 10),
    speed=st.none() | st.integers(0, 10000).map(lambda v: v / 100),
    course=st.none() | st.integers(0, 3599).map(lambda v: v / 10),
    mode=st.sampled_from([2, 3]),
    sats=st.none() | st.integers(0, 255),
    hdop=st.none() | st.integers(0, 9999).map(lambda v: v / 100),
    reason=st.sampled_from(["first", "periodic", "heading", "distance", "heartbeat"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(positions, min_size=1, max_size=60), st.integers(1, 2**40))
def test_any_batch_round_trips_exactly(points: list[PositionData], first_seq: int) -> None:
    rows = [(first_seq + i * 3, record_body(p)) for i, p in enumerate(points)]
    via_json, via_c1, _, _ = _both(rows)
    assert via_c1 == via_json


def _c1(obj: object) -> bytes:
    return zlib.compress(json.dumps(obj).encode())


GOOD = json.loads(zlib.decompress(compact.encode("v", EPOCH, SENT, _drive(2, SENT))))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"x\x9c not zlib at all", "not a zlib stream"),
        (zlib.compress(b"\0" * (compact.MAX_DECODED_BYTES + 1)), "decompresses to more than"),
        (zlib.compress(b"{}")[:-3], "truncated"),
        (zlib.compress(b"[1, 2]"), "format marker"),
        (_c1({**GOOD, "c": 2}), "format marker"),
        (_c1({**GOOD, "extra": 1}), "unknown keys"),
        (_c1({**GOOD, "pos": {**GOOD["pos"], "lat": [1]}}), "pos.lat must be a list of 2"),
        (_c1({**GOOD, "pos": {**GOOD["pos"], "seq": [1, 1.5]}}), "expected an integer"),
        (_c1({**GOOD, "pos": {**GOOD["pos"], "reason": [0, 7]}}), "not an index"),
        (_c1({**GOOD, "pos": {**GOOD["pos"], "tu": 60}}), "pos.tu"),
        (_c1({**GOOD, "pos": {**GOOD["pos"], "ts": [10**15, 0]}}), "out of range"),
    ],
)
def test_malformed_payloads_say_what_is_wrong(payload: bytes, why: str) -> None:
    with pytest.raises(compact.CompactError, match=why):
        compact.decode(payload)
