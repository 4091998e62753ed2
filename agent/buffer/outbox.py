"""The SQLite outbox: the device's system of record for everything it sends.

paho keeps its MQTT session only in memory, so after a crash, kill -9 or
power cut only this file knows what still has to go.  The rules:

* a record gets its sequence number when it is added, and is written to
  SQLite (WAL, ``synchronous=FULL``: a commit survives power loss) before the
  uplink can see it; the uplink only ever reads committed rows;
* a row is deleted only after the broker's PUBACK for the publish that
  carried it;
* records are committed in groups every ``commit_interval_s`` (urgent ones at
  once), which bounds what a kill -9 or power cut can lose to the records of
  the last, uncommitted window; those were never published, and their
  sequence numbers are handed out again after restart, so the numbers the
  bridge sees stay gap-free.

One database is one *epoch* (a random id made when the file is created).
Sequence numbers never go backwards within it, across restarts, because
AUTOINCREMENT's high-water mark outlives deleted rows.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.messages import STREAMS, Stream

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    body TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_stream_seq ON outbox (stream, seq);
"""

#: Records held in memory while the disk refuses writes, before the oldest go.
MAX_PENDING = 20_000


class OutboxError(Exception):
    """The outbox cannot be used as configured (wrong device, unreadable file)."""


@dataclass(slots=True)
class _Pending:
    seq: int
    stream: Stream
    body: str
    priority: bool = False


class Outbox:
    """Durable FIFO of record bodies per stream, keyed by sequence number."""

    def __init__(
        self,
        path: Path | str,
        device: str,
        *,
        commit_interval_s: float = 1.0,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.device = device
        self.commit_interval_s = commit_interval_s
        self._mono = mono
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self.epoch = self._epoch_for(device)
            self.last_seq = self._high_water()
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc
        self._pending: list[_Pending] = []
        self._pending_since: float | None = None
        self._acked: list[int] = []
        self.dropped = 0  # records lost because the disk refused them for too long
        self.last_error: str | None = None

    def _take_lock(self) -> IO[bytes]:
        """One process per outbox: two would hand out the same sequence numbers."""
        lock = (self.path.parent / (self.path.name + ".lock")).open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise OutboxError(
                f"outbox {self.path} is in use by another process (is the agent already running?)"
            ) from None
        return lock

    def _epoch_for(self, device: str) -> str:
        rows = dict(
            self._db.execute("SELECT key, value FROM meta WHERE key NOT LIKE 'state:%'").fetchall()
        )
        if not rows:
            epoch = uuid.uuid4().hex
            with self._tx():
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("device", device), ("epoch", epoch), ("created", str(time.time()))],
                )
            return epoch
        if rows.get("device") != device:
            raise OutboxError(
                f"outbox {self.path} belongs to device {rows.get('device')!r}, not {device!r}; "
                "move it away or point buffer.path elsewhere"
            )
        return str(rows["epoch"])

    def _migrate(self) -> None:
        """Outboxes written before the priority lane existed get the column (default 0)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "priority" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (stream, seq) WHERE priority = 1"
        )

    def _high_water(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    # -- producing ---------------------------------------------------------

    def add(self, stream: Stream, body: str, priority: bool = False) -> int:
        """Queue a record body for the next commit; return its sequence number.

        ``priority`` rows (an impact) are sent ahead of any backlog of their
        stream; their seq still orders them among the rest at the bridge.
        """
        self.last_seq += 1
        if not self._pending:
            self._pending_since = self._mono()
        self._pending.append(_Pending(self.last_seq, stream, body, priority))
        if len(self._pending) > MAX_PENDING:
            self._pending.pop(0)
            self.dropped += 1
        return self.last_seq

    def commit_due(self) -> bool:
        """True when the oldest pending record has waited a full commit window."""
        if self._pending_since is None:
            return bool(self._acked)
        return self._mono() - self._pending_since >= self.commit_interval_s

    def commit(self) -> int:
        """Write pending records and delete acknowledged rows in one transaction.

        Returns how many records became visible to the uplink.  A full or
        failing disk keeps them pending (reported in ``last_error``) rather
        than crashing the agent.
        """
        if not self._pending and not self._acked:
            return 0
        pending, acked = self._pending, self._acked
        try:
            with self._tx():
                self._db.executemany(
                    "INSERT INTO outbox (seq, stream, body, priority) VALUES (?, ?, ?, ?)",
                    [(p.seq, p.stream, p.body, int(p.priority)) for p in pending],
                )
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acked])
        except sqlite3.OperationalError as exc:
            if self.last_error is None:
                log.error(
                    "outbox commit failed, keeping %d records in memory: %s", len(pending), exc
                )
            self.last_error = str(exc)
            return 0
        self.last_error = None
        self._pending, self._pending_since, self._acked = [], None, []
        return len(pending)

    # -- consuming ---------------------------------------------------------

    def next_batch(
        self,
        stream: Stream,
        after_seq: int,
        limit: int,
        max_bytes: int,
        up_to_seq: int | None = None,
        priority: bool = False,
    ) -> list[tuple[int, str]]:
        """Committed rows of one stream and lane in (after_seq, up_to_seq], oldest first.

        Size-bounded; ``priority`` picks the priority rows, else the others.
        """
        rows = self._db.execute(
            "SELECT seq, body FROM outbox WHERE stream = ? AND priority = ? AND seq > ? "
            "AND seq <= ? ORDER BY seq LIMIT ?",
            (
                stream,
                int(priority),
                after_seq,
                up_to_seq if up_to_seq is not None else 2**63 - 1,
                limit,
            ),
        ).fetchall()
        out: list[tuple[int, str]] = []
        size = 0
        for seq, body in rows:
            size += len(body) + 16
            if out and size > max_bytes:
                break
            out.append((int(seq), str(body)))
        return out

    def waiting(self, stream: Stream, after_seq: int) -> tuple[int, int]:
        """(count, newest seq) of committed rows of a stream after ``after_seq``."""
        count, newest = self._db.execute(
            "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM outbox WHERE stream = ? AND seq > ?",
            (stream, after_seq),
        ).fetchone()
        return int(count), int(newest)

    def ack(self, seqs: list[int]) -> None:
        """The broker has these: delete them at the next commit."""
        self._acked.extend(seqs)

    def get_state(self, key: str) -> str | None:
        """Durable device state kept beside the outbox (e.g. the applied config)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"state:{key}",)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        """Write device state at once (its own durable transaction)."""
        with self._tx():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (f"state:{key}", value),
            )

    def depth(self) -> dict[str, int]:
        """Committed rows waiting per stream, plus records not yet committed."""
        counts: dict[str, int] = dict.fromkeys(STREAMS, 0)
        counts.update(
            self._db.execute("SELECT stream, COUNT(*) FROM outbox GROUP BY stream").fetchall()
        )
        counts["uncommitted"] = len(self._pending)
        return counts

    def close(self) -> None:
        self.commit()
        self._db.close()
        self._lock.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # After some errors (SQLITE_FULL among them) SQLite has already rolled
        # back; a second ROLLBACK would fail and hide the real error.
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
