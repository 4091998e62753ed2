"""The outbox inside its caps: thin routine positions, keep events, survive full and corrupt files."""

from __future__ import annotations

import itertools
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.buffer.outbox import Outbox
from agent.buffer.trim import Caps, keep_mask
from agent.clock import Clock
from agent.config import parse_config
from agent.messages import EventData, PositionData, Stream, record_body
from agent.runtime import Agent, gps_source

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
KB = 1024


def position(i: int) -> tuple[str, float]:
    ts = T0 + timedelta(seconds=i)
    p = PositionData(
        ts=ts,
        lat=round(52 + i * 1e-5, 7),
        lon=round(5 + (i % 600) * 1e-5, 7),
        speed=12.5,
        course=90.0,
        mode=3,
        sats=9,
        hdop=0.9,
        reason="periodic",
    )
    return record_body(p), ts.timestamp()


def event(i: int) -> tuple[str, float]:
    ts = T0 + timedelta(seconds=i)
    return record_body(EventData(ts=ts, type="stop_start", data={"i": i})), ts.timestamp()


def add_event(box: Outbox, i: int) -> int:
    body, ts = event(i)
    return box.add("events", body, ts=ts)


def fill(box: Outbox, seconds: int, event_every: int = 600, check=None) -> list[int]:  # type: ignore[no-untyped-def]
    """Seconds of 1 Hz positions, an event every ``event_every`` s, committed each minute."""
    events = []
    for i in range(seconds):
        body, ts = position(i)
        box.add("telemetry", body, ts=ts)
        if i % event_every == 0:
            body, ts = event(i)
            events.append(box.add("events", body, ts=ts))
        if i % 60 == 59:
            box.commit()
            if check is not None:
                check()
    box.commit()
    return events


def rows(box: Outbox, stream: Stream) -> list[tuple[int, dict]]:  # type: ignore[type-arg]
    return [(s, json.loads(b)) for s, b in box.next_batch(stream, 0, 10**7, 10**12)]


def test_keep_mask_keeps_the_first_then_every_nth() -> None:
    assert keep_mask(9, 4) == [True, False, False, False, True, False, False, False, True]


def test_positions_are_thinned_oldest_first_and_every_event_is_kept(tmp_path: Path) -> None:
    caps = Caps(soft_bytes=512 * KB, hard_bytes=4096 * KB, keep_every=4, reserve_bytes=0)
    box = Outbox(tmp_path / "o.sqlite", "van-1", caps=caps)
    highest = [0]

    def under_cap() -> None:
        highest[0] = max(highest[0], box.used_bytes())

    events = fill(box, 6 * 3600, check=under_cap)  # six hours offline
    positions = rows(box, "telemetry")
    assert highest[0] <= caps.soft_bytes + 64 * KB  # a commit's worth over, then trimmed
    assert [s for s, _ in rows(box, "events")] == events  # all 36 events, in order
    assert box.trimmed["thinned"] > 15_000 and box.trimmed["dropped"] == 0
    assert len(positions) + box.trimmed["thinned"] == 6 * 3600
    # The oldest stretch is the sparsest, the newest is whole: spacing grows with age.
    times = [datetime.fromisoformat(r["ts"]) for _, r in positions]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert max(gaps[: len(gaps) // 10]) >= 16  # thinned twice: every 16th second
    assert set(gaps[-len(gaps) // 5 :]) == {1.0}  # the newest stretch is whole
    told = box.take_trimmed()
    assert told is not None and told.thinned == box.trimmed["thinned"]
    assert box.take_trimmed() is None
    box.close()
    again = Outbox(tmp_path / "o.sqlite", "van-1", caps=caps)
    assert again.trimmed["thinned"] == told.thinned  # counts survive a restart
    again.close()


def test_the_hard_cap_drops_the_oldest_events_only_when_nothing_routine_is_left(
    tmp_path: Path,
) -> None:
    caps = Caps(soft_bytes=128 * KB, hard_bytes=256 * KB, reserve_bytes=0)
    box = Outbox(tmp_path / "o.sqlite", "van-1", caps=caps)
    fill(box, 600, event_every=10**9)  # some positions first
    first = [add_event(box, i) for i in range(3000)]
    box.commit()
    assert box.used_bytes() <= caps.hard_bytes
    assert box.trimmed["dropped_events"] > 0
    kept = [s for s, _ in rows(box, "events")]
    assert kept == first[-len(kept) :]  # the newest events are the ones kept
    assert len(rows(box, "telemetry")) <= 1  # routine rows went before any event
    box.close()


def test_routine_telemetry_older_than_max_age_expires_events_do_not(tmp_path: Path) -> None:
    caps = Caps(soft_bytes=10**9, hard_bytes=10**9, max_age_s=3600, reserve_bytes=0)
    minutes = itertools.count(0.0, 60.0)  # the age cap is checked once a minute
    box = Outbox(tmp_path / "o.sqlite", "van-1", caps=caps, mono=lambda: next(minutes))
    events = fill(box, 3 * 3600)
    times = [datetime.fromisoformat(r["ts"]) for _, r in rows(box, "telemetry")]
    assert (times[-1] - times[0]).total_seconds() <= 3600 + 60
    assert box.trimmed["expired"] >= 2 * 3600 - 60
    assert [s for s, _ in rows(box, "events")] == events
    box.close()


def test_a_full_disk_is_met_by_thinning_and_nothing_waits_in_memory(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", "van-1", caps=Caps(10**9, 10**9, reserve_bytes=0))
    earlier = fill(box, 3600, event_every=10**9)
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
    events = [add_event(box, i) for i in range(200)]
    assert box.commit() == 200, box.last_error  # room made inside the file
    assert box.last_error is None and box.trimmed["thinned"] > 0
    assert [s for s, _ in rows(box, "events")] == earlier + events
    box.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_file_is_quarantined_and_a_new_epoch_starts(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, "van-1")
    fill(box, 3600)
    old_epoch = box.epoch
    box.close()
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not SQLite at all" * 100)
    else:
        path.write_bytes(data[: len(data) // 2])  # a power cut mid-copy
    box = Outbox(path, "van-1")
    assert box.quarantined is not None and ".corrupt-" in box.quarantined
    moved = list(tmp_path.glob("o.sqlite.corrupt-*"))
    assert moved and moved[0].read_bytes()[:16] in (data[:16], b"this is not SQLi")
    assert box.epoch != old_epoch and box.last_seq == 0
    box.add("telemetry", position(1)[0], ts=position(1)[1])
    assert box.commit() == 1
    box.close()


def test_without_quarantine_a_corrupt_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"\0garbage" * 512)
    from agent.buffer.outbox import OutboxError

    with pytest.raises(OutboxError, match="not a database"):
        Outbox(path, "van-1", quarantine=False)


def test_the_agent_reports_a_quarantined_buffer(tmp_path: Path) -> None:
    (tmp_path / "o.sqlite").write_bytes(b"garbage" * 1000)
    cfg = parse_config(
        {
            "device": {"id": "van-1"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {"path": str(tmp_path / "o.sqlite"), "commit_interval_s": 0},
        },
        {},
    )
    agent = Agent(cfg, gps_source(cfg.gps), clock=Clock("system", synced=lambda: True))
    assert ".corrupt-" in agent.health()["outbox_quarantined"]
    agent._release_untimed()
    agent.outbox.commit()
    types = [json.loads(b)["type"] for _, b in agent.outbox.next_batch("events", 0, 10, 10**6)]
    assert types == ["agent_started", "buffer_quarantined"]
    agent.outbox.close()


def test_sqlite_rejects_what_quick_check_rejects(tmp_path: Path) -> None:
    """Guard for the quarantine test: a half file really is unreadable to SQLite."""
    path = tmp_path / "x.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [("y" * 100,)] * 5000)
    db.commit()
    db.close()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()
        raise AssertionError("quick_check passed a half file")  # pragma: no cover


def test_the_agent_tells_the_backend_what_the_caps_removed(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "device": {"id": "van-1"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {
                "path": str(tmp_path / "o.sqlite"),
                "max_mb": 1,
                "hard_max_mb": 2,
                "reserve_mb": 0,
            },
        },
        {},
    )
    agent = Agent(cfg, gps_source(cfg.gps), clock=Clock("system", synced=lambda: True))
    for i in range(8000):  # about 2 MB of positions
        ts = T0 + timedelta(seconds=i)
        agent._emit("telemetry", PositionData(ts=ts, lat=52.0, lon=5.0, mode=3, reason="periodic"))
        if i % 60 == 59:
            agent.outbox.commit()
    agent._tell_trimmed()
    agent._tell_trimmed()  # nothing new: no second event
    agent.outbox.commit()
    told = [
        json.loads(b)
        for _, b in agent.outbox.next_batch("events", 0, 100, 10**6)
        if json.loads(b)["type"] == "buffer_trimmed"
    ]
    assert len(told) == 1
    data = told[0]["data"]
    assert data["thinned"] == agent.outbox.trimmed["thinned"] > 1000
    assert data["first_seq"] < data["last_seq"] and data["keep_every"] == 4
    assert agent.health()["outbox"]["thinned"] == data["thinned"]
    agent.outbox.close()
