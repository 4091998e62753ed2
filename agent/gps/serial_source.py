"""NMEA from a serial receiver (USB CDC-ACM, USB-serial bridge, UART) with pyserial.

Why it reads the way it does:

- pyserial is blocking, so one worker thread per open port owns the
  ``Serial`` object (opens, reads and closes it) and hands byte chunks to the
  event loop with ``call_soon_threadsafe``; the loop never blocks on the port.
- It never calls ``readline()``: that loops byte by byte in Python and tops
  out near 1,700 lines/s.  It reads whatever is waiting,
  ``read(max(1, in_waiting))`` with a short timeout, so a 10 Hz multi-GNSS
  receiver at 115200 baud costs a few reads per epoch.
- Each chunk is stamped with ``time.monotonic()`` when it left the driver.
- A USB unplug shows up as ``SerialException``/``OSError`` (EIO, or "ready
  to read but returned no data"); the port is closed and reopened with
  backoff.  A udev ``/dev/serial/by-id/...`` path is the one to configure:
  it comes back under the same name when the receiver is replugged.
- The port is opened ``exclusive`` (flock) so a second agent or a stray
  gpsd does not silently split the byte stream with us.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator
from datetime import date
from typing import ClassVar

import serial

from agent.backoff import Backoff
from agent.gps.source_base import NmeaByteSource

BAUD_RATES = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800)

_Item = tuple[bytes, float] | BaseException | None  # chunk | failure | opened (None)


class SerialSource(NmeaByteSource):
    """NMEA over a serial port; ``port`` is a device path such as ``/dev/ttyACM0``."""

    kind: ClassVar[str] = "serial"

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        *,
        read_timeout: float = 0.05,
        exclusive: bool = True,
        rollover_floor: date | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if baudrate not in BAUD_RATES:
            raise ValueError(f"baudrate {baudrate} not one of {BAUD_RATES}")
        super().__init__(rollover_floor=rollover_floor, name=name, backoff=backoff)
        self.port = port
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self.exclusive = exclusive

    @property
    def target(self) -> str:
        return self.port

    async def _chunks(self) -> AsyncGenerator[tuple[bytes, float], None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        reader = _PortReader(self, loop, queue)
        reader.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    self._opened()
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            await reader.stop()


class _PortReader(threading.Thread):
    """Owns one open ``Serial`` for its whole life: open, read until told to stop or it fails."""

    def __init__(
        self,
        source: SerialSource,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[_Item],
    ) -> None:
        super().__init__(name=f"{source.name}-reader", daemon=True)
        self._source = source
        self._loop = loop
        self._queue = queue
        self._stopping = threading.Event()

    def _post(self, item: _Item) -> None:
        # The loop may already be closed if the agent is shutting down.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def run(self) -> None:
        src = self._source
        try:
            ser = serial.Serial(
                src.port, src.baudrate, timeout=src.read_timeout, exclusive=src.exclusive
            )
        except Exception as exc:  # SerialException is an OSError; others are raised as is
            self._post(exc)
            return
        try:
            self._post(None)
            while not self._stopping.is_set():
                data = ser.read(max(1, ser.in_waiting))
                if data:
                    self._post((data, time.monotonic()))
        except Exception as exc:  # a thread must not die silently: the loop re-raises it
            if not self._stopping.is_set():
                self._post(exc)
        finally:
            ser.close()

    async def stop(self) -> None:
        """Ask the thread to finish and wait (off the loop) while it closes the port.

        The read timeout bounds the wait; ``cancel_read()`` is not used because
        calling it from here could race with ``close()`` in the thread.
        """
        self._stopping.set()
        await asyncio.to_thread(self.join, 2.0)
