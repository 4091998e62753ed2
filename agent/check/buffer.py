"""Buffer rows of the installer's check: the outbox reads back, and the disk has room.

The outbox may belong to a running agent, so it is only ever opened
read-only (``mode=ro``): no lock is taken (not even the agent's ``.lock``
file; whether an agent holds it is read from ``/proc/locks``), nothing is
written.  SQLite's WAL mode lets a reader look while the agent writes.
A reader may leave the empty ``-wal``/``-shm`` files SQLite keeps for
readers; that is what SQLite does for the agent too.

Two rows:

* ``buffer.file``: opens, passes ``PRAGMA quick_check``, belongs to this
  device; how many records wait and how old the oldest is;
* ``buffer.disk``: free space on the outbox's filesystem, against fixed
  thresholds (below ``DISK_FAIL_BYTES`` a long outage would fill the disk).
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

from agent.check.report import Row

DISK_FAIL_BYTES = 64 * 1024 * 1024  # a day offline at 1 Hz is ~20 MB of outbox
DISK_WARN_BYTES = 512 * 1024 * 1024
_MIB = 1024 * 1024


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


def _age(body: str, now: datetime) -> float | None:
    """Seconds since a stored record's ``ts`` (None when it has none)."""
    try:
        ts = json.loads(body).get("ts")
        if not isinstance(ts, str):
            return None
        return (now - datetime.fromisoformat(ts.replace("Z", "+00:00"))).total_seconds()
    except (ValueError, AttributeError):
        return None


def _human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def outbox_facts(con: sqlite3.Connection, now: datetime) -> dict[str, Any]:
    """Integrity, owner and backlog of an open outbox (read-only queries)."""
    check = [str(r[0]) for r in con.execute("PRAGMA quick_check").fetchall()]
    meta = dict(con.execute("SELECT key, value FROM meta WHERE key NOT LIKE 'state:%'").fetchall())
    waiting = dict(con.execute("SELECT stream, COUNT(*) FROM outbox GROUP BY stream").fetchall())
    oldest: float | None = None
    for (body,) in con.execute(
        "SELECT body FROM outbox WHERE seq IN (SELECT MIN(seq) FROM outbox GROUP BY stream)"
    ):
        age = _age(str(body), now)
        if age is not None and (oldest is None or age > oldest):
            oldest = age
    return {
        "quick_check": check,
        "device": meta.get("device"),
        "epoch": meta.get("epoch"),
        "waiting": {str(k): int(v) for k, v in waiting.items()},
        "oldest_age_s": None if oldest is None else round(oldest, 1),
    }


def file_row(path: Path, facts: dict[str, Any], device: str, agent_pid: int | None) -> Row:
    """Pass when intact and this device's; the backlog goes in the detail."""
    data = {"path": str(path), "agent_pid": agent_pid, **facts}
    damaged_fix = (
        "the outbox is damaged: stop the agent, move the file away "
        f"(mv {path} {path}.broken) and start the agent, which makes a new one; records "
        "still in the old file are not sent"
    )
    if facts["quick_check"] != ["ok"]:
        first = facts["quick_check"][0] if facts["quick_check"] else "?"
        return Row(
            "buffer.file",
            "fail",
            f"{path}: integrity check failed: {first}",
            damaged_fix,
            data=data,
        )
    if facts["device"] is not None and facts["device"] != device:
        return Row(
            "buffer.file",
            "fail",
            f"{path} belongs to device {facts['device']!r}, not {device!r}",
            "the agent will refuse it: move it away or set buffer.path to another file",
            data=data,
        )
    total = sum(facts["waiting"].values())
    backlog = f"{total} records waiting"
    if total and facts["oldest_age_s"] is not None:
        backlog += f", oldest {_human_age(facts['oldest_age_s'])} old"
    running = f"; in use by the agent (pid {agent_pid})" if agent_pid is not None else ""
    return Row("buffer.file", "pass", f"{path}: intact, {backlog}{running}", data=data)


def disk_row(path: Path, free: int, total: int) -> Row:
    """Free space on the outbox's filesystem against ``DISK_FAIL_BYTES`` / ``DISK_WARN_BYTES``."""
    data = {"free_bytes": free, "total_bytes": total, "filesystem_of": str(path)}
    text = f"{free / _MIB:,.0f} MiB free of {total / _MIB:,.0f} MiB"
    fix = (
        "free space on that filesystem (old logs: sudo journalctl --vacuum-size=50M), or set "
        "buffer.path on a larger one: while the van is offline every record waits on this disk"
    )
    if free < DISK_FAIL_BYTES:
        return Row(
            "buffer.disk", "fail", text + f" (under {DISK_FAIL_BYTES // _MIB} MiB)", fix, data=data
        )
    if free < DISK_WARN_BYTES:
        return Row(
            "buffer.disk", "warn", text + f" (under {DISK_WARN_BYTES // _MIB} MiB)", fix, data=data
        )
    return Row("buffer.disk", "pass", text, data=data)


def _existing_dir(path: Path) -> Path:
    """The outbox's directory, or its nearest ancestor that exists (the agent creates the rest)."""
    d = path.parent
    while not d.exists() and d != d.parent:
        d = d.parent
    return d


def probe_buffer(path: Path, device: str, agent_pid: int | None) -> list[Row]:
    """Both buffer rows, read-only."""
    where = _existing_dir(path)
    try:
        st = os.statvfs(where)
        disk = disk_row(path, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
    except OSError as exc:
        disk = Row("buffer.disk", "fail", f"cannot read free space of {where}: {exc.strerror}")
    if not path.exists():
        if os.access(where, os.W_OK | os.X_OK):
            row = Row(
                "buffer.file",
                "pass",
                f"no outbox yet: the agent creates {path} when it first starts",
                data={"path": str(path), "exists": False},
            )
        else:
            row = Row(
                "buffer.file",
                "fail",
                f"no outbox yet, and {where} is not writable by this user",
                f"create the directory for the agent's user: sudo mkdir -p {path.parent} && "
                f"sudo chown <agent user> {path.parent} (or run the check as that user)",
                data={"path": str(path), "exists": False},
            )
        return [row, disk]
    try:
        with read_only(path) as con:
            facts = outbox_facts(con, datetime.now(UTC))
    except (sqlite3.Error, OutboxUnreadable) as exc:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            fix = (
                f"the file is not a readable outbox: stop the agent, move it away (mv {path} "
                f"{path}.broken) and start the agent, which makes a new one"
            )
        else:
            fix = (
                "run the check as the agent's user (or with sudo): this user cannot read "
                "the outbox or its directory"
            )
        return [
            Row(
                "buffer.file", "fail", f"{path}: cannot read: {text}", fix, data={"path": str(path)}
            ),
            disk,
        ]
    return [file_row(path, facts, device, agent_pid), disk]
