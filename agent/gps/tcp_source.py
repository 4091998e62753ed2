"""NMEA over a TCP stream: phone apps ("NMEA over TCP"), network receivers, gpsfake -t.

The peer only sends; nothing is written to it.  A connection that stays
silent for ``idle_timeout`` seconds is treated as lost: a phone that left
Wi-Fi, or a NAT that dropped the mapping, never sends a FIN, and without
this the source would wait forever on a dead socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from datetime import date
from typing import ClassVar

from agent.backoff import Backoff
from agent.gps.source_base import NmeaByteSource

READ_SIZE = 65536


class TcpSource(NmeaByteSource):
    """Connect to ``host:port`` and read NMEA; reconnect with backoff on EOF, error or silence."""

    kind: ClassVar[str] = "tcp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = 30.0,
        rollover_floor: date | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(rollover_floor=rollover_floor, name=name, backoff=backoff)
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def _chunks(self) -> AsyncGenerator[tuple[bytes, float], None]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError as exc:
            raise TimeoutError(f"connect timed out after {self.connect_timeout:g} s") from exc
        self._opened()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await reader.read(READ_SIZE)
                except TimeoutError as exc:
                    raise TimeoutError(f"no data for {self.idle_timeout:g} s") from exc
                if not data:
                    raise ConnectionResetError("peer closed the connection")
                yield data, time.monotonic()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
