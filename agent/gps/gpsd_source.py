"""Fixes from a running gpsd, over its JSON protocol, streamed with asyncio.

gpsd-py3 (``import gpsd``, 0.3.0) was read and tried against gpsd 3.22 before
writing this, and is deliberately not used on this path:

- It is a *poll* client.  ``gpsd.connect()`` sends ``?WATCH={"enable":true}``
  without ``"json":true`` (gpsd opens the receiver but streams nothing) and
  ``gpsd.get_current()`` sends ``?POLL;`` and returns the newest TPV/SKY at
  that moment.  Epochs between two polls are lost and a fast poll returns the
  same epoch twice: polling every 50 ms against a 1 Hz log (sped up) gave 38
  answers for 25 distinct epochs, with gaps.  It cannot deliver every epoch.
- Turning on JSON streaming breaks it: ``get_current()`` reads one line and
  raises ``Exception("Unexpected message received from gps: TPV")`` (we saw
  ``DEVICES``) when the line is not the POLL answer.
- Its state is module-global (one socket per process, ``gpsd.state``), the
  socket is blocking with no timeout and there is no disconnect call, so it
  can neither reconnect cleanly nor run beside the event loop except in a
  thread that may hang forever on a silent gpsd.
- Its response parsing (``GpsResponse.from_json``) needs the POLL envelope,
  turns every missing value into 0 (a stopped van and "speed unknown" become
  the same), has no DOPs, no ``altMSL``/``geoidSep``, and counts satellites
  by list length, which with multi-signal GSV over-counts (82 "sats" from a
  receiver using 16).

So the connection, the ``?WATCH={"enable":true,"json":true}`` handshake and
the TPV/SKY reading are done here with ``asyncio.open_connection`` (a few
lines), and gpsd-py3 stays a declared dependency the agent does not import.

gpsd reports a TPV after almost every sentence while an epoch is assembled
(the later ones more complete), then a new time.  ``GpsdEpochs`` (pure, no
I/O) keeps the newest TPV per time and emits it when a later time arrives, or
``flush_after`` seconds after the epoch began, or on disconnect; a TPV for a
time already emitted is dropped (counted as ``late_tpv``).  DOPs and
satellite counts come from the newest SKY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any, ClassVar

from agent.backoff import Backoff
from agent.gps.fix import Fix, FixMode
from agent.gps.source_base import GpsSource, describe

log = logging.getLogger(__name__)

LINE_LIMIT = 1 << 20  # gpsd SKY with 60+ signals is a few kB; this bounds memory

# gpsd TPV "status" -> NMEA GGA quality.  gpsd leaves "status" out for a plain
# GPS fix, so a 2D/3D fix without it is quality 1.
_STATUS_TO_QUALITY = {0: 0, 1: 1, 2: 2, 3: 4, 4: 5, 5: 6, 6: 6, 8: 8}

_SKY_KEYS = ("hdop", "pdop", "vdop", "uSat", "nSat")


def _num(msg: dict[str, Any], key: str) -> float | None:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(msg: dict[str, Any], key: str) -> int | None:
    value = msg.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_gpsd_time(value: object) -> datetime | None:
    """gpsd's ISO 8601 UTC (``2019-04-12T00:39:56.000Z``); very old gpsd sent Unix seconds."""
    try:
        if isinstance(value, str):
            t = datetime.fromisoformat(value)
            return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def tpv_to_fix(tpv: dict[str, Any], sky: dict[str, Any], mono: float) -> Fix:
    """One gpsd TPV (plus the newest SKY fields) as a ``Fix``; absent values stay ``None``."""
    raw_mode = _count(tpv, "mode")
    mode = FixMode(raw_mode) if raw_mode in (0, 1, 2, 3) else FixMode.UNKNOWN
    has_pos = mode >= FixMode.FIX_2D
    status = _count(tpv, "status")
    quality = 1 if has_pos else None
    if status is not None:
        quality = _STATUS_TO_QUALITY.get(status)
    used = _count(sky, "uSat")
    seen = _count(sky, "nSat")
    sats = sky.get("satellites")
    if isinstance(sats, list):  # gpsd before 3.21 has no uSat/nSat
        if used is None:
            used = sum(1 for s in sats if isinstance(s, dict) and s.get("used") is True)
        if seen is None:
            seen = len(sats)
    alt_msl = _num(tpv, "altMSL")
    return Fix(
        time=parse_gpsd_time(tpv.get("time")),
        mono=mono,
        mode=mode,
        lat=_num(tpv, "lat") if has_pos else None,
        lon=_num(tpv, "lon") if has_pos else None,
        alt_msl=alt_msl if alt_msl is not None else _num(tpv, "alt"),  # "alt" was MSL before 3.20
        geoid_sep=_num(tpv, "geoidSep"),
        speed=_num(tpv, "speed"),
        course=_num(tpv, "track"),
        quality=quality,
        sats_used=used,
        sats_in_view=seen,
        hdop=_num(sky, "hdop"),
        pdop=_num(sky, "pdop"),
        vdop=_num(sky, "vdop"),
    )


class GpsdEpochs:
    """gpsd TPV/SKY reports in, one ``Fix`` per receiver epoch out (pure: no I/O, no clock)."""

    def __init__(self, flush_after: float = 1.5) -> None:
        self.flush_after = flush_after
        self.stats = {"tpv": 0, "sky": 0, "late_tpv": 0}
        self._sky: dict[str, Any] = {}
        self._pending: dict[str, Any] | None = None
        self._pending_since = 0.0
        self._pending_mono = 0.0
        self._emitted_time: object = None  # raw "time" of the last emitted epoch

    def reset(self) -> None:
        """A new connection: forget the sky view; the caller flushes the pending epoch first."""
        self._sky = {}

    def due(self) -> float | None:
        """Monotonic time at which the pending epoch must be emitted even without a successor."""
        return None if self._pending is None else self._pending_since + self.flush_after

    def add(self, msg: dict[str, Any], mono: float) -> list[Fix]:
        """Take one decoded gpsd object; return the fixes it completes."""
        cls = msg.get("class")
        if cls == "SKY":
            self.stats["sky"] += 1
            self._sky.update({k: msg[k] for k in (*_SKY_KEYS, "satellites") if k in msg})
            return []
        if cls != "TPV":
            return []
        self.stats["tpv"] += 1
        key = msg.get("time")
        if key is not None and key == self._emitted_time:
            self.stats["late_tpv"] += 1
            return []
        out: list[Fix] = []
        if self._pending is not None and self._pending.get("time") != key:
            out = self.flush()
        if self._pending is None:
            self._pending_since = mono
        self._pending = msg  # gpsd's TPVs within an epoch are cumulative: newest is fullest
        self._pending_mono = mono
        return out

    def flush(self) -> list[Fix]:
        """Emit the pending epoch (successor arrived, ``due()`` passed, or disconnect)."""
        if self._pending is None:
            return []
        tpv, self._pending = self._pending, None
        self._emitted_time = tpv.get("time")
        return [tpv_to_fix(tpv, self._sky, self._pending_mono)]


class GpsdSource(GpsSource):
    """Stream every epoch from gpsd at ``host:port``; reconnect with backoff when it goes away.

    ``device`` restricts the WATCH to one receiver: set it when gpsd has more
    than one, or their TPVs interleave.  ``idle_timeout`` (None by default:
    gpsd is silent whenever no receiver is attached) reconnects after that
    many seconds without a line, for a gpsd across a network.
    """

    kind: ClassVar[str] = "gpsd"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2947,
        *,
        device: str | None = None,
        flush_after: float = 1.5,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = None,
        name: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name=name, backoff=backoff)
        self.host = host
        self.port = port
        self.device = device
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._epochs = GpsdEpochs(flush_after)
        self._counts = {"lines": 0, "bad_json": 0}
        self._devices: dict[str, bool] = {}
        self._version: str | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def status(self) -> dict[str, Any]:
        """Base status plus ``devices`` (receivers gpsd has open) and ``gpsd_version``."""
        out = super().status()
        out["devices"] = sorted(path for path, active in self._devices.items() if active)
        out["gpsd_version"] = self._version
        return out

    def _parser_stats(self) -> dict[str, int]:
        return {**self._counts, **self._epochs.stats}

    def watch_command(self) -> bytes:
        watch: dict[str, Any] = {"enable": True, "json": True}
        if self.device is not None:
            watch["device"] = self.device
        return f"?WATCH={json.dumps(watch, separators=(',', ':'))};\n".encode()

    async def fixes(self) -> AsyncGenerator[Fix, None]:
        while True:
            try:
                async with contextlib.aclosing(self._session()) as session:
                    async for fix in session:
                        self._fixes += 1
                        yield fix
                reason = "gpsd closed the connection"
            except OSError as exc:  # ConnectionError, TimeoutError, refused ...
                reason = describe(exc)
            finally:
                self._connected = False
                self._devices.clear()
            for fix in self._epochs.flush():
                self._fixes += 1
                yield fix
            self._lost(reason)
            await self._wait_before_retry()

    async def _session(self) -> AsyncGenerator[Fix, None]:
        """One connection: handshake, then read lines until EOF or error."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, limit=LINE_LIMIT
                )
        except TimeoutError as exc:
            raise TimeoutError(f"connect timed out after {self.connect_timeout:g} s") from exc
        self._opened()
        self._epochs.reset()
        healthy = False
        try:
            writer.write(self.watch_command())
            await writer.drain()
            last_line = time.monotonic()
            while True:
                line = await self._readline(reader, last_line)
                mono = time.monotonic()
                if line is None:  # the pending epoch is due
                    for fix in self._epochs.flush():
                        yield fix
                    continue
                if not line:
                    return
                last_line = mono
                if not healthy:
                    healthy = True
                    self._backoff.reset()
                self._bytes_read += len(line)
                for fix in self._handle(line, mono):
                    yield fix
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _readline(self, reader: asyncio.StreamReader, last_line: float) -> bytes | None:
        """The next line, ``b""`` at EOF, or ``None`` when the pending epoch's deadline comes first."""
        idle_at = None if self.idle_timeout is None else last_line + self.idle_timeout
        due = self._epochs.due()
        deadline = min((t for t in (idle_at, due) if t is not None), default=None)
        try:
            async with asyncio.timeout(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            ):
                return await reader.readline()
        except TimeoutError:
            if due is not None and deadline == due:
                return None
            raise TimeoutError(f"no data from gpsd for {self.idle_timeout:g} s") from None
        except ValueError as exc:  # a line beyond LINE_LIMIT: the stream is not gpsd's
            raise ConnectionError(f"protocol error: {exc}") from None

    def _handle(self, line: bytes, mono: float) -> list[Fix]:
        self._counts["lines"] += 1
        try:
            msg = json.loads(line)
        except ValueError:
            self._counts["bad_json"] += 1
            return []
        if not isinstance(msg, dict):
            self._counts["bad_json"] += 1
            return []
        cls = msg.get("class")
        if cls in ("TPV", "SKY"):
            if self.device is not None and msg.get("device", self.device) != self.device:
                return []
            return self._epochs.add(msg, mono)
        if cls == "VERSION":
            self._version = str(msg.get("release"))
        elif cls == "DEVICES":
            devices = msg.get("devices")
            if isinstance(devices, list):
                self._devices = {
                    d["path"]: bool(d.get("activated"))
                    for d in devices
                    if isinstance(d, dict) and isinstance(d.get("path"), str)
                }
        elif cls == "DEVICE" and isinstance(msg.get("path"), str):
            self._devices[msg["path"]] = bool(msg.get("activated"))
        elif cls == "ERROR":
            self._last_error = f"gpsd: {msg.get('message')}"
            log.warning("%s: %s", self.name, self._last_error)
        return []
