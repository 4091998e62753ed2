"""Read-only views of an outbox file, for ``check`` and ``status``.

The outbox may belong to a running agent, so it is only ever opened
read-only (``mode=ro``): no lock is taken (not even the agent's ``.lock``
file; whether an agent holds it is read from ``/proc/locks``), nothing is
written.  SQLite's WAL mode lets a reader look while the agent writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent.messages import STREAMS


class OutboxUnreadable(Exception):
    """The outbox file exists but cannot be read as an SQLite database."""


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """The outbox opened read-only; never creates the database, never writes to it."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        raise OutboxUnreadable(str(exc)) from exc
    with closing(con):
        yield con


def read_state(path: Path, key: str) -> str | None:
    """A durable state value the agent keeps beside the outbox (``Outbox.get_state``), or None."""
    if not path.is_file():
        return None
    try:
        with read_only(path) as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (f"state:{key}",)).fetchone()
    except (sqlite3.Error, OutboxUnreadable):
        return None
    return None if row is None else str(row[0])


def lock_holder(outbox: Path, locks: str | None = None) -> int | None:
    """Pid of the process holding the outbox's ``.lock`` (a running agent), from /proc/locks.

    Read, never tried: taking the lock even for a moment could make an agent
    starting at that instant fail.  ``locks`` is the file's text (for tests).
    """
    lock = outbox.parent / (outbox.name + ".lock")
    try:
        st = lock.stat()
        if locks is None:
            locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2187811 0 EOF" ("->" marks a waiter)
        if "FLOCK" in fields and "->" not in fields and ident in fields:
            try:
                return int(fields[fields.index(ident) - 1])
            except ValueError:
                return None
    return None


def utc_text(seconds: float) -> str:
    """``2024-05-14T07:30:00.123Z``."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def record_time(ts: object, body: object) -> float | None:
    """A stored record's UTC (s): its ``ts`` column, else the ``ts`` in its body."""
    if isinstance(ts, int | float):
        return float(ts)
    try:
        text = json.loads(str(body)).get("ts")
        if isinstance(text, str):
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        pass
    return None


def backlog(con: sqlite3.Connection, utc_now: float | None) -> dict[str, Any]:
    """Records waiting per stream, and the oldest one's age against ``utc_now`` (read-only).

    The oldest of a stream is its lowest seq (an index lookup); the count is
    a scan of the (stream, seq) index, which is why this runs off the loop.
    """
    waiting: dict[str, int] = dict.fromkeys(STREAMS, 0)
    waiting.update(
        {
            str(s): int(n)
            for s, n in con.execute("SELECT stream, COUNT(*) FROM outbox GROUP BY stream")
        }
    )
    oldest: float | None = None
    for stream, count in waiting.items():
        if not count:
            continue
        row = con.execute(
            "SELECT ts, body FROM outbox WHERE stream = ? ORDER BY seq LIMIT 1", (stream,)
        ).fetchone()
        ts = None if row is None else record_time(row[0], row[1])
        if ts is not None and (oldest is None or ts < oldest):
            oldest = ts
    return {
        "waiting": waiting,
        "total": sum(waiting.values()),
        "oldest_utc": None if oldest is None else utc_text(oldest),
        "oldest_age_s": (
            None if oldest is None or utc_now is None else round(max(0.0, utc_now - oldest), 1)
        ),
    }


def read_backlog(outbox: Path, utc_now: float | None) -> dict[str, Any]:
    """:func:`backlog` of an outbox file, opened read-only."""
    if not outbox.is_file():
        return {"waiting": dict.fromkeys(STREAMS, 0), "total": 0, "exists": False}
    try:
        with read_only(outbox) as con:
            return backlog(con, utc_now)
    except (sqlite3.Error, OutboxUnreadable) as exc:
        return {"error": f"cannot read {outbox}: {exc}"}


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
