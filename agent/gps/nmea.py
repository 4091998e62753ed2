"""NMEA 0183 byte framing and sentence parsing, pure (no I/O but the replay helper).

:class:`NmeaParser` takes bytes exactly as a serial port, TCP socket or file
delivers them (any chunking), frames lines, verifies checksums, parses the
sentences a position needs (RMC, GGA, GSA, VTG, GSV, GLL, GNS, ZDA, any
talker) and hands them to :class:`~agent.gps.epoch.EpochAssembler`, which
turns each receiver epoch into one :class:`~agent.gps.fix.Fix`.

Real receivers and links send much that is not a clean sentence: binary
protocols interleaved, wrong-baud noise, lines cut off or glued together,
NUL padding, ``$$`` prefixes, lower-case or missing checksums, proprietary
and unknown sentences.  Nothing that arrives may raise out of :meth:`feed`,
and every line that is dropped is counted in exactly one
:class:`NmeaStats` counter, so a link's health can be read off them.

pynmea2 supplies the sentence classes and their field tables (which field
is where).  Its ``parse`` is not used on the hot path: it runs a regex per
line, re-verifies the checksum checked here, and its typed accessors hand
back the raw string when a value does not convert (``'x.039'`` as a speed,
``'2208-1'`` as a date), so values are converted and validated here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import pynmea2

from agent.gps.epoch import KMH_TO_MPS, KNOTS_TO_MPS, EpochAssembler, Report
from agent.gps.fix import Fix

MAX_LINE = 512  # bytes; NMEA allows 82, real receivers reach ~100, longer is junk
_PRINTABLE = bytes(range(0x20, 0x7F))
_DELIMS = re.compile(rb"[\r\n$]")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(slots=True)
class NmeaStats:
    """Exact counters of what came in and why each dropped line was dropped.

    Every non-blank framed line is counted in ``lines`` and then either
    accepted (``sentences``) or counted in exactly one rejection counter, so
    ``lines == sentences + rejected()``.  ``missing_checksum`` counts
    accepted sentences that had no checksum; it is not a rejection.
    Sentence types this parser does not use count as ``unknown_type``.
    """

    bytes: int = 0
    lines: int = 0
    sentences: int = 0
    bad_checksum: int = 0
    missing_checksum: int = 0
    truncated: int = 0
    garbage: int = 0
    parse_error: int = 0
    unknown_type: int = 0
    proprietary: int = 0
    oversized: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def rejected(self) -> int:
        """Lines dropped, for whatever reason."""
        return (
            self.bad_checksum
            + self.truncated
            + self.garbage
            + self.parse_error
            + self.unknown_type
            + self.proprietary
            + self.oversized
        )


class Dropped(Exception):
    """A line is not used; ``reason`` is the NmeaStats counter it is counted in."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _truncated() -> Dropped:
    return Dropped("truncated")


def _bad() -> Dropped:
    return Dropped("parse_error")


# -- framing ------------------------------------------------------------------


class _Framer:
    """Splits a byte stream into lines at CR, LF and before every ``$``.

    Splitting before ``$`` recovers a sentence glued to noise or to a cut-off
    predecessor; a run of ``$`` collapses into one (``$$GPGGA``).  A line
    longer than MAX_LINE is discarded up to its end and returned once as
    ``None`` (oversized), so memory stays bounded whatever arrives.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False

    def push(self, data: bytes) -> list[bytes | None]:
        """Complete lines found in ``data`` (plus what was pending); ``None`` = oversized."""
        out: list[bytes | None] = []
        start = 0
        for m in _DELIMS.finditer(data):
            pos = m.start()
            self._append(data[start:pos])
            if data[pos] == 0x24:  # "$": a new line starts here
                if self._overflow or self._buf != b"$":
                    self._finish(out)
                self._buf = bytearray(b"$")
            else:
                self._finish(out)
            start = pos + 1
        self._append(data[start:])
        return out

    def _append(self, chunk: bytes) -> None:
        if self._overflow or not chunk:
            return
        if len(self._buf) + len(chunk) > MAX_LINE:
            self._overflow = True
            self._buf = bytearray()
        else:
            self._buf += chunk

    def _finish(self, out: list[bytes | None]) -> None:
        if self._overflow:
            out.append(None)
        elif self._buf.strip(b" "):
            out.append(bytes(self._buf))
        self._buf = bytearray()
        self._overflow = False


# -- field conversion -----------------------------------------------------------


def _field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def _float(s: str) -> float | None:
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        raise _bad() from None
    if not math.isfinite(v) or "_" in s:  # float() takes "nan", "inf", "1_0"
        raise _bad()
    return v


def _int(s: str) -> int | None:
    if not s:
        return None
    if not s.isdigit():
        raise _bad()
    return int(s)


def _tod(s: str) -> int | None:
    """``hhmmss[.sss]`` as microseconds since midnight, exactly (no float rounding).

    A leap second (``235960``) becomes 23:59:59.999999: Python datetimes
    cannot hold it, and it must stay distinct from the seconds around it.
    """
    if not s:
        return None
    whole, _, frac = s.partition(".")
    if len(whole) != 6 or not whole.isdigit() or (frac and not frac.isdigit()):
        raise _bad()
    h, m, sec = int(whole[0:2]), int(whole[2:4]), int(whole[4:6])
    if h > 23 or m > 59 or sec > 60:
        raise _bad()
    if sec == 60:
        return ((h * 60 + m) * 60 + 60) * 1_000_000 - 1
    us = int((frac + "000000")[:6]) if frac else 0
    return ((h * 60 + m) * 60 + sec) * 1_000_000 + us


def _ddmmyy(s: str) -> date | None:
    """RMC date.  Two-digit years 80..99 are 19xx, the rest 20xx.

    Telit HE910 firmware sends year ``-1`` (and ``99``) for 2019 after the
    April 2019 rollover: both are 1999, 1024 weeks early, and the rollover
    floor moves them forward.
    """
    if not s:
        return None
    yy = s[4:]
    if len(s) != 6 or not s[:4].isdigit() or not (yy.isdigit() or yy == "-1"):
        raise _bad()
    year = int(yy) + (1900 if yy.isdigit() and int(yy) >= 80 else 2000)
    try:
        return date(year, int(s[2:4]), int(s[0:2]))
    except ValueError:
        raise _bad() from None


def _angle(value: str, hemi: str, pos: str, neg: str, limit: float) -> float | None:
    """``dddmm.mmmm`` plus hemisphere letter as signed degrees."""
    if not value:
        return None
    whole, _, frac = value.partition(".")
    if not whole.isdigit() or len(whole) < 2 or (frac and not frac.isdigit()):
        raise _bad()
    minutes = float(f"{whole[-2:]}.{frac or '0'}")
    deg = int(whole[:-2] or "0") + minutes / 60.0
    if minutes >= 60.0 or deg > limit or hemi not in (pos, neg):
        raise _bad()
    return -deg if hemi == neg else deg


def _lat_lon(fields: list[str], i: int) -> tuple[float | None, float | None]:
    lat = _angle(_field(fields, i), _field(fields, i + 1), "N", "S", 90.0)
    lon = _angle(_field(fields, i + 2), _field(fields, i + 3), "E", "W", 180.0)
    if (lat is None) != (lon is None):
        raise _bad()
    return lat, lon


def _status_fix(status: str, mode: str) -> bool | None:
    """RMC/GLL status (A valid, V void) refined by the NMEA 2.3 mode (N = not valid)."""
    if status == "A":
        return mode != "N"
    if status in ("V", "N"):  # Magellan's GLL puts N (not valid) in the status field
        return False
    if not status:
        return None
    raise _bad()


def _need(fields: list[str], need: int, full: int, checked: bool) -> None:
    """Too few fields is a line cut short; without a checksum insist on the full count."""
    if len(fields) < (need if checked else full):
        raise _truncated()


# -- sentence parsers -----------------------------------------------------------
# Each takes (talker, fields after the header, checksum present) and returns a
# Report or raises Dropped.  Field positions come from pynmea2's field tables.


def _idx(cls: type, name: str) -> int:
    table: dict[str, int] = cls.name_to_idx  # type: ignore[attr-defined]
    return table[name]


_T = pynmea2.types.talker
_RMC_TIME, _RMC_STATUS, _RMC_LAT = (_idx(_T.RMC, n) for n in ("timestamp", "status", "lat"))
_RMC_SPEED, _RMC_COURSE = _idx(_T.RMC, "spd_over_grnd"), _idx(_T.RMC, "true_course")
_RMC_DATE, _RMC_MODE = _idx(_T.RMC, "datestamp"), _idx(_T.RMC, "mode_indicator")
_GGA_TIME, _GGA_LAT, _GGA_QUAL = (_idx(_T.GGA, n) for n in ("timestamp", "lat", "gps_qual"))
_GGA_SATS, _GGA_HDOP = _idx(_T.GGA, "num_sats"), _idx(_T.GGA, "horizontal_dil")
_GGA_ALT, _GGA_SEP = _idx(_T.GGA, "altitude"), _idx(_T.GGA, "geo_sep")
_GSA_MODE = _idx(_T.GSA, "mode_fix_type")
_GSA_PRNS = slice(_idx(_T.GSA, "sv_id01"), _idx(_T.GSA, "sv_id12") + 1)
_GSA_DOPS = tuple(_idx(_T.GSA, n) for n in ("pdop", "hdop", "vdop"))
_VTG_TRACK, _VTG_KNOTS = _idx(_T.VTG, "true_track"), _idx(_T.VTG, "spd_over_grnd_kts")
_VTG_KMH, _VTG_MODE = _idx(_T.VTG, "spd_over_grnd_kmph"), _idx(_T.VTG, "faa_mode")
_GLL_LAT, _GLL_TIME = _idx(_T.GLL, "lat"), _idx(_T.GLL, "timestamp")
_GLL_STATUS, _GLL_MODE = _idx(_T.GLL, "status"), _idx(_T.GLL, "faa_mode")
_GNS_TIME, _GNS_LAT, _GNS_MODE = (_idx(_T.GNS, n) for n in ("timestamp", "lat", "mode_indicator"))
_GNS_SATS, _GNS_HDOP = _idx(_T.GNS, "num_sats"), _idx(_T.GNS, "hdop")
_GNS_ALT, _GNS_SEP = _idx(_T.GNS, "altitude"), _idx(_T.GNS, "geo_sep")
_ZDA_TIME, _ZDA_DAY = _idx(_T.ZDA, "timestamp"), _idx(_T.ZDA, "day")
_ZDA_MONTH, _ZDA_YEAR = _idx(_T.ZDA, "month"), _idx(_T.ZDA, "year")


def _rmc(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, _RMC_DATE + 1, 11, checked)
    fix = _status_fix(f[_RMC_STATUS], _field(f, _RMC_MODE)[:1])
    tod, day = _tod(f[_RMC_TIME]), _ddmmyy(f[_RMC_DATE])
    knots, course = _float(f[_RMC_SPEED]), _float(f[_RMC_COURSE])
    lat, lon = _lat_lon(f, _RMC_LAT) if fix else (None, None)
    return Report(
        kind="RMC",
        key=talker + "RMC",
        tod=tod,
        day=day,
        fix=fix,
        lat=lat,
        lon=lon,
        speed=knots * KNOTS_TO_MPS if knots is not None and fix else None,
        course=course if fix else None,
    )


def _gga(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, _GGA_SEP + 1, 14, checked)
    tod, quality, sats = _tod(f[_GGA_TIME]), _int(f[_GGA_QUAL]), _int(f[_GGA_SATS])
    hdop, alt, sep = _float(f[_GGA_HDOP]), _float(f[_GGA_ALT]), _float(f[_GGA_SEP])
    claims = quality is not None and quality > 0
    # A fix from zero satellites (Hemisphere while acquiring) proves nothing by
    # itself, but Furuno's GNGGA always says 00: the epoch's other sentences decide.
    fix = None if quality is None or (claims and sats == 0) else claims
    lat, lon = _lat_lon(f, _GGA_LAT) if claims else (None, None)
    return Report(
        kind="GGA",
        key=talker + "GGA",
        tod=tod,
        fix=fix,
        lat=lat,
        lon=lon,
        alt_msl=alt if claims else None,
        geoid_sep=sep if claims else None,
        quality=quality,
        sats_used=sats,
        hdop=hdop,
    )


def _gsa(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, _GSA_MODE + 1, 17, checked)
    mode = _int(f[_GSA_MODE])
    if mode is not None and mode not in (1, 2, 3):
        raise _bad()
    pdop, hdop, vdop = (_float(_field(f, i)) for i in _GSA_DOPS)
    system = _field(f, _GSA_DOPS[-1] + 1)  # NMEA 4.1: one GSA per GNSS system
    return Report(
        kind="GSA",
        key=talker + "GSA" + system,
        fix=None if mode is None else mode >= 2,
        gsa_mode=mode,
        sats_used=sum(1 for prn in f[_GSA_PRNS] if prn),
        pdop=pdop,
        hdop=hdop,
        vdop=vdop,
    )


def _vtg(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, _VTG_KMH + 1, 8, checked)
    course, knots, kmh = _float(f[_VTG_TRACK]), _float(f[_VTG_KNOTS]), _float(f[_VTG_KMH])
    if _field(f, _VTG_MODE)[:1] == "N":  # NMEA 2.3: data not valid
        return Report(kind="VTG", key=talker + "VTG", fix=False)
    if knots is not None:
        speed: float | None = knots * KNOTS_TO_MPS
    else:
        speed = None if kmh is None else kmh * KMH_TO_MPS
    return Report(kind="VTG", key=talker + "VTG", speed=speed, course=course)


def _gsv(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, 3, 3, checked)
    total, num, in_view = _int(f[0]), _int(f[1]), _int(f[2])
    if total is None or num is None or not 1 <= num <= total:
        raise _bad()
    blocks = 0 if in_view is None else max(0, min(4, in_view - 4 * (num - 1)))
    if not checked and len(f) < 3 + 4 * blocks:  # no checksum: demand every satellite block
        raise _truncated()
    signal = f[-1] if len(f) % 4 == 0 else ""  # NMEA 4.1 signal id after the blocks
    return Report(
        kind="GSV",
        key=talker + ("GSV" if num == total else "GSV-part"),
        sats_in_view=in_view,
        view_group=talker + signal,
    )


def _gll(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, _GLL_TIME + 1, 6, checked)
    fix = _status_fix(_field(f, _GLL_STATUS), _field(f, _GLL_MODE)[:1])
    lat, lon = _lat_lon(f, _GLL_LAT) if fix else (None, None)
    return Report(kind="GLL", key=talker + "GLL", tod=_tod(f[_GLL_TIME]), fix=fix, lat=lat, lon=lon)


def _gns(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, _GNS_SEP + 1, 12, checked)
    modes = f[_GNS_MODE]  # one letter per constellation, N = no fix
    if modes and not modes.isalpha():
        raise _bad()
    fix = None if not modes else modes.strip("N") != ""
    lat, lon = _lat_lon(f, _GNS_LAT) if fix else (None, None)
    return Report(
        kind="GNS",
        key=talker + "GNS",
        tod=_tod(f[_GNS_TIME]),
        fix=fix,
        lat=lat,
        lon=lon,
        alt_msl=_float(f[_GNS_ALT]) if fix else None,
        geoid_sep=_float(f[_GNS_SEP]) if fix else None,
        sats_used=_int(f[_GNS_SATS]),
        hdop=_float(f[_GNS_HDOP]),
    )


def _zda(talker: str, f: list[str], checked: bool) -> Report:
    _need(f, _ZDA_YEAR + 1, 6, checked)
    d, m, y = _int(f[_ZDA_DAY]), _int(f[_ZDA_MONTH]), _int(f[_ZDA_YEAR])
    day = None
    if d is not None and m is not None and y is not None:
        try:
            day = date(y, m, d)
        except ValueError:
            raise _bad() from None
    return Report(kind="ZDA", key=talker + "ZDA", tod=_tod(f[_ZDA_TIME]), day=day)


_PARSERS: dict[str, Callable[[str, list[str], bool], Report]] = {
    "RMC": _rmc,
    "GGA": _gga,
    "GSA": _gsa,
    "VTG": _vtg,
    "GSV": _gsv,
    "GLL": _gll,
    "GNS": _gns,
    "ZDA": _zda,
}


def _checksum(body: str) -> int:
    c = 0
    for b in body.encode("ascii"):
        c ^= b
    return c


def _split_checksum(s: str) -> tuple[str, bool]:
    """The body between ``$`` and ``*``, and whether a checksum was present (a bad one raises)."""
    star = s.rfind("*")
    if star < 0:
        return s[1:], False
    cs = s[star + 1 :]
    if len(cs) < 2:
        raise _truncated()
    if len(cs) > 2 or not _HEX.issuperset(cs) or int(cs, 16) != _checksum(s[1:star]):
        raise Dropped("bad_checksum")
    return s[1:star], True


def parse_line(raw: bytes) -> tuple[Report, bool]:
    """One framed line as a Report, and whether it carried a checksum.

    Raises :class:`Dropped` naming the counter for any line that is not used.
    """
    if raw.translate(None, _PRINTABLE):
        raise Dropped("garbage")  # control bytes, NUL, 8-bit: binary data or wrong baud
    s = raw.decode("ascii").strip(" ")
    if s[:1] not in ("$", "!"):
        raise Dropped("garbage")
    body, checked = _split_checksum(s)
    fields = body.split(",")
    header = fields[0]
    if len(header) < 3 or (len(fields) == 1 and not checked):
        raise _truncated()  # nothing but (part of) a header: cut short
    if not header.isalnum():
        raise Dropped("garbage")
    if header[0] == "P":
        raise Dropped("proprietary")
    parser = _PARSERS.get(header[2:])
    if parser is None:
        raise Dropped("unknown_type")
    try:
        return parser(header[:2], fields[1:], checked), checked
    except (ValueError, OverflowError, IndexError):
        raise _bad() from None


class NmeaParser:
    """Bytes in, fixes out: framing, checksums, parsing and epoch assembly.

    ``rollover_floor``: a received date before it is taken to be a GPS week
    rollover victim and moved forward 1024 weeks, repeatedly (see
    :func:`agent.gps.epoch.correct_rollover`).  ``None`` trusts every date.
    """

    def __init__(self, *, rollover_floor: date | None = None) -> None:
        self.stats = NmeaStats()
        self._framer = _Framer()
        self._epochs = EpochAssembler(rollover_floor=rollover_floor)

    @property
    def cycle_ender(self) -> str | None:
        """The sentence learned to close the receiver's cycle, e.g. ``GPGLL#1``."""
        return self._epochs.cycle_ender

    def feed(self, data: bytes, mono: float) -> list[Fix]:
        """Bytes as received, split anywhere; returns the fixes they complete."""
        self.stats.bytes += len(data)
        return self._handle(self._framer.push(data), mono)

    def feed_line(self, line: str | bytes, mono: float) -> list[Fix]:
        """One complete line (terminator optional), independent of pending feed() bytes."""
        data = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line
        self.stats.bytes += len(data)
        return self._handle(_Framer().push(data + b"\n"), mono)

    def flush(self, mono: float) -> list[Fix]:
        """End of stream: emit the epoch still being assembled."""
        return self._epochs.flush(mono)

    def _handle(self, lines: list[bytes | None], mono: float) -> list[Fix]:
        out: list[Fix] = []
        stats = self.stats
        for raw in lines:
            stats.lines += 1
            if raw is None:
                stats.oversized += 1
                continue
            try:
                rep, checked = parse_line(raw)
            except Dropped as drop:
                setattr(stats, drop.reason, getattr(stats, drop.reason) + 1)
                continue
            stats.sentences += 1
            stats.missing_checksum += not checked
            out.extend(self._epochs.add(rep, mono))
        return out


def iter_file_fixes(path: Path, *, rollover_floor: date | None = None) -> Iterator[Fix]:
    """Replay a capture file.  ``mono`` is the line number, a stand-in for receive time.

    Lines starting with ``#`` are comments (the gpsd regression logs have them).
    """
    parser = NmeaParser(rollover_floor=rollover_floor)
    n = 0
    with path.open("rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.startswith(b"#"):
                yield from parser.feed(line, float(n))
    yield from parser.flush(float(n + 1))
