"""Outbox: durable before publish, deleted only on ack, seq never backwards, kill -9 safe."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.buffer.outbox import Outbox, OutboxError


class FakeMono:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_only_committed_rows_are_visible(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", "van-1")
    assert box.add("telemetry", '{"kind":"position"}') == 1
    assert box.next_batch("telemetry", 0, 10, 10_000) == []
    assert box.commit() == 1
    assert box.next_batch("telemetry", 0, 10, 10_000) == [(1, '{"kind":"position"}')]


def test_group_commit_window(tmp_path: Path) -> None:
    mono = FakeMono()
    box = Outbox(tmp_path / "o.sqlite", "van-1", commit_interval_s=1.0, mono=mono)
    box.add("telemetry", "{}")
    mono.t = 0.9
    assert not box.commit_due()
    mono.t = 1.0
    assert box.commit_due()


def test_ack_deletes_and_seq_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, "van-1")
    for i in range(5):
        box.add("telemetry" if i % 2 else "events", f'{{"i":{i}}}')
    box.commit()
    assert box.next_batch("events", 0, 10, 10_000) == [
        (1, '{"i":0}'),
        (3, '{"i":2}'),
        (5, '{"i":4}'),
    ]
    box.ack([1, 2, 3, 4, 5])
    box.commit()
    assert box.depth() == {"telemetry": 0, "events": 0, "uncommitted": 0}
    epoch = box.epoch
    box.close()
    again = Outbox(path, "van-1")
    assert again.epoch == epoch
    assert again.add("telemetry", "{}") == 6  # never backwards, even with an empty table


def test_new_database_new_epoch(tmp_path: Path) -> None:
    a = Outbox(tmp_path / "a.sqlite", "van-1")
    b = Outbox(tmp_path / "b.sqlite", "van-1")
    assert a.epoch != b.epoch and len(a.epoch) == 32


def test_other_devices_database_is_refused(tmp_path: Path) -> None:
    Outbox(tmp_path / "o.sqlite", "van-1").close()
    with pytest.raises(OutboxError, match="belongs to device 'van-1'"):
        Outbox(tmp_path / "o.sqlite", "van-2")


def test_batch_size_bounds(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", "van-1")
    for _ in range(10):
        box.add("telemetry", "x" * 100)
    box.commit()
    assert len(box.next_batch("telemetry", 0, 4, 1_000_000)) == 4
    assert len(box.next_batch("telemetry", 0, 100, 350)) == 3
    assert len(box.next_batch("telemetry", 0, 100, 10)) == 1  # always progress


def test_disk_failure_keeps_records_pending(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, "van-1")
    box.add("telemetry", "{}")
    # Another connection holds the write lock: the commit fails like a full disk would.
    blocker = sqlite3.connect(path, timeout=0)
    box._db.execute("PRAGMA busy_timeout=0")
    blocker.execute("BEGIN IMMEDIATE")
    assert box.commit() == 0
    assert box.last_error is not None and "locked" in box.last_error
    assert box.depth()["uncommitted"] == 1
    blocker.rollback()
    assert box.commit() == 1
    assert box.last_error is None


WRITER = textwrap.dedent(
    """
    import sys, time
    from agent.buffer.outbox import Outbox
    box = Outbox(sys.argv[1], "van-1", commit_interval_s=0)
    n = 0
    while True:
        n += 1
        seq = box.add("telemetry", '{"n":%d}' % n)
        box.commit()
        print(seq, flush=True)
    """
)


def test_kill_9_loses_nothing_committed(tmp_path: Path) -> None:
    """Every seq the writer reported committed is in the file after SIGKILL."""
    path = tmp_path / "o.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    reported = [int(proc.stdout.readline()) for _ in range(300)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    box = Outbox(path, "van-1")
    stored = [seq for seq, _ in box.next_batch("telemetry", 0, 100_000, 10**9)]
    assert stored[: len(reported)] == reported
    assert stored == list(range(1, len(stored) + 1))  # gap-free
    assert box.add("telemetry", "{}") == stored[-1] + 1


def test_second_process_on_the_same_outbox_is_refused(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "o.sqlite", "van-1")
    with pytest.raises(OutboxError, match="in use by another process"):
        Outbox(tmp_path / "o.sqlite", "van-1")
    first.close()
    Outbox(tmp_path / "o.sqlite", "van-1").close()  # free again once closed


def test_full_disk_keeps_records_and_recovers_without_gaps(tmp_path: Path) -> None:
    """SQLITE_FULL ("database or disk is full"), produced by SQLite itself via
    max_page_count: records stay pending, nothing crashes, and once space is
    back every record lands with gap-free sequence numbers."""
    box = Outbox(tmp_path / "o.sqlite", "van-1", commit_interval_s=0)
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    body = '{"kind":"position","pad":"' + "x" * 400 + '"}'
    committed = 0
    for _ in range(200):
        box.add("telemetry", body)
        committed += box.commit()
        if box.last_error:
            break
    assert box.last_error is not None and "full" in box.last_error
    assert 0 < committed < 200
    for _ in range(20):  # the van keeps driving while the disk is full
        box.add("telemetry", body)
        assert box.commit() == 0
    pending = box.depth()["uncommitted"]
    assert pending > 20
    box._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
    assert box.commit() == pending
    assert box.last_error is None
    seqs = [seq for seq, _ in box.next_batch("telemetry", 0, 10_000, 10**9)]
    assert seqs == list(range(1, committed + pending + 1))


def test_device_state_survives_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", "van-1")
    assert box.get_state("config") is None
    box.set_state("config", '{"version": 3}')
    box.set_state("config", '{"version": 4}')
    box.close()
    again = Outbox(tmp_path / "o.sqlite", "van-1")
    assert again.get_state("config") == '{"version": 4}'
    assert again.epoch == box.epoch


def test_outbox_from_before_the_priority_lane_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,"
        " body TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('device', 'van-7'), ('epoch', 'e' || hex(randomblob(15)));"
        "INSERT INTO outbox (stream, body) VALUES ('telemetry', '{\"kind\":\"position\"}');"
    )
    db.commit()
    db.close()
    box = Outbox(path, "van-7")
    try:
        assert box.next_batch("telemetry", 0, 10, 10_000) == [(1, '{"kind":"position"}')]
        box.add("events", '{"kind":"event"}', priority=True)
        box.commit()
        assert box.next_batch("events", 0, 10, 10_000) == []
        assert box.next_batch("events", 0, 10, 10_000, priority=True) == [(2, '{"kind":"event"}')]
    finally:
        box.close()
