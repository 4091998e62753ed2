"""GPS rows of the installer's check: the port opens, NMEA arrives, the receiver has a fix.

Bytes go through the agent's own ``NmeaParser`` (what the agent would make
of them) and, for the sentence list, its ``parse_line``.  Three rows, each
depending on the one before (a later one is ``skip`` when an earlier failed):

* ``gps.port``: the device opens (serial), the server answers (tcp, gpsd),
  the file exists (file), termux-location is installed (termux);
* ``gps.nmea``: valid sentences within a few seconds.  "Nothing arrives"
  and "bytes arrive but none is NMEA" are told apart, because their fixes
  differ: the second is nearly always a wrong baud rate, so on a serial
  port the check tries the other rates and names the one that works;
* ``gps.fix``: a 2D/3D fix within the timeout, with satellites and HDOP.

On a phone (``termux``) ``gps.nmea`` is "Termux:API answers with
locations": a missing permission, a missing Termux:API app and no fix
(indoors) each get their own advice.

The port is opened ``exclusive`` as the agent does, so a running agent or
gpsd holding it is reported, not disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import serial

from agent.backoff import Backoff
from agent.check.report import Row
from agent.config import GpsConfig
from agent.gps.fix import Fix, FixMode
from agent.gps.nmea import MAX_LINE, Dropped, NmeaParser, parse_line
from agent.gps.source_base import GpsSource

#: Order in which other baud rates are tried when bytes arrive but are not NMEA:
#: the common receiver speeds first.
HUNT_ORDER = (9600, 4800, 38400, 115200, 57600, 19200, 230400, 460800)
HUNT_WINDOW_S = 2.0  # per rate: a 1 Hz receiver sends at least one whole epoch in it
NMEA_WINDOW_S = 4.0  # how long the configured port may stay without NMEA
POOR_HDOP = 5.0  # above this the fix is usable but poor (the geofences ignore it)
_FIXES_WANTED = 2  # two positioned epochs: a fix that holds, and a whole epoch's sentences

_MODE_NAMES = {FixMode.FIX_3D: "3D", FixMode.FIX_2D: "2D", FixMode.NO_FIX: "no fix"}


# -- what the bytes say (pure) ------------------------------------------------------


@dataclass
class NmeaSniffer:
    """Feed bytes as read; says how many were NMEA, which sentences, and the fixes.

    The agent's parser decides what counts (its stats and fixes); the
    census of sentence types per talker is only for the installer to read.
    """

    rollover_floor: date | None = None
    fixes: list[Fix] = field(default_factory=list)
    census: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.parser = NmeaParser(rollover_floor=self.rollover_floor)
        self._tail = b""

    def feed(self, data: bytes, mono: float) -> None:
        self.fixes.extend(self.parser.feed(data, mono))
        *lines, self._tail = (self._tail + data).split(b"\n")
        self._tail = self._tail[-MAX_LINE:]
        for line in lines:
            start = min((i for i in (line.find(b"$"), line.find(b"!")) if i >= 0), default=-1)
            if start < 0:
                continue
            try:
                report, _checked = parse_line(line[start:].rstrip(b"\r"))
            except (Dropped, UnicodeDecodeError):
                continue
            self.census[(report.key[:2], report.kind)] += 1

    @property
    def byte_count(self) -> int:
        return self.parser.stats.bytes

    @property
    def sentences(self) -> int:
        return self.parser.stats.sentences

    @property
    def positioned(self) -> list[Fix]:
        return [f for f in self.fixes if f.has_position]

    def looks_like_json(self, sample: bytes) -> bool:
        """gpsd speaks JSON lines: a TCP source pointed at gpsd's port gets ``{"class":``."""
        return b'{"class"' in sample

    def sentence_list(self) -> str:
        """``GP: RMC VTG GGA GSA GSV`` (each talker's types in order of first arrival)."""
        talkers: dict[str, list[str]] = {}
        for talker, kind in self.census:
            talkers.setdefault(talker, []).append(kind)
        return "; ".join(f"{t}: {' '.join(kinds)}" for t, kinds in talkers.items())


# -- rows (pure) -------------------------------------------------------------------


def skipped(check: str, why: str) -> Row:
    return Row(check, "skip", f"not checked: {why}")


def nmea_row(sniffer: NmeaSniffer, where: str, waited_s: float) -> Row:
    """Pass when the agent's parser accepted sentences; else say nothing vs garbage."""
    stats = sniffer.parser.stats.as_dict()
    data: dict[str, Any] = {"bytes": sniffer.byte_count, "waited_s": round(waited_s, 1), **stats}
    if sniffer.sentences:
        data["sentences_by_type"] = {f"{t}{k}": n for (t, k), n in sniffer.census.items()}
        return Row(
            "gps.nmea",
            "pass",
            f"{sniffer.sentences} NMEA sentences in {waited_s:.1f} s ({sniffer.sentence_list()})",
            data=data,
        )
    if not sniffer.byte_count:
        return Row(
            "gps.nmea",
            "fail",
            f"nothing arrives from {where} in {waited_s:.0f} s",
            "the receiver sends nothing: check it has power (its LED blinks or glows), the "
            "cable and connector, and that this is the GPS and not another device; on a "
            "Raspberry Pi UART disable the serial console (raspi-config) and set enable_uart=1",
            data=data,
        )
    return Row(
        "gps.nmea",
        "fail",
        f"bytes arrive from {where} but no valid NMEA ({sniffer.byte_count} bytes in "
        f"{waited_s:.1f} s, {stats['garbage']} garbage lines)",
        "the bytes are not NMEA 0183: check that the source is a GPS receiver sending NMEA",
        data=data,
    )


def fix_row(fixes: list[Fix], waited_s: float, now: tuple[float, float] | None = None) -> Row:
    """Pass with a 2D/3D fix (warn when HDOP is poor); fail when none came in time.

    ``now`` is (wall, monotonic) when the fixes were read live: the data then
    says how far the system clock is from GNSS time, for the clock row.
    """
    positioned = [f for f in fixes if f.has_position]
    last = positioned[-1] if positioned else (fixes[-1] if fixes else None)
    data: dict[str, Any] = {"epochs": len(fixes), "waited_s": round(waited_s, 1)}
    if last is not None:
        data.update(
            mode=int(last.mode),
            quality=last.quality,
            sats_used=last.sats_used,
            sats_in_view=last.sats_in_view,
            hdop=last.hdop,
            utc=None if last.time is None else last.time.isoformat(),
        )
    timed = [f for f in fixes if f.time is not None]
    if now is not None and timed:
        wall, mono = now
        t = timed[-1]
        assert t.time is not None
        data["system_minus_gnss_s"] = round(wall - (t.time.timestamp() + (mono - t.mono)), 3)
    if positioned and last is not None:
        assert last.lat is not None and last.lon is not None
        data.update(lat=round(last.lat, 5), lon=round(last.lon, 5))
        mode = _MODE_NAMES.get(last.mode, "2D")
        sats = "?" if last.sats_used is None else str(last.sats_used)
        in_view = "" if last.sats_in_view is None else f" ({last.sats_in_view} in view)"
        hdop = "?" if last.hdop is None else f"{last.hdop:g}"
        detail = f"{mode} fix, {sats} satellites used{in_view}, HDOP {hdop}"
        if last.hdop is not None and last.hdop > POOR_HDOP:
            return Row(
                "gps.fix",
                "warn",
                detail + " (poor)",
                "the fix is poor: give the antenna a clear view of the sky (roof or "
                "windscreen, away from metal and heated windscreens)",
                data=data,
            )
        return Row("gps.fix", "pass", detail, data=data)
    seen = "no epochs decoded"
    if last is not None:
        used = last.sats_used or 0
        in_view = "?" if last.sats_in_view is None else str(last.sats_in_view)
        seen = (
            f"receiver says {_MODE_NAMES.get(last.mode, 'no fix')}, {used} used, {in_view} in view"
        )
    return Row(
        "gps.fix",
        "fail",
        f"no position fix within {waited_s:.0f} s ({seen})",
        "the receiver works but has no fix: put the antenna where it sees the open sky "
        "(roof or windscreen, not under metal, not inside a workshop) and run the check "
        "again; after weeks switched off a first fix can take several minutes",
        data=data,
    )


def wrong_baud_fix(configured: int, found: int | None, tried: list[int], complete: bool) -> str:
    """The advice for bytes-but-no-NMEA on a serial port, from what the baud hunt found."""
    if found is not None:
        return (
            f"the receiver speaks {found} baud, not {configured}: set gps.baud = {found} "
            "in the [gps] section"
        )
    tried_text = ", ".join(str(b) for b in tried) if tried else "none"
    more = "" if complete else " (the time ran out before every rate was tried: use --timeout)"
    return (
        f"the bytes are not NMEA at {configured} baud nor at the other rates tried "
        f"({tried_text}){more}: set gps.baud to the receiver's speed (4800 on old "
        "receivers, 9600 on most, 38400 or 115200 on many modules); a receiver set to a "
        "binary protocol only (u-blox UBX) must be switched back to NMEA output"
    )


def serial_devices() -> list[str]:
    """Serial devices present now, stable names first, for the 'no such device' advice."""
    found: list[str] = []
    for pattern in (
        "/dev/serial/by-id/*",
        "/dev/ttyACM*",
        "/dev/ttyUSB*",
        "/dev/serial0",
        "/dev/rfcomm*",
    ):
        found.extend(sorted(glob.glob(pattern)))
    return found


def open_error_row(path: str, exc: BaseException) -> Row:
    """Why a serial device did not open, and the fix (ENOENT, EACCES, locked, other)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        present = serial_devices()
        listing = (
            f"serial devices present now: {', '.join(present)}"
            if present
            else "no serial device is present at all"
        )
        return Row(
            "gps.port",
            "fail",
            f"no device at {path}",
            "the receiver is not plugged in, or has another name: plug it in and set "
            "gps.device to its name (u-blox USB /dev/ttyACM0, USB-serial /dev/ttyUSB0, Pi "
            f"UART /dev/serial0; stable names in /dev/serial/by-id/); {listing}",
            data={"device": path, "present": present},
        )
    if code == errno.EACCES:
        return Row(
            "gps.port",
            "fail",
            f"permission denied on {path}",
            "the user running this may not open serial ports: sudo usermod -aG dialout "
            "<agent user> and log in again, or run the check as the agent's user",
            data={"device": path},
        )
    if code in (errno.EAGAIN, errno.EBUSY) or "lock" in text.lower():
        return Row(
            "gps.port",
            "fail",
            f"{path} is in use by another program",
            "stop what holds it: the agent (sudo systemctl stop telematics-agent) or gpsd "
            '(sudo systemctl stop gpsd.socket gpsd), or set gps.source = "gpsd" to read '
            "through gpsd",
            data={"device": path},
        )
    return Row(
        "gps.port",
        "fail",
        f"cannot open {path}: {text}",
        "check gps.device names the receiver and that it is plugged in",
        data={"device": path},
    )


# -- I/O --------------------------------------------------------------------------


def _pump(
    read: Callable[[], bytes], sniffer: NmeaSniffer, until: Callable[[], bool], end: float
) -> None:
    """Read and feed until ``until()`` holds or the monotonic time ``end`` passes."""
    while not until() and time.monotonic() < end:
        data = read()
        if data:
            sniffer.feed(data, time.monotonic())


def _stream_rows(
    read: Callable[[], bytes],
    sniffer: NmeaSniffer,
    where: str,
    deadline: float,
    window: float,
    on_garbage: Callable[[], tuple[str, dict[str, Any]]] | None = None,
) -> tuple[Row, Row]:
    """NMEA within ``window``, then a fix by ``deadline``: the nmea and fix rows.

    ``on_garbage`` is asked for the advice (and data) when bytes came but no NMEA.
    """
    start = time.monotonic()
    _pump(read, sniffer, lambda: sniffer.sentences > 0, min(deadline, start + window))
    nmea = nmea_row(sniffer, where, time.monotonic() - start)
    if nmea.status == "fail":
        if sniffer.byte_count and on_garbage is not None:
            fix, more = on_garbage()
            nmea = replace(nmea, fix=fix, data={**nmea.data, **more})
        return nmea, skipped("gps.fix", "no NMEA to read a fix from")
    _pump(read, sniffer, lambda: len(sniffer.positioned) >= _FIXES_WANTED, deadline)
    nmea = nmea_row(sniffer, where, time.monotonic() - start)  # with the whole census
    return nmea, fix_row(sniffer.fixes, time.monotonic() - start, _now())


def _now() -> tuple[float, float]:
    return time.time(), time.monotonic()


def _serial(cfg: GpsConfig, deadline: float, window: float) -> list[Row]:
    try:
        port = serial.Serial(cfg.device, cfg.baud, timeout=0.1, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        return [
            open_error_row(cfg.device, exc),
            skipped("gps.nmea", "the port did not open"),
            skipped("gps.fix", "the port did not open"),
        ]
    with contextlib.closing(port):
        # Bytes that arrived before the port had our speed are no evidence either way.
        port.reset_input_buffer()
        opened = Row(
            "gps.port",
            "pass",
            f"{cfg.device} opened at {cfg.baud} baud",
            data={"device": cfg.device, "baud": cfg.baud},
        )
        sniffer = NmeaSniffer(cfg.rollover_floor)

        def read() -> bytes:
            return bytes(port.read(max(1, port.in_waiting)))

        def hunt() -> tuple[str, dict[str, Any]]:
            found, tried, complete = _hunt_baud(port, cfg.baud, deadline)
            port.baudrate = cfg.baud
            fix = wrong_baud_fix(cfg.baud, found, tried, complete)
            return fix, {"baud": cfg.baud, "receiver_baud": found, "bauds_tried": tried}

        where = f"{cfg.device} at {cfg.baud} baud"
        try:
            nmea, fix = _stream_rows(read, sniffer, where, deadline, window, hunt)
        except (serial.SerialException, OSError) as exc:  # unplugged while reading
            return [
                opened,
                Row(
                    "gps.nmea",
                    "fail",
                    f"{cfg.device} went away while reading: {exc}",
                    "a loose plug or cable, or the receiver lost power: reseat the USB plug "
                    "(or the UART wires) and run the check again",
                ),
                skipped("gps.fix", "the device went away"),
            ]
        return [opened, nmea, fix]


def _hunt_baud(
    port: serial.Serial, configured: int, deadline: float
) -> tuple[int | None, list[int], bool]:
    """Try the other baud rates on the open port: (the rate that gave NMEA, rates tried, all tried)."""
    tried: list[int] = []
    rates = [b for b in HUNT_ORDER if b != configured]
    for rate in rates:
        if deadline - time.monotonic() < HUNT_WINDOW_S:
            return None, tried, False
        port.baudrate = rate
        port.reset_input_buffer()
        sniffer = NmeaSniffer()
        tried.append(rate)
        _pump(
            lambda: bytes(port.read(max(1, port.in_waiting))),
            sniffer,
            _at_least(sniffer, 2),
            time.monotonic() + HUNT_WINDOW_S,
        )
        if sniffer.sentences >= 2:
            return rate, tried, True
    return None, tried, True


def _at_least(sniffer: NmeaSniffer, n: int) -> Callable[[], bool]:
    return lambda: sniffer.sentences >= n


def _connect_error_row(where: str, exc: BaseException, gpsd: bool) -> Row:
    if isinstance(exc, socket.gaierror):
        return Row(
            "gps.port",
            "fail",
            f"host name in {where} not found",
            "check gps.host (an IP address avoids the lookup)",
        )
    if isinstance(exc, ConnectionRefusedError):
        fix = (
            "gpsd is not running there: sudo systemctl start gpsd.socket gpsd"
            if gpsd
            else "nothing listens there: start the NMEA server (phone apps: 'NMEA over TCP', "
            "often port 10110) and check gps.host and gps.port"
        )
        return Row("gps.port", "fail", f"connection to {where} refused", fix)
    if isinstance(exc, TimeoutError):
        return Row(
            "gps.port",
            "fail",
            f"no answer from {where}",
            "the host does not answer: check gps.host, that it is on the same network, and "
            "any firewall",
        )
    return Row(
        "gps.port", "fail", f"cannot connect to {where}: {exc}", "check gps.host and gps.port"
    )


def _tcp(cfg: GpsConfig, deadline: float, window: float) -> list[Row]:
    where = f"{cfg.host}:{cfg.port}"
    try:
        sock = socket.create_connection(
            (cfg.host, cfg.port), timeout=max(0.5, min(5.0, deadline - time.monotonic()))
        )
    except OSError as exc:
        return [
            _connect_error_row(where, exc, gpsd=False),
            skipped("gps.nmea", "no connection"),
            skipped("gps.fix", "no connection"),
        ]
    with contextlib.closing(sock):
        sock.settimeout(0.1)
        sniffer = NmeaSniffer(cfg.rollover_floor)
        first = bytearray()

        def read() -> bytes:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return b""
            if not data:
                raise ConnectionResetError("the server closed the connection")
            if len(first) < 4096:
                first.extend(data[:4096])
            return data

        def garbage() -> tuple[str, dict[str, Any]]:
            if sniffer.looks_like_json(bytes(first)):
                return 'that is gpsd\'s JSON, not NMEA: set gps.source = "gpsd"', {"json": True}
            return "check that the server at gps.host/gps.port streams NMEA 0183 text", {}

        opened = Row("gps.port", "pass", f"connected to {where}", data={"address": where})
        try:
            nmea, fix = _stream_rows(read, sniffer, where, deadline, window, garbage)
        except OSError as exc:
            return [
                opened,
                Row("gps.nmea", "fail", f"{where}: {exc}", "the server dropped the connection"),
                skipped("gps.fix", "the connection dropped"),
            ]
        return [opened, nmea, fix]


def _file(cfg: GpsConfig) -> list[Row]:
    assert cfg.path is not None
    try:
        raw = cfg.path.read_bytes()
    except OSError as exc:
        return [
            Row("gps.port", "fail", f"cannot read {cfg.path}: {exc.strerror}", "check gps.path"),
            skipped("gps.nmea", "no file"),
            skipped("gps.fix", "no file"),
        ]
    sniffer = NmeaSniffer(cfg.rollover_floor)
    sniffer.feed(raw + b"\n", 0.0)
    sniffer.fixes.extend(sniffer.parser.flush(0.0))
    opened = Row("gps.port", "pass", f"file {cfg.path} ({len(raw)} bytes)")
    nmea = nmea_row(sniffer, str(cfg.path), 0.0)
    if nmea.status == "fail":
        return [opened, nmea, skipped("gps.fix", "no NMEA")]
    return [opened, nmea, fix_row(sniffer.fixes, 0.0)]


async def _watch(
    src: GpsSource,
    deadline: float,
    enough: Callable[[dict[str, Any], list[Fix], float], bool],
) -> tuple[dict[str, Any], list[Fix], float]:
    """Run a source until it fails, ``enough(status, fixes, waited)``, or the deadline.

    Returns its last status, the fixes it gave and the seconds waited; the
    source is stopped (its client cancelled) before returning.
    """
    fixes: list[Fix] = []

    async def collect() -> None:
        async for fix in src.fixes():
            fixes.append(fix)

    start = time.monotonic()
    task = asyncio.create_task(collect())
    try:
        while time.monotonic() < deadline and not task.done():
            st = src.status()
            if st["last_error"] and not st["connected"]:
                break
            if enough(st, fixes, time.monotonic() - start):
                break
            await asyncio.sleep(0.05)
    finally:
        status = src.status()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return status, fixes, time.monotonic() - start


async def _gpsd(cfg: GpsConfig, deadline: float, window: float) -> list[Row]:
    from agent.gps.gpsd_source import GpsdSource

    where = f"{cfg.host}:{cfg.port}"
    # A long backoff: the first failure is the answer, no retries within the check.
    src = GpsdSource(
        cfg.host,
        cfg.port,
        connect_timeout=max(0.5, min(5.0, deadline - time.monotonic())),
        backoff=Backoff(min_s=60.0, max_s=60.0),
    )

    def enough(st: dict[str, Any], fixes: list[Fix], waited: float) -> bool:
        if sum(1 for f in fixes if f.has_position) >= _FIXES_WANTED:
            return True
        return waited > window and not st["devices"] and not fixes

    status, fixes, waited = await _watch(src, deadline, enough)
    if not status["connected"] and not fixes and status["last_error"]:
        reason = str(status["last_error"])
        exc: BaseException = OSError(reason)
        if "refused" in reason.lower():
            exc = ConnectionRefusedError(reason)
        elif "timed out" in reason.lower():
            exc = TimeoutError(reason)
        elif "name" in reason.lower() and "service" in reason.lower():
            exc = socket.gaierror(reason)
        return [
            _connect_error_row(where, exc, gpsd=True),
            skipped("gps.nmea", "no connection to gpsd"),
            skipped("gps.fix", "no connection to gpsd"),
        ]
    version = status.get("gpsd_version") or "?"
    devices = list(status.get("devices") or [])
    opened = Row(
        "gps.port",
        "pass",
        f"gpsd {version} at {where}",
        data={"address": where, "gpsd_version": version},
    )
    if not devices and not fixes:
        return [
            opened,
            Row(
                "gps.nmea",
                "fail",
                f"gpsd runs but has no receiver open (waited {waited:.0f} s)",
                'tell gpsd the receiver: DEVICES="/dev/ttyACM0" in /etc/default/gpsd, then '
                "sudo systemctl restart gpsd",
                data={"devices": devices},
            ),
            skipped("gps.fix", "gpsd has no receiver"),
        ]
    nmea = Row(
        "gps.nmea",
        "pass",
        f"gpsd reads {', '.join(devices) or 'a receiver'} ({len(fixes)} epochs)",
        data={"devices": devices, "epochs": len(fixes)},
    )
    return [opened, nmea, fix_row(fixes, waited, _now())]


def termux_rows(status: dict[str, Any], fixes: list[Fix], where: str, waited: float) -> list[Row]:
    """The port, answer and fix rows for a phone, from the Termux source's status (pure).

    ``gps.nmea`` stands for "Termux:API answers with locations" here.
    """
    parser = dict(status.get("parser") or {})
    opened = Row("gps.port", "pass", f"{where} runs", data={"command": status.get("target")})
    data: dict[str, Any] = {"waited_s": round(waited, 1), **parser}
    if not status.get("connected"):  # never answered with a location, fix or not
        reason = str(status.get("last_error") or f"no answer within {waited:.0f} s")
        if parser.get("permission"):
            advice = (
                "allow Location for the Termux:API app in Android's settings (Apps > "
                "Termux:API > Permissions > Location > Allow all the time), then run the "
                "check again"
            )
        elif parser.get("timeouts"):
            advice = (
                "go outdoors (or near a window) with location switched on; open the "
                "Termux:API app once and exempt it and Termux from battery optimisation; "
                "a first fix can take a minute"
            )
        else:
            advice = "install the Termux:API app (from F-Droid, like Termux) and open it once"
        return [
            opened,
            Row("gps.nmea", "fail", f"Termux:API gives no location: {reason}", advice, data=data),
            skipped("gps.fix", "no location from Termux:API"),
        ]
    answers, usable = int(parser.get("answers", 0)), int(parser.get("fixes", 0))
    nmea = Row(
        "gps.nmea", "pass", f"Termux:API answers ({usable} of {answers} answers usable)", data=data
    )
    if not fixes and status.get("last_reject"):
        return [
            opened,
            nmea,
            Row(
                "gps.fix",
                "fail",
                f"no usable fix: {status['last_reject']}",
                "a mocked location comes from a location-faking app: disable it (or set "
                "gps.termux.accept_mock); a stale one means the GPS has no current fix: go "
                "outdoors",
                data=data,
            ),
        ]
    return [opened, nmea, fix_row(fixes, waited, _now())]


async def _termux(cfg: GpsConfig, deadline: float) -> list[Row]:
    from agent.gps.termux_source import MISSING_HINT, TermuxLocationSource

    opts = cfg.termux.options()
    exe = shutil.which(opts.executable)
    if exe is None:
        return [
            Row(
                "gps.port",
                "fail",
                f"{opts.executable} not found",
                MISSING_HINT,
            ),
            skipped("gps.nmea", f"no {opts.executable}"),
            skipped("gps.fix", f"no {opts.executable}"),
        ]
    budget = max(1.0, deadline - time.monotonic())
    src = TermuxLocationSource(
        replace(opts, fix_timeout_s=min(opts.fix_timeout_s, budget), battery=False),
        time_floor=cfg.rollover_floor,
        backoff=Backoff(min_s=60.0, max_s=60.0),  # the first failure is the answer
    )

    def enough(st: dict[str, Any], fixes: list[Fix], waited: float) -> bool:
        return any(f.has_position for f in fixes) or st["parser"]["answers"] >= 3

    status, fixes, waited = await _watch(src, deadline, enough)
    return termux_rows(status, fixes, exe, waited)


def probe_gps(cfg: GpsConfig, deadline: float, *, window: float = NMEA_WINDOW_S) -> list[Row]:
    """The three GPS rows for the configured source; returns by ``deadline`` (monotonic)."""
    if cfg.source == "serial":
        return _serial(cfg, deadline, window)
    if cfg.source == "tcp":
        return _tcp(cfg, deadline, window)
    if cfg.source == "file":
        return _file(cfg)
    if cfg.source == "termux":
        return asyncio.run(_termux(cfg, deadline))
    return asyncio.run(_gpsd(cfg, deadline, window))
