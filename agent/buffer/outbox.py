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

Bounded: with :class:`~agent.buffer.trim.Caps` the outbox thins routine
telemetry, then drops, to stay inside its size and age caps (see
agent.buffer.trim); what went is counted and kept in ``meta``.  A file that
is not a database, or fails SQLite's quick check, is renamed aside
(``outbox.sqlite.corrupt-<time>``) and a new epoch starts: the agent keeps
running and says so (``quarantined``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.buffer import peek
from agent.buffer.trim import Caps, Trimmed, trim, used_bytes
from agent.messages import STREAMS, Stream

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    body TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    ts REAL,
    thin INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_stream_seq ON outbox (stream, seq);
"""

#: How often (monotonic s) the age cap is applied; the size caps at every commit.
AGE_CHECK_S = 60.0

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
    ts: float | None = None


class Outbox:
    """Durable FIFO of record bodies per stream, keyed by sequence number."""

    def __init__(
        self,
        path: Path | str,
        device: str,
        *,
        commit_interval_s: float = 1.0,
        mono: Callable[[], float] = time.monotonic,
        caps: Caps | None = None,
        quarantine: bool = True,
    ) -> None:
        self.path = Path(path)
        self.device = device
        self.commit_interval_s = commit_interval_s
        self.caps = caps
        self._mono = mono
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        self.quarantined: str | None = None  # where a corrupt file was moved, and why
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not quarantine:
                self._lock.close()
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            self.quarantined = self._quarantine(exc)
            self._db = self._open()
        self.epoch = self._epoch_for(device)
        self.last_seq = self._high_water()
        self._pending: list[_Pending] = []
        self._pending_since: float | None = None
        self._acked: list[int] = []
        self.dropped = 0  # records lost because the disk refused them for too long
        self.last_error: str | None = None
        self.trimmed = self._load_trimmed()  # counts since the file was made
        self._untold = Trimmed()  # trimmed since take_trimmed() last asked
        self._newest_ts: float | None = self._db.execute("SELECT MAX(ts) FROM outbox").fetchone()[0]
        self._age_checked = -AGE_CHECK_S

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.executescript(_SCHEMA)
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _quarantine(self, exc: sqlite3.DatabaseError) -> str:
        """Move a corrupt outbox and its WAL aside; the caller starts a new one."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        note = f"{aside} ({exc})"
        log.error("outbox %s is corrupt; moved to %s and started a new one", self.path, note)
        return note

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

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Columns added since the first outboxes: priority lane, record time, thin level."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        for name, decl in (
            ("priority", "INTEGER NOT NULL DEFAULT 0"),
            ("ts", "REAL"),
            ("thin", "INTEGER NOT NULL DEFAULT 0"),
        ):
            if name not in columns:
                db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        db.execute(
            "CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (stream, seq) WHERE priority = 1"
        )
        db.execute(
            "CREATE INDEX IF NOT EXISTS outbox_routine ON outbox (thin, seq) "
            "WHERE stream = 'telemetry' AND priority = 0"
        )

    def _high_water(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    # -- producing ---------------------------------------------------------

    def add(
        self, stream: Stream, body: str, *, priority: bool = False, ts: float | None = None
    ) -> int:
        """Queue a record body for the next commit; return its sequence number.

        ``priority`` rows (an impact) are sent ahead of any backlog of their
        stream; their seq still orders them among the rest at the bridge.
        ``ts`` (the record's UTC, seconds) is what the age cap measures.
        """
        self.last_seq += 1
        if not self._pending:
            self._pending_since = self._mono()
        self._pending.append(_Pending(self.last_seq, stream, body, priority, ts))
        if ts is not None and (self._newest_ts is None or ts > self._newest_ts):
            self._newest_ts = ts
        if len(self._pending) > MAX_PENDING:
            # The disk has refused writes for long: routine telemetry goes first.
            victim = next((i for i, p in enumerate(self._pending) if p.stream == "telemetry"), 0)
            self._pending.pop(victim)
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
        pending = len(self._pending)
        error = self._try_write()
        if error is not None and self.caps is not None and "full" in error:
            # Disk (or max_page_count) full: make room inside the file, retry once.
            self._make_room()
            error = self._try_write()
        if error is not None:
            if self.last_error is None:
                log.error("outbox commit failed, keeping %d records in memory: %s", pending, error)
            self.last_error = error
            return 0
        self.last_error = None
        self._pending, self._pending_since, self._acked = [], None, []
        if self.caps is not None:
            self._trim()
        return pending

    def _try_write(self) -> str | None:
        try:
            self._write()
        except sqlite3.OperationalError as exc:
            return str(exc)
        return None

    def _write(self) -> None:
        with self._tx():
            self._db.executemany(
                "INSERT INTO outbox (seq, stream, body, priority, ts) VALUES (?, ?, ?, ?, ?)",
                [(p.seq, p.stream, p.body, int(p.priority), p.ts) for p in self._pending],
            )
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in self._acked])

    # -- caps ----------------------------------------------------------------

    def _trim(self, caps: Caps | None = None) -> None:
        caps = caps or self.caps
        assert caps is not None
        now = self._mono()
        age_due = now - self._age_checked >= AGE_CHECK_S
        if age_due:
            self._age_checked = now
        else:
            caps = Caps(caps.soft_bytes, caps.hard_bytes, None, caps.keep_every, caps.reserve_bytes)
        try:
            done = trim(self._db, caps, self._newest_ts, self.path.parent)
        except sqlite3.OperationalError as exc:
            self.last_error = f"trimming: {exc}"
            return
        if done:
            self._count(done)

    def _make_room(self) -> None:
        """The disk is full: thin until a fifth of what is used is free inside the file."""
        assert self.caps is not None
        used = used_bytes(self._db)
        c = self.caps
        self._trim(Caps(min(c.soft_bytes, int(used * 0.8)), c.hard_bytes, None, c.keep_every, 0))

    def _count(self, done: Trimmed) -> None:
        for name in ("expired", "thinned", "dropped", "dropped_events"):
            self.trimmed[name] += getattr(done, name)
            setattr(self._untold, name, getattr(self._untold, name) + getattr(done, name))
        self._untold.span(done.seqs)
        log.debug(  # the agent reports it (a buffer_trimmed event, rate-limited)
            "outbox over its caps: %d expired, %d thinned, %d dropped (%d events); seq %s",
            done.expired, done.thinned, done.dropped, done.dropped_events, done.seqs,
        )  # fmt: skip
        with contextlib.suppress(sqlite3.OperationalError):  # the next trim writes it
            self.set_state("trimmed", json.dumps(self.trimmed))

    def _load_trimmed(self) -> dict[str, int]:
        counts = dict.fromkeys(("expired", "thinned", "dropped", "dropped_events"), 0)
        stored = self.get_state("trimmed")
        if stored:
            counts.update(json.loads(stored))
        return counts

    def take_trimmed(self) -> Trimmed | None:
        """What caps removed since the last call (for the agent's event), or None."""
        if not self._untold:
            return None
        out, self._untold = self._untold, Trimmed()
        return out

    def used_bytes(self) -> int:
        return used_bytes(self._db)

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

    def backlog(self, utc_now: float | None) -> dict[str, Any]:
        """Committed records waiting per stream and the oldest one's age (agent.buffer.peek)."""
        return peek.backlog(self._db, utc_now)

    @property
    def uncommitted(self) -> int:
        """Records added but not yet committed (a kill -9 now would lose them)."""
        return len(self._pending)

    def depth(self) -> dict[str, int]:
        """Committed rows waiting per stream, plus records not yet committed."""
        counts: dict[str, int] = dict.fromkeys(STREAMS, 0)
        counts.update(
            self._db.execute("SELECT stream, COUNT(*) FROM outbox GROUP BY stream").fetchall()
        )
        counts["uncommitted"] = self.uncommitted
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
