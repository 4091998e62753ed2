"""OBD readings from CAN traffic we did not ask for: another tester's, or a candump log.

A vehicle bus carries far more than OBD: UDS and KWP diagnostics on the
same 0x7xx ids, J1939 and NMEA 2000 on 29-bit ids, the cars' own frames.
:class:`PassiveObd` yields a reading only for a frame that can be nothing
but a service 01 answer: a Single Frame on an OBD reply id (0x7E8-0x7EF,
0x18DAF1xx) whose service byte is 0x41, whose PID we decode and whose
length fits that PID.  Everything else is counted by the reason it was
dropped, so a replay shows that it read the file and why it found nothing.
(UDS and KWP 2000 enhanced diagnostics define no service 0x01, so their
positive responses, 0x62, 0x61 ..., never start with 0x41.)

``replay_candump`` reads ``candump -l`` / ``-L`` logs::

    (1608041699.326500) can1 7BB#10266201007E5007 R
    (1410714882.622188) can0 09F80102#36729A16021AB80D

with a small parser of our own: python-can's ``CanutilsLogReader`` raises
on the first comment line (``# Name: ...`` in the gpsd NMEA 2000 logs) and
its exception ends the iteration with no line number, while a replay must
report a bad line and carry on.  It builds ``can.Message`` all the same,
so frames read from a live bus and from a log go through one ``PassiveObd``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import can

from agent.obd.can_link import is_reply_id
from agent.obd.pids import SIGNALS

__all__ = [
    "CandumpError",
    "CandumpReport",
    "PassiveObd",
    "Reading",
    "iter_candump",
    "parse_candump_line",
    "replay_candump",
]

# (timestamp) interface id#data [flag]; id##Fdata for CAN FD; id#R[len] for remote frames.
_LINE = re.compile(
    r"^\((?P<ts>\d+(?:\.\d+)?)\)\s+(?P<iface>\S+)\s+(?P<id>[0-9A-Fa-f]{1,8})"
    r"#(?P<body>#?[0-9A-Fa-f]*|[Rr]\d?)(?:\s+(?P<dir>[RT]))?$"
)
_CAN_ERR_FLAG = 0x20000000
_MAX_ERRORS = 1000  # a file that is not a candump at all should not fill the memory


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded service 01 value seen on the bus."""

    timestamp: float  # as logged (Unix seconds for candump)
    name: str  # VSS path from pids.SIGNALS
    value: float
    unit: str
    pid: int
    reply_id: int  # the ECU's CAN id


class PassiveObd:
    """Decodes service 01 answers from frames fed to it; ignores and counts everything else."""

    def __init__(self) -> None:
        self.frames = 0
        self.ignored: Counter[str] = Counter()

    def feed(self, msg: can.Message) -> Reading | None:
        """The reading ``msg`` carries, or None (and the reason counted)."""
        self.frames += 1
        reason, reading = self._judge(msg)
        if reading is None:
            self.ignored[reason] += 1
        return reading

    def _judge(self, msg: can.Message) -> tuple[str, Reading | None]:
        if msg.is_error_frame or msg.is_remote_frame:
            return "not_data_frame", None
        if not is_reply_id(msg.arbitration_id, msg.is_extended_id):
            return "not_obd_id", None
        data = bytes(msg.data)
        if not data or data[0] >> 4 != 0:
            return "not_single_frame", None
        length = data[0] & 0x0F
        if length < 2 or length > len(data) - 1:
            return "short", None
        if data[1] != 0x41:
            return "other_service", None  # UDS 0x62, KWP 0x61, mode 09 0x49, NRC 0x7F ...
        signal = SIGNALS.get(data[2])
        if signal is None:
            return "unknown_pid", None
        if length - 2 < signal.size:
            return "short", None
        value = signal.decode(data[3 : 3 + signal.size])
        return "", Reading(
            timestamp=float(msg.timestamp),
            name=signal.name,
            value=value,
            unit=signal.unit,
            pid=signal.pid,
            reply_id=msg.arbitration_id,
        )


# --------------------------------------------------------------------------- candump files


class CandumpError(ValueError):
    """A line that is not a candump frame."""


def parse_candump_line(line: str) -> can.Message | None:
    """One candump log line as a frame; None for blank and ``#`` comment lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    m = _LINE.match(text)
    if m is None:
        raise CandumpError(f"not a candump frame: {text[:60]!r}")
    id_text, body = m["id"], m["body"]
    can_id = int(id_text, 16)
    extended = len(id_text) > 3
    if not extended and can_id > 0x7FF:
        raise CandumpError(f"standard id {id_text} above 7FF")
    ts, channel, is_rx = float(m["ts"]), m["iface"], m["dir"] != "T"
    if extended and can_id & _CAN_ERR_FLAG:
        return can.Message(
            timestamp=ts,
            channel=channel,
            is_rx=is_rx,
            is_error_frame=True,
            arbitration_id=can_id & 0x1FFFFFFF,
        )
    if can_id > 0x1FFFFFFF:
        raise CandumpError(f"id {id_text} is wider than 29 bits")
    if body[:1] in ("R", "r"):
        return can.Message(
            timestamp=ts,
            channel=channel,
            is_rx=is_rx,
            arbitration_id=can_id,
            is_extended_id=extended,
            is_remote_frame=True,
            dlc=int(body[1:] or 0),
        )
    fd = body.startswith("#")
    if fd:
        if len(body) < 2:
            raise CandumpError("CAN FD frame without its flags digit")
        body = body[2:]
    if len(body) % 2:
        raise CandumpError(f"odd number of hex digits in {body!r}")
    data = bytes.fromhex(body)
    if len(data) > (64 if fd else 8):
        raise CandumpError(f"{len(data)} data bytes in a {'CAN FD' if fd else 'CAN'} frame")
    return can.Message(
        timestamp=ts,
        channel=channel,
        is_rx=is_rx,
        arbitration_id=can_id,
        is_extended_id=extended,
        is_fd=fd,
        data=data,
    )


@dataclass
class CandumpReport:
    """What a replay read and found."""

    path: Path
    lines: int = 0
    frames: int = 0
    readings: list[Reading] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    more_errors: int = 0  # beyond the ones kept in ``errors``

    def summary(self) -> str:
        """One line for the replay command's output."""
        ignored = ", ".join(f"{k} {v}" for k, v in sorted(self.ignored.items())) or "none"
        bad = len(self.errors) + self.more_errors
        return (
            f"{self.path.name}: {self.lines} lines, {self.frames} frames, "
            f"{len(self.readings)} OBD readings; ignored: {ignored}; {bad} bad lines"
        )


def iter_candump(path: Path, report: CandumpReport) -> Iterator[can.Message]:
    """Frames of a candump log in file order; bad lines go to ``report.errors``, never raise."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            report.lines += 1
            try:
                msg = parse_candump_line(line)
            except (CandumpError, ValueError) as exc:
                if len(report.errors) < _MAX_ERRORS:
                    report.errors.append((number, str(exc)))
                else:
                    report.more_errors += 1
                continue
            if msg is not None:
                report.frames += 1
                yield msg


def replay_candump(path: Path | str, passive: PassiveObd | None = None) -> CandumpReport:
    """Read a candump log through :class:`PassiveObd`; the report has readings and counts."""
    report = CandumpReport(Path(path))
    decoder = passive if passive is not None else PassiveObd()
    report.readings = list(_readings(decoder, iter_candump(report.path, report)))
    report.ignored = Counter(decoder.ignored)
    return report


def _readings(decoder: PassiveObd, frames: Iterable[can.Message]) -> Iterator[Reading]:
    for msg in frames:
        reading = decoder.feed(msg)
        if reading is not None:
            yield reading
