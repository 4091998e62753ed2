"""Keep the outbox inside its caps: thin routine telemetry first, events last.

A van offline for days must not fill its SD card, and what it does keep must
be what a fleet needs most.  The order of sacrifice, each step only while
the buffer is still over its limit:

1. **Age.** Routine telemetry (positions and OBD snapshots that are not
   priority rows) older than ``max_age_s`` before the newest record goes.
   Ages are measured on the records' own UTC times, never on a Pi's
   unsynchronised wall clock.
2. **Soft cap** (``soft_bytes``, lowered when the filesystem runs short of
   free space): routine telemetry is *thinned*, oldest first, keeping every
   ``keep_every``-th row of a chunk; a kept row's ``thin`` level goes up, and
   rows of the lowest level are thinned first, so a long outage degrades
   evenly (every 4th point, then every 16th ...) instead of losing its start;
   the newest quarter of the routine rows is left whole.
3. **Hard cap** (``hard_bytes``): the oldest rows of any kind go, events
   included.  Only here is an event ever dropped.

Size is the pages SQLite uses (``page_count - freelist_count``): deleted
rows free pages inside the file for new rows, so the file stops growing at
the cap.  Every removal is counted; the caller reports it.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

#: Rows thinned per statement: bounds one pass's transaction.
CHUNK = 2000
#: Thin or drop down to this share of a cap, not just under it (fewer passes).
HYSTERESIS = 0.9
#: The newest 1/PROTECTED of the routine rows is not thinned.
PROTECTED = 4


@dataclass(frozen=True, slots=True)
class Caps:
    soft_bytes: int
    hard_bytes: int
    max_age_s: float | None = None
    keep_every: int = 4
    #: Free space to leave on the filesystem; the soft cap shrinks to respect it.
    reserve_bytes: int = 32 * 1024 * 1024


@dataclass(slots=True)
class Trimmed:
    """What one :func:`trim` removed (all zero: nothing)."""

    expired: int = 0  # routine telemetry past max_age
    thinned: int = 0  # routine telemetry thinned under the soft cap
    dropped: int = 0  # rows of any kind dropped at the hard cap
    dropped_events: int = 0  # ... of which events
    seqs: list[int] = field(default_factory=list)  # lowest and highest seq touched

    def __bool__(self) -> bool:
        return bool(self.expired or self.thinned or self.dropped)

    def total(self) -> int:
        return self.expired + self.thinned + self.dropped

    def span(self, seqs: list[int]) -> None:
        if seqs:
            lo, hi = min(seqs), max(seqs)
            self.seqs = [min([lo, *self.seqs[:1]]), max([hi, *self.seqs[1:]])]


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the pages holding data (free pages inside the file excluded)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def soft_limit(caps: Caps, used: int, directory: Path) -> int:
    """The soft cap, lowered so that the filesystem keeps its reserve free."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return caps.soft_bytes
    free = st.f_bavail * st.f_frsize
    return max(0, min(caps.soft_bytes, used + free - caps.reserve_bytes))


def keep_mask(n: int, keep_every: int) -> list[bool]:
    """Which of ``n`` rows (oldest first) thinning keeps: the first, then every k-th."""
    return [i % keep_every == 0 for i in range(n)]


_ROUTINE = "stream = 'telemetry' AND priority = 0"


def trim(db: sqlite3.Connection, caps: Caps, newest_ts: float | None, directory: Path) -> Trimmed:
    """Apply age, soft and hard caps in that order; one transaction per step."""
    out = Trimmed()
    if caps.max_age_s is not None and newest_ts is not None:
        cutoff = newest_ts - caps.max_age_s
        seqs = [
            r[0]
            for r in db.execute(
                f"SELECT seq FROM outbox WHERE {_ROUTINE} AND ts < ? ORDER BY seq", (cutoff,)
            )
        ]
        _delete(db, seqs)
        out.expired += len(seqs)
        out.span(seqs)
    used = used_bytes(db)
    soft = soft_limit(caps, used, directory)
    if used > soft:
        while used > soft * HYSTERESIS and _thin_once(db, caps.keep_every, out):
            used = used_bytes(db)
    if used > caps.hard_bytes:
        while used > caps.hard_bytes * HYSTERESIS:
            rows = db.execute(
                "SELECT seq, stream FROM outbox ORDER BY seq LIMIT ?", (CHUNK // 4,)
            ).fetchall()
            if not rows:
                break
            _delete(db, [r[0] for r in rows])
            out.dropped += len(rows)
            out.dropped_events += sum(1 for r in rows if r[1] == "events")
            out.span([r[0] for r in rows])
            used = used_bytes(db)
    return out


def _thin_once(db: sqlite3.Connection, keep_every: int, out: Trimmed) -> bool:
    """Thin the oldest chunk of the least-thinned routine rows; False if none is left.

    The newest quarter of the routine rows is never thinned: when the link
    comes back, the last stretch of the drive arrives whole.
    """
    count = db.execute(f"SELECT COUNT(*) FROM outbox WHERE {_ROUTINE}").fetchone()[0]
    if count < 2:
        return False
    newest_open = db.execute(
        f"SELECT seq FROM outbox WHERE {_ROUTINE} ORDER BY seq DESC LIMIT 1 OFFSET ?",
        (count // PROTECTED,),
    ).fetchone()[0]
    level = db.execute(
        f"SELECT MIN(thin) FROM outbox WHERE {_ROUTINE} AND seq <= ?", (newest_open,)
    ).fetchone()[0]
    seqs = [
        r[0]
        for r in db.execute(
            f"SELECT seq FROM outbox WHERE {_ROUTINE} AND thin = ? AND seq <= ? "
            "ORDER BY seq LIMIT ?",
            (level, newest_open, CHUNK),
        )
    ]
    if len(seqs) < 2:
        # One row left at this level: nothing to thin it against.  Lift it to
        # the next level if there is one; a last routine row is kept.
        higher = db.execute(
            f"SELECT COUNT(*) FROM outbox WHERE {_ROUTINE} AND thin > ? AND seq <= ?",
            (level, newest_open),
        ).fetchone()[0]
        if not higher:
            return False
        db.execute("UPDATE outbox SET thin = thin + 1 WHERE seq = ?", (seqs[0],))
        return True
    keep = keep_mask(len(seqs), keep_every)
    gone = [s for s, k in zip(seqs, keep, strict=True) if not k]
    kept = [s for s, k in zip(seqs, keep, strict=True) if k]
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in gone])
        db.executemany("UPDATE outbox SET thin = thin + 1 WHERE seq = ?", [(s,) for s in kept])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    out.thinned += len(gone)
    out.span(gone)
    return True


def _delete(db: sqlite3.Connection, seqs: list[int]) -> None:
    if not seqs:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
