"""NMEA replayed from a recorded file, for bench runs, demos and tests.

The bytes go through the same ``NmeaParser`` as a live receiver's.  Two speeds:

- ``pace=None``: as fast as the parser goes.  Fix ``mono`` is then the read
  time, so intervals measured on it are meaningless; use ``Fix.time``.
- ``pace=1.0`` (real time) or ``pace=10.0`` (ten times faster): each fix is
  held back until its receiver time, scaled, has elapsed since the first one,
  and ``mono`` is restamped at delivery, so downstream code that measures
  intervals on ``mono`` sees the recording's rhythm.  Gaps longer than
  ``max_gap_s`` (a receiver that was off for an hour) and time going
  backwards restart the pacing instead of stalling the replay.

Lines starting with ``#`` (comments in gpsd's test logs) are skipped.
Unlike live sources it ends at EOF, unless ``loop=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator
from datetime import date, datetime
from pathlib import Path
from typing import ClassVar

from agent.backoff import Backoff
from agent.gps.fix import Fix
from agent.gps.source_base import NmeaByteSource

READ_SIZE = 65536


class FileSource(NmeaByteSource):
    """Read a recorded NMEA file once (or forever with ``loop``), fast or paced."""

    kind: ClassVar[str] = "file"

    def __init__(
        self,
        path: str | Path,
        *,
        pace: float | None = None,
        loop: bool = False,
        max_gap_s: float = 5.0,
        rollover_floor: date | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if pace is not None and pace <= 0:
            raise ValueError(f"pace must be > 0 or None, got {pace}")
        super().__init__(rollover_floor=rollover_floor, name=name, backoff=backoff)
        self.path = Path(path)
        self.pace = pace
        self.loop = loop
        self.max_gap_s = max_gap_s
        self._anchor: tuple[datetime, float] | None = None  # (receiver time, mono) pacing origin

    def _reopen_at_eof(self) -> bool:
        return self.loop

    @property
    def target(self) -> str:
        return str(self.path)

    async def _chunks(self) -> AsyncGenerator[tuple[bytes, float], None]:
        f = await asyncio.to_thread(self.path.open, "rb")
        self._opened()
        try:
            while lines := await asyncio.to_thread(f.readlines, READ_SIZE):
                # '#' lines are comments in gpsd's test logs, not receiver output.
                data = b"".join(line for line in lines if not line.startswith(b"#"))
                if data:
                    yield data, time.monotonic()
        finally:
            f.close()

    async def fixes(self) -> AsyncGenerator[Fix, None]:
        self._anchor = None
        async with contextlib.aclosing(super().fixes()) as fixes:
            async for fix in fixes:
                if self.pace is None:
                    yield fix
                else:
                    await self._hold(fix)
                    yield dataclasses.replace(fix, mono=time.monotonic())

    async def _hold(self, fix: Fix) -> None:
        """Sleep until this fix is due; re-anchor on the first fix, gaps and time going back."""
        assert self.pace is not None
        if fix.time is None:
            return
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (fix.time, now)
            return
        t0, m0 = self._anchor
        elapsed = (fix.time - t0).total_seconds() / self.pace
        due = m0 + elapsed
        if elapsed < 0 or due - now > self.max_gap_s / self.pace:
            self._anchor = (fix.time, now)
            return
        if due > now:
            await asyncio.sleep(due - now)
