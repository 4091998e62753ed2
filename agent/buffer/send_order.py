"""Which committed rows of a stream go out next: oldest first, with a live lane.

After a short outage the backlog drains strictly oldest first.  After a long
one (more than ``live_after`` rows waiting when the link comes back), rows
committed since then get every other publish, so a dispatcher's map shows
where the van is now while hours of history are still uploading.  Priority
rows (an impact) have a lane of their own that goes before both.  Pure: it
only tracks sequence numbers; agent.uplink asks the outbox for the rows.
"""

from __future__ import annotations


class SendOrder:
    def __init__(self, live_after: int) -> None:
        self.live_after = live_after
        self.cursor = 0  # highest seq handed out by the oldest-first lane
        self.boundary: int | None = None  # rows above it belong to the live lane
        self.live_cursor = 0
        self.priority_cursor = 0  # highest priority-row seq handed out
        self._live_turn = False

    @property
    def draining(self) -> bool:
        return self.boundary is not None

    def link_up(self, newest_seq: int, waiting: int) -> None:
        """The link (re)connected with ``waiting`` rows queued up to ``newest_seq``."""
        if self.boundary is None and waiting > self.live_after:
            self.boundary = newest_seq
            self.live_cursor = newest_seq

    def lanes(self) -> list[tuple[str, int, int | None]]:
        """(lane, after_seq, up_to_seq) to try, in order, for the next publish."""
        first = ("priority", self.priority_cursor, None)
        if self.boundary is None:
            return [first, ("oldest", self.cursor, None)]
        oldest = ("oldest", self.cursor, self.boundary)
        live = ("live", self.live_cursor, None)
        return [first, live, oldest] if self._live_turn else [first, oldest, live]

    def sent(self, lane: str, last_seq: int) -> None:
        if lane == "priority":
            self.priority_cursor = last_seq
            return
        if self.boundary is None:
            self.cursor = last_seq  # one lane again (the backlog may just have ended)
        elif lane == "live":
            self.live_cursor = last_seq
        else:
            self.cursor = last_seq
        self._live_turn = lane == "oldest" and self.boundary is not None

    def exhausted(self, lane: str) -> None:
        """The oldest lane found nothing up to the boundary: the backlog is out."""
        if lane == "oldest" and self.boundary is not None:
            self.cursor = max(self.boundary, self.live_cursor)
            self.boundary = None
            self._live_turn = False

    def rewind(self, first_seq: int, lane: str = "oldest") -> None:
        """Rows from ``first_seq`` on must be offered again (rejected or unacknowledged)."""
        if lane == "priority":
            self.priority_cursor = min(self.priority_cursor, first_seq - 1)
            return
        if self.boundary is not None and first_seq > self.boundary:
            self.live_cursor = min(self.live_cursor, first_seq - 1)
        else:
            self.cursor = min(self.cursor, first_seq - 1)
