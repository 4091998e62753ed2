"""What every GPS source is: an endless async stream of ``Fix`` plus a status.

The split follows python-can's ``BusABC`` and its interface modules: this
module holds the interface (``GpsSource``) and the loop shared by the sources that deliver raw NMEA bytes
(``NmeaByteSource``: serial, TCP, file).  Each concrete module only knows how
to open its device and read bytes from it; parsing stays in ``agent.gps.nmea``.

Contract of ``fixes()``: it runs until cancelled.  When the device goes away
it closes, waits (exponential backoff with jitter) and opens again, and
reports this in ``status()``; it never raises because of what the device
sends.  (A file source without ``loop`` is the one exception: it ends at EOF.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator
from datetime import date
from typing import Any, ClassVar

from agent.backoff import Backoff
from agent.device import SupervisedDevice
from agent.gps.fix import Fix
from agent.gps.nmea import NmeaParser

log = logging.getLogger(__name__)


class GpsSource(SupervisedDevice):
    """A GNSS receiver, however it is reached.

    Subclasses set ``kind`` and implement ``fixes()`` (an async generator)
    and ``target`` (what they open, for status and logs).  The counters below
    are kept by the subclasses and read by ``status()``.
    """

    kind: ClassVar[str]

    def __init__(self, *, name: str | None = None, backoff: Backoff | None = None) -> None:
        super().__init__(name=name or f"gps-{self.kind}", backoff=backoff)
        self._bytes_read = 0
        self._fixes = 0

    @abstractmethod
    def fixes(self) -> AsyncGenerator[Fix, None]:
        """Yield fixes until cancelled, reopening the device as needed."""

    def status(self) -> dict[str, Any]:
        """A JSON-able health snapshot for the agent's status report and logs."""
        return {
            **self.link_status(),
            "bytes_read": self._bytes_read,
            "fixes": self._fixes,
            "parser": self._parser_stats(),
        }

    @abstractmethod
    def _parser_stats(self) -> dict[str, int]:
        """Counters of whatever turns this source's bytes into fixes."""

    # -- helpers for subclasses -------------------------------------------------

    async def _wait_before_retry(self) -> None:
        await asyncio.sleep(self._backoff.next())


def describe(exc: BaseException) -> str:
    """One line for status: the exception type and its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NmeaByteSource(GpsSource):
    """The loop shared by sources that deliver raw NMEA bytes.

    A subclass implements ``_chunks()``: an async generator that opens the
    device, calls ``self._opened()``, yields ``(data, mono)`` chunks as they
    arrive (``mono`` = ``time.monotonic()`` at arrival), closes the device in
    its ``finally`` and either returns (EOF) or raises ``OSError`` (device
    lost).  This class feeds the one ``NmeaParser`` kept for the life of the
    source (so its stats accumulate), reopens with backoff and keeps status.
    """

    def __init__(
        self,
        *,
        rollover_floor: date | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name=name, backoff=backoff)
        self._parser = NmeaParser(rollover_floor=rollover_floor)

    @abstractmethod
    def _chunks(self) -> AsyncGenerator[tuple[bytes, float], None]:
        """Open the device and yield ``(bytes, monotonic arrival time)`` until EOF or error."""

    def _parser_stats(self) -> dict[str, int]:
        return self._parser.stats.as_dict()

    def _reopen_at_eof(self) -> bool:
        """False for sources that end at EOF instead of reopening (a replayed file)."""
        return True

    async def fixes(self) -> AsyncGenerator[Fix, None]:
        while True:
            healthy = False
            try:
                async with contextlib.aclosing(self._chunks()) as chunks:
                    async for data, mono in chunks:
                        if not healthy:
                            healthy = True
                            self._backoff.reset()
                        self._bytes_read += len(data)
                        for fix in self._parser.feed(data, mono):
                            self._fixes += 1
                            yield fix
                reason = "end of stream"
            except OSError as exc:  # SerialException, ConnectionError, EIO, ENOENT ...
                reason = describe(exc)
            finally:
                self._connected = False
            # The epoch in progress is complete as far as this connection goes.
            for fix in self._parser.flush(time.monotonic()):
                self._fixes += 1
                yield fix
            if reason == "end of stream" and not self._reopen_at_eof():
                return
            self._lost(reason)
            await self._wait_before_retry()
