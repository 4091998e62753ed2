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

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.buffer.peek import (
    OutboxUnreadable,
    backlog,
    human_age,
    read_only,
)
from agent.check.report import Row

DISK_FAIL_BYTES = 64 * 1024 * 1024  # a day offline at 1 Hz is ~20 MB of outbox
DISK_WARN_BYTES = 512 * 1024 * 1024
_MIB = 1024 * 1024


def outbox_facts(con: sqlite3.Connection, now: datetime) -> dict[str, Any]:
    """Integrity, owner and backlog of an open outbox (read-only queries)."""
    check = [str(r[0]) for r in con.execute("PRAGMA quick_check").fetchall()]
    meta = dict(con.execute("SELECT key, value FROM meta WHERE key NOT LIKE 'state:%'").fetchall())
    waiting = backlog(con, now.timestamp())
    return {
        "quick_check": check,
        "device": meta.get("device"),
        "epoch": meta.get("epoch"),
        "waiting": {k: n for k, n in waiting["waiting"].items() if n},
        "oldest_age_s": waiting["oldest_age_s"],
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
        backlog += f", oldest {human_age(facts['oldest_age_s'])} old"
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
