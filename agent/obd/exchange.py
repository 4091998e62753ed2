"""One request to the vehicle and what came back: the unit of OBD processing and logs.

The reader (I/O) produces exchanges; the processor (pure) turns them into
values, engine state, DTC and VIN events.  An exchange serialises to one
JSON line, which is the documented OBD log format (docs/PROTOCOL.md,
"OBD log"): the agent can record its live exchanges and ``telematics-agent
replay --obd FILE`` feeds the same lines through the same processor, so a
replay gives exactly the events the live run gave.

    {"ts": "2024-05-14T07:31:02.500Z", "req": "010C", "replies": {"7E8": "410C1AF8"}}
    {"ts": "2024-05-14T07:31:03.000Z", "req": "010D", "error": "no_data"}
    {"ts": "2024-05-14T07:31:05.000Z", "req": "ATRV", "volts": 14.1}
    {"ts": "2024-05-14T07:31:09.000Z", "link": "lost", "error": "disconnected"}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from agent.messages import utc_iso
from agent.obd.link import ErrorKind, Replies

LinkEvent = Literal["up", "lost", "vehicle_off"]
_REQ = re.compile(r"^(?:[0-9A-F]{2}){1,2}$|^ATRV$")
_ERROR_KINDS = frozenset(get_args(ErrorKind))
_LINK_EVENTS = frozenset(get_args(LinkEvent))


@dataclass(frozen=True, slots=True)
class Exchange:
    """A request (``req`` like "010C", "03", "0902", "ATRV") and its outcome, or a link event.

    ``ts`` is UTC (tz-aware); exactly one of ``replies``, ``error`` (an
    :data:`ErrorKind`), ``volts`` is set for a request; ``link`` marks the
    connection coming up or going away (with ``error`` saying why, and
    ``info`` the adapter and protocol when it comes up).
    """

    ts: datetime
    req: str = ""
    replies: Replies | None = None
    error: ErrorKind | None = None
    volts: float | None = None
    link: LinkEvent | None = None
    info: dict[str, str] = field(default_factory=dict)

    @property
    def service(self) -> int | None:
        return int(self.req[:2], 16) if self.req and self.req != "ATRV" else None

    @property
    def pid(self) -> int | None:
        return int(self.req[2:4], 16) if len(self.req) == 4 else None

    def to_json(self) -> str:
        out: dict[str, Any] = {"ts": utc_iso(self.ts, "milliseconds")}
        if self.link is not None:
            out["link"] = self.link
        if self.req:
            out["req"] = self.req
        if self.replies is not None:
            out["replies"] = {_ecu_text(k): v.hex().upper() for k, v in self.replies.items()}
        if self.error is not None:
            out["error"] = self.error
        if self.volts is not None:
            out["volts"] = self.volts
        if self.info:
            out["info"] = self.info
        return json.dumps(out, separators=(",", ":"))


class ExchangeError(ValueError):
    """A log line that is not an exchange; the message says which field and why."""


def _no_constants(name: str) -> Any:
    raise ExchangeError(f"{name} is not a number a reading may hold")


def _ecu_text(ecu: int) -> str:
    return f"{ecu:03X}" if ecu <= 0x7FF else f"{ecu:08X}"


def parse_exchange(line: str) -> Exchange:
    """One JSON line of an OBD log; raises ExchangeError naming what is wrong."""
    try:
        obj = json.loads(line, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ExchangeError(f"not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ExchangeError("not a JSON object")
    unknown = set(obj) - {"ts", "req", "replies", "error", "volts", "link", "info"}
    if unknown:
        raise ExchangeError(f"unknown field {sorted(unknown)[0]!r}")
    try:
        ts = datetime.fromisoformat(str(obj["ts"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise ExchangeError("ts: needs an ISO 8601 UTC time") from None
    if ts.utcoffset() is None or ts.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
        raise ExchangeError("ts: must be UTC (Z)")
    ts = ts.astimezone(UTC)
    req = obj.get("req", "")
    if req and (not isinstance(req, str) or not _REQ.match(req)):
        raise ExchangeError(f"req: {req!r} is not a service request like 010C or ATRV")
    link = obj.get("link")
    if link is not None and link not in _LINK_EVENTS:
        raise ExchangeError(f"link: {link!r} is not one of {sorted(_LINK_EVENTS)}")
    if not req and link is None:
        raise ExchangeError("needs req or link")
    error = obj.get("error")
    if error is not None and error not in _ERROR_KINDS:
        raise ExchangeError(f"error: {error!r} is not a known error kind")
    replies = obj.get("replies")
    parsed: Replies | None = None
    if replies is not None:
        if not isinstance(replies, dict) or not replies:
            raise ExchangeError("replies: needs an object of ECU id -> hex data")
        parsed = {}
        for ecu, data in replies.items():
            try:
                parsed[int(ecu, 16)] = bytes.fromhex(data)
            except (TypeError, ValueError):
                raise ExchangeError(f"replies: {ecu!r}: {data!r} is not hex") from None
    volts = obj.get("volts")
    if volts is not None and (isinstance(volts, bool) or not isinstance(volts, int | float)):
        raise ExchangeError("volts: needs a number")
    if req and sum(x is not None for x in (parsed, error, volts)) != 1:
        raise ExchangeError("a request needs exactly one of replies, error, volts")
    info = obj.get("info", {})
    if not isinstance(info, dict):
        raise ExchangeError("info: needs an object")
    return Exchange(
        ts=ts,
        req=req,
        replies=parsed,
        error=error,
        volts=None if volts is None else float(volts),
        link=link,
        info={str(k): str(v) for k, v in info.items()},
    )


@dataclass
class LogReport:
    """What reading an OBD log found besides exchanges: bad lines, by line number."""

    lines: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


def read_log(path: Path, report: LogReport | None = None) -> Iterator[Exchange]:
    """Exchanges of an OBD log file in order; bad lines are reported, never fatal."""
    report = report if report is not None else LogReport()
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            report.lines += 1
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                yield parse_exchange(text)
            except ExchangeError as exc:
                report.rejected.append((number, str(exc)))
