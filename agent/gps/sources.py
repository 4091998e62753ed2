"""GPS sources: pick one by kind.  The classes live in one module per transport.

``open_source`` only builds the object; nothing is opened until its
``fixes()`` is iterated, so a missing device at start-up is a status, not a
crash.  Usage::

    src = open_source("serial", device="/dev/serial/by-id/usb-u-blox...", baud=38400)
    async for fix in src.fixes():
        ...
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from agent.backoff import Backoff
from agent.gps.file_source import FileSource
from agent.gps.gpsd_source import GpsdSource
from agent.gps.serial_source import SerialSource
from agent.gps.source_base import GpsSource, NmeaByteSource
from agent.gps.tcp_source import TcpSource
from agent.gps.termux_source import TermuxLocationSource, TermuxOptions

__all__ = [
    "Backoff",
    "FileSource",
    "GpsSource",
    "GpsdSource",
    "NmeaByteSource",
    "SerialSource",
    "TcpSource",
    "TermuxLocationSource",
    "TermuxOptions",
    "open_source",
]

KINDS = ("serial", "tcp", "file", "gpsd", "termux")


def open_source(
    kind: str,
    *,
    device: str = "/dev/ttyACM0",
    baud: int = 9600,
    host: str = "127.0.0.1",
    port: int = 2947,
    path: str | Path | None = None,
    rollover_floor: date | None = None,
    pace: float | None = None,
    termux: TermuxOptions | None = None,
    name: str | None = None,
    backoff: Backoff | None = None,
) -> GpsSource:
    """Build the source for ``kind``; each kind uses only its own parameters.

    serial: ``device``, ``baud``; tcp: ``host``, ``port`` (an NMEA stream);
    gpsd: ``host``, ``port`` (gpsd's JSON, normally 2947); file: ``path``,
    ``pace`` (None = as fast as possible, 1.0 = real time).
    termux: ``termux`` (``TermuxOptions``: provider, timeouts, the power
    policy; the defaults without it).  ``rollover_floor`` goes to the NMEA
    parser (serial, tcp, file) and, for termux, is the earliest date the
    phone's clock may show for its time to be used.
    """
    if kind == "serial":
        return SerialSource(device, baud, rollover_floor=rollover_floor, name=name, backoff=backoff)
    if kind == "tcp":
        return TcpSource(host, port, rollover_floor=rollover_floor, name=name, backoff=backoff)
    if kind == "file":
        if path is None:
            raise ValueError("a file source needs path")
        return FileSource(
            path, pace=pace, rollover_floor=rollover_floor, name=name, backoff=backoff
        )
    if kind == "gpsd":
        return GpsdSource(host, port, name=name, backoff=backoff)
    if kind == "termux":
        return TermuxLocationSource(termux, time_floor=rollover_floor, name=name, backoff=backoff)
    raise ValueError(f"unknown GPS source kind {kind!r}; expected one of {', '.join(KINDS)}")
