"""Diagnostic trouble codes: decode mode 03/07/0A replies and report changes.

The backend wants to know when a fault *appears*, *matures* (pending, mode
07, to stored, mode 03) and *clears*, not the full list every minute, so
:class:`DtcTracker` turns successive reads into ``dtc`` events.  It is pure:
the reader passes each read's time and result, ``None`` for a read that
failed, because a failed read says nothing about the codes and must never
clear one.  Descriptions come from python-OBD's table (``obd.codes.DTC``),
which only covers generic P and U codes; others describe as ``""``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal

from agent.messages import EventData, utc_iso
from agent.obd.pids import DecodeError
from agent.trips.stops import event

#: Response service ids of the three DTC requests (03 stored, 07 pending, 0A permanent).
DTC_SIDS = {0x43: 0x03, 0x47: 0x07, 0x4A: 0x0A}
_LETTERS = "PCBU"
_HEX = "0123456789ABCDEF"

DtcState = Literal["stored", "pending"]
#: What a read returned: codes, or codes with the ECU that reported each.
Codes = Iterable[str] | Mapping[str, int | None]


class DtcDecodeError(DecodeError):
    """A reply that is not a DTC answer (wrong service id, empty)."""


def _code(hi: int, lo: int) -> str:
    """One SAE J2012 code from its two bytes: 2 bits letter, 2 bits digit, 3 hex digits."""
    return f"{_LETTERS[hi >> 6]}{(hi >> 4) & 0x3}{_HEX[hi & 0xF]}{lo:02X}"


def decode_dtcs(data: bytes, service: int | None = None) -> list[str]:
    """Codes in one ECU's reply (``43 02 03 01 C0 35`` -> ``["P0301", "C0035"]``).

    ``data`` starts at the response service id and keeps the count byte,
    which is not trusted (python-OBD inserts 0x00 on non-CAN protocols):
    every byte pair after it is a code, ``00 00`` pairs are padding and an
    odd trailing byte is ignored.  ``service`` (0x03, 0x07 or 0x0A) checks
    the reply answers that request; by default any of the three is accepted.
    """
    if not data:
        raise DtcDecodeError("empty reply, expected a DTC answer (43/47/4A)")
    sid = data[0]
    if sid not in DTC_SIDS or (service is not None and DTC_SIDS[sid] != service):
        wanted = "43/47/4A" if service is None else f"{service + 0x40:02X}"
        raise DtcDecodeError(f"reply {data.hex(' ').upper()} is not a DTC answer ({wanted})")
    body = data[2:]
    return [
        _code(body[i], body[i + 1]) for i in range(0, len(body) - 1, 2) if body[i] or body[i + 1]
    ]


def merge_replies(replies: Mapping[int, bytes], service: int | None = None) -> dict[str, int]:
    """Codes from every ECU that answered, sorted, each with the ECU that reported it.

    A code several ECUs report (``U0100`` from both TCM and ABS) keeps the
    lowest ECU address, so the result is the same whatever the reply order.
    """
    out: dict[str, int] = {}
    for ecu in sorted(replies):
        for code in decode_dtcs(replies[ecu], service):
            out.setdefault(code, ecu)
    return dict(sorted(out.items()))


def encode_dtc(code: str) -> bytes:
    """The two bytes of a code (``"C0035"`` -> ``C0 35``), for simulators and tests."""
    c = code.strip().upper()
    if (
        len(c) != 5
        or c[0] not in _LETTERS
        or c[1] not in "0123"
        or any(x not in _HEX for x in c[2:])
    ):
        raise ValueError(f"{code!r} is not a DTC like P0301")
    hi = _LETTERS.index(c[0]) << 6 | int(c[1]) << 4 | int(c[2], 16)
    return bytes((hi, int(c[3:], 16)))


@cache
def _table() -> Mapping[str, str]:
    """python-OBD's description table, imported on first use (it pulls in pyserial)."""
    from obd.codes import DTC

    table: Mapping[str, str] = DTC
    return table


def describe(code: str) -> str:
    """Human description of a generic code, ``""`` when python-OBD has none."""
    return _table().get(code.strip().upper(), "")


def mil_status(data: bytes) -> tuple[bool, int]:
    """(MIL on, number of stored emission DTCs) from a ``41 01 A B C D`` reply."""
    if len(data) < 3 or data[0] != 0x41 or data[1] != 0x01:
        raise DecodeError(f"reply {data.hex(' ').upper()} does not answer 01 01")
    a = data[2]
    return bool(a & 0x80), a & 0x7F


@dataclass(slots=True)
class _Active:
    """A code the backend has been told is active."""

    state: DtcState
    since: datetime
    ecu: int | None


def _as_map(codes: Codes) -> dict[str, int | None]:
    if isinstance(codes, Mapping):
        return {str(c).strip().upper(): e for c, e in codes.items()}
    return {str(c).strip().upper(): None for c in codes}


class DtcTracker:
    """``dtc`` events for codes that appear, change state or clear.

    Rules, per code, after a read of stored (03) and pending (07) codes:

    * in the stored read: state ``stored`` (also when mode 07 lists it too);
    * else in the pending read: ``pending``, unless it was stored and the
      stored read failed (nothing says it stopped being stored);
    * in neither: cleared only when the absence is proven.  A stored code
      needs a good stored read (a confirmed code does not go back to
      pending except after a clear); a pending code needs both reads good,
      since with the stored read missing it may just have matured.

    The first read after start reports every code present.  The runtime
    persists :meth:`known` and passes it to :meth:`seed` after a restart, so
    codes already reported are not announced again (and ones that cleared
    meanwhile are reported cleared).
    """

    def __init__(self) -> None:
        self._active: dict[str, _Active] = {}

    @property
    def active(self) -> dict[str, DtcState]:
        """Codes currently reported active, with their state."""
        return {code: a.state for code, a in sorted(self._active.items())}

    def update(
        self,
        ts: datetime,
        stored: Codes | None,
        pending: Codes | None,
        lat: float | None = None,
        lon: float | None = None,
    ) -> list[EventData]:
        """Compare one read with what was reported; ``None`` is a read that failed."""
        st = None if stored is None else _as_map(stored)
        pe = None if pending is None else _as_map(pending)
        pos = (lat, lon) if lat is not None and lon is not None else None
        events: list[EventData] = []
        seen = set(st or ()) | set(pe or ())
        for code in sorted(seen | set(self._active)):
            old = self._active.get(code)
            new = self._state(code, old, st, pe)
            if new is None:
                if old is not None:
                    events.append(self._cleared(code, old, ts, pos))
                    del self._active[code]
                continue
            ecu = (st or {}).get(code) if new == "stored" else (pe or {}).get(code)
            if old is None:
                self._active[code] = _Active(new, ts, ecu)
                events.append(self._event(code, new, ecu, ts, pos, {}))
            elif old.state != new:
                extra = {"previous_state": old.state, "active_since": utc_iso(old.since)}
                old.state, old.ecu = new, ecu if ecu is not None else old.ecu
                events.append(self._event(code, new, old.ecu, ts, pos, extra))
            elif old.ecu is None:
                old.ecu = ecu
        return events

    @staticmethod
    def _state(
        code: str,
        old: _Active | None,
        st: dict[str, int | None] | None,
        pe: dict[str, int | None] | None,
    ) -> DtcState | None:
        """The code's state after this read; None = not active (cleared or never was)."""
        if st is not None and code in st:
            return "stored"
        if pe is not None and code in pe:
            return (
                "stored" if old is not None and old.state == "stored" and st is None else "pending"
            )
        if old is None:
            return None
        if old.state == "stored":
            return None if st is not None else "stored"
        return None if st is not None and pe is not None else "pending"

    @staticmethod
    def _event(
        code: str,
        state: DtcState,
        ecu: int | None,
        ts: datetime,
        pos: tuple[float, float] | None,
        extra: dict[str, Any],
    ) -> EventData:
        data: dict[str, Any] = {
            "code": code,
            "description": describe(code),
            "state": state,
            "status": "active",
        }
        if ecu is not None:
            data["ecu"] = f"{ecu:X}"
        data.update(extra)
        return event("dtc", ts, pos, data)

    @staticmethod
    def _cleared(
        code: str, old: _Active, ts: datetime, pos: tuple[float, float] | None
    ) -> EventData:
        extra = {
            "status": "cleared",
            "active_since": utc_iso(old.since),
            "duration_s": round(max(0.0, (ts - old.since).total_seconds()), 1),
        }
        return DtcTracker._event(code, old.state, old.ecu, ts, pos, extra)

    def known(self) -> dict[str, Any]:
        """JSON-able snapshot of the reported codes, for the runtime to persist."""
        return {
            "v": 1,
            "codes": {
                code: {"state": a.state, "since": utc_iso(a.since), "ecu": a.ecu}
                for code, a in sorted(self._active.items())
            },
        }

    def seed(self, snapshot: Mapping[str, Any]) -> None:
        """Restore :meth:`known` from before a restart; ValueError if it is not one.

        On error nothing changes: the tracker starts empty and re-announces
        the codes present, which is the safe side.
        """
        restored: dict[str, _Active] = {}
        try:
            if snapshot.get("v") != 1:
                raise ValueError(f"unknown snapshot version {snapshot.get('v')!r}")
            for code, entry in dict(snapshot["codes"]).items():
                encode_dtc(code)  # validates the code
                state = entry["state"]
                if state not in ("stored", "pending"):
                    raise ValueError(f"{code}: state {state!r}")
                since = datetime.fromisoformat(str(entry["since"]))
                if since.utcoffset() is None:
                    raise ValueError(f"{code}: time {entry['since']!r} has no offset")
                ecu = entry.get("ecu")
                if ecu is not None and not isinstance(ecu, int):
                    raise ValueError(f"{code}: ecu {ecu!r}")
                restored[code.upper()] = _Active(state, since, ecu)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a DTC snapshot: {exc!r}") from exc
        self._active = restored
