"""Bridge storage (SQLite here; a later issue adds PostgreSQL).

``(device, epoch, seq)`` is the primary key of a record, so a re-delivered
record is dropped by the database itself, exactly, with no guessing.  The
rowid keeps arrival order, which tests use to check that each device's
records arrived in sequence.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.messages import Batch, Event, Status

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    device TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT,
    ts TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS records_device_ts ON records (device, ts);
CREATE TABLE IF NOT EXISTS status (
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    size INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoreResult:
    stored: int
    duplicates: int


class BridgeStore:
    def __init__(self, path: Path | str, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self._db.executescript(_SCHEMA)

    def store_batch(self, stream: str, batch: Batch, received_at: float) -> StoreResult:
        rows = [
            (
                batch.device,
                batch.epoch,
                r.seq,
                stream,
                r.kind,
                r.type if isinstance(r, Event) else None,
                r.ts.isoformat(),
                r.model_dump_json(exclude_none=True),
                received_at,
            )
            for r in batch.records
        ]
        self._db.execute("BEGIN")
        try:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO records "
                "(device, epoch, seq, stream, kind, type, ts, body, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            stored = self._db.total_changes - before
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLITE_FULL has rolled back already
                self._db.execute("ROLLBACK")
            raise
        return StoreResult(stored=stored, duplicates=len(rows) - stored)

    def store_status(self, status: Status, received_at: float) -> None:
        self._db.execute(
            "INSERT INTO status (device, state, body, received_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device) DO UPDATE SET state = excluded.state, body = excluded.body, "
            "received_at = excluded.received_at",
            (status.device, status.state, status.model_dump_json(exclude_none=True), received_at),
        )

    def store_reject(
        self, topic: str, reason: str, detail: str, size: int, received_at: float
    ) -> None:
        self._db.execute(
            "INSERT INTO rejects (received_at, topic, reason, detail, size) VALUES (?, ?, ?, ?, ?)",
            (received_at, topic[:256], reason, detail[:500], size),
        )

    def records(self, device: str, stream: str | None = None) -> Iterator[dict[str, Any]]:
        """A device's records in (epoch, seq) order, each with its stream."""
        sql = "SELECT stream, epoch, body FROM records WHERE device = ?"
        args: list[Any] = [device]
        if stream is not None:
            sql += " AND stream = ?"
            args.append(stream)
        sql += " ORDER BY MIN(rowid) OVER (PARTITION BY epoch), seq"
        for s, epoch, body in self._db.execute(sql, args):
            yield {"stream": s, "epoch": epoch, **json.loads(body)}

    def arrival_order(self, device: str) -> list[tuple[str, str, int]]:
        """(stream, epoch, seq) of a device's records in the order they arrived."""
        return [
            (str(s), str(e), int(q))
            for s, e, q in self._db.execute(
                "SELECT stream, epoch, seq FROM records WHERE device = ? ORDER BY rowid", (device,)
            )
        ]

    def summary(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT device, COUNT(DISTINCT epoch), "
            "SUM(kind = 'position'), SUM(kind = 'event'), MIN(seq), MAX(seq), MIN(ts), MAX(ts) "
            "FROM records GROUP BY device ORDER BY device"
        ).fetchall()
        status = dict(self._db.execute("SELECT device, state FROM status").fetchall())
        return [
            {
                "device": d,
                "epochs": e,
                "positions": p,
                "events": ev,
                "seq_min": lo,
                "seq_max": hi,
                "first": t0,
                "last": t1,
                "status": status.get(d),
            }
            for d, e, p, ev, lo, hi, t0, t1 in rows
        ]

    def reject_counts(self) -> dict[str, int]:
        return {
            str(reason): int(n)
            for reason, n in self._db.execute(
                "SELECT reason, COUNT(*) FROM rejects GROUP BY reason ORDER BY reason"
            )
        }

    def close(self) -> None:
        self._db.close()
