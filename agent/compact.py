"""Compact batch encoding ``c1``: the same :class:`~agent.messages.Batch`, columnar and deflated.

A position as JSON repeats every key (about 180 bytes); at 1 Hz on paid
cellular data that is the bill.  ``c1`` writes the batch's positions as
columns of integer deltas (successive 1 Hz fixes differ by a few units) and
deflates the lot with zlib, which then finds long runs of near-identical
text: about 13 bytes per position on a real receiver's noise at 30 positions
a batch (bench/bench_uplink.py measures the drive).

It is an *encoding*, not a second schema: :func:`decode` turns a payload
back into the Batch JSON object, which the bridge validates with the one
pydantic model like any other.  Lossless by construction: a position whose
values are not exact at the column scales (1e-7 degree, 0.1 m, 0.01 m/s,
0.1 degree, 0.01 HDOP: what the sampler writes) or that carries any other
field travels whole in ``other``, as do events and OBD snapshots.
docs/PROTOCOL.md ("Compact encoding") specifies the format for other
decoders.
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.messages import Batch, utc_iso

#: MQTT 5 content type of a ``c1`` payload (JSON payloads say application/json).
CONTENT_TYPE = "application/vnd.fleet.batch.c1+zlib"

#: Largest decompressed size a decoder accepts: a deflate bomb stops here.
MAX_DECODED_BYTES = 1024 * 1024

#: Column name -> scale: the stored value is ``round(value * scale)``.
SCALES: dict[str, int] = {
    "lat": 10_000_000,
    "lon": 10_000_000,
    "alt": 10,
    "speed": 100,
    "course": 10,
    "sats": 1,
    "hdop": 100,
}
_REQUIRED = ("seq", "kind", "ts", "lat", "lon", "mode", "reason")
_POSITION_KEYS = frozenset(_REQUIRED) | SCALES.keys()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_UNITS = {1: "seconds", 1000: "milliseconds", 1_000_000: "microseconds"}


class CompactError(ValueError):
    """A payload that claims to be ``c1`` but is not well formed."""


def is_compact(payload: bytes) -> bool:
    """True for a zlib stream (``c1``); a JSON payload starts with ``{`` or whitespace."""
    return len(payload) >= 2 and payload[0] == 0x78 and (payload[0] * 256 + payload[1]) % 31 == 0


# -- encoding ----------------------------------------------------------------


def encode(device: str, epoch: str, sent: datetime | None, records: list[tuple[int, str]]) -> bytes:
    """``c1`` payload for ``(seq, stored body)`` rows, as :func:`agent.messages.batch_json` takes."""
    positions: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for seq, body in records:
        rec = json.loads(body)
        rec["seq"] = seq
        (positions if _columnar(rec) else other).append(rec)
    obj: dict[str, Any] = {
        "c": 1,
        "device": device,
        "epoch": epoch,
        "sent": None if sent is None else utc_iso(sent),
    }
    if positions:
        obj["pos"] = _columns(positions)
    if other:
        obj["other"] = other
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return zlib.compress(text.encode(), 9)


def _columnar(rec: dict[str, Any]) -> bool:
    """A position every value of which survives the column scales exactly."""
    if rec.get("kind") != "position" or not rec.keys() <= _POSITION_KEYS:
        return False
    if any(k not in rec for k in _REQUIRED) or not isinstance(rec["reason"], str):
        return False
    if type(rec["mode"]) is not int or _micros(rec["ts"]) is None:
        return False
    for name, scale in SCALES.items():
        value = rec.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if round(value * scale) / scale != value:
            return False
    return True


def _micros(ts: Any) -> int | None:
    """Exact integer microseconds since 1970 of a UTC ISO time, or None."""
    if not isinstance(ts, str):
        return None
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if dt.utcoffset() != timedelta(0):
        return None
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _deltas(values: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    prev = 0
    for v in values:
        if v is None:
            out.append(None)
        else:
            out.append(v - prev)
            prev = v
    return out


def _columns(positions: list[dict[str, Any]]) -> dict[str, Any]:
    micros = [_micros(p["ts"]) or 0 for p in positions]
    unit = next(u for u in (1, 1000, 1_000_000) if all(m * u % 1_000_000 == 0 for m in micros))
    reasons: list[str] = []
    for p in positions:
        if p["reason"] not in reasons:
            reasons.append(p["reason"])
    cols: dict[str, Any] = {
        "n": len(positions),
        "tu": unit,
        "seq": _deltas([p["seq"] for p in positions]),
        "ts": _deltas([m * unit // 1_000_000 for m in micros]),
        "mode": [p["mode"] for p in positions],
        "reasons": reasons,
        "reason": [reasons.index(p["reason"]) for p in positions],
    }
    for name, scale in SCALES.items():
        raw = [p.get(name) for p in positions]
        if all(v is None for v in raw):
            continue  # an absent column: every position lacks the field
        cols[name] = _deltas([None if v is None else round(v * scale) for v in raw])
    return cols


# -- decoding ----------------------------------------------------------------


def decode(payload: bytes) -> dict[str, Any]:
    """The Batch JSON object a ``c1`` payload carries; :class:`CompactError` if malformed.

    The result is not validated here: the caller validates it with
    :class:`agent.messages.Batch`, exactly as it would a JSON payload.
    """
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(payload, MAX_DECODED_BYTES)
        if inflater.unconsumed_tail:
            raise CompactError(f"c1: decompresses to more than {MAX_DECODED_BYTES} bytes")
        if not inflater.eof:
            raise CompactError("c1: truncated zlib stream")
        obj = json.loads(text)
    except zlib.error as exc:
        raise CompactError(f"c1: not a zlib stream ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompactError(f"c1: not JSON inside ({exc})") from None
    if not isinstance(obj, dict) or obj.get("c") != 1:
        raise CompactError("c1: missing or unknown format marker 'c' (expected 1)")
    unknown = obj.keys() - {"c", "device", "epoch", "sent", "pos", "other"}
    if unknown:
        raise CompactError(f"c1: unknown keys {sorted(unknown)}")
    other = obj.get("other", [])
    if not isinstance(other, list):
        raise CompactError("c1: 'other' must be a list of records")
    records: list[Any] = list(other)
    if "pos" in obj:
        records += _rows(obj["pos"])
    records.sort(key=lambda r: r.get("seq", 0) if isinstance(r, dict) else 0)
    return {
        "v": 1,
        "device": obj.get("device"),
        "epoch": obj.get("epoch"),
        "sent": obj.get("sent"),
        "records": records,
    }


def _column(cols: dict[str, Any], name: str, n: int, nullable: bool) -> list[int | None]:
    values = cols.get(name)
    if values is None and nullable:
        return [None] * n
    if not isinstance(values, list) or len(values) != n:
        raise CompactError(f"c1: pos.{name} must be a list of {n} values")
    for v in values:
        if (v is None and not nullable) or (v is not None and type(v) is not int):
            raise CompactError(f"c1: pos.{name} holds {v!r}, expected an integer")
    return values


def _undelta(deltas: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    acc = 0
    for d in deltas:
        if d is None:
            out.append(None)
        else:
            acc += d
            out.append(acc)
    return out


def _rows(cols: Any) -> list[dict[str, Any]]:
    if not isinstance(cols, dict):
        raise CompactError("c1: 'pos' must be an object of columns")
    known = {"n", "tu", "seq", "ts", "mode", "reasons", "reason"} | SCALES.keys()
    if cols.keys() - known:
        raise CompactError(f"c1: unknown pos columns {sorted(cols.keys() - known)}")
    n = cols.get("n")
    if type(n) is not int or not 1 <= n <= 10_000:
        raise CompactError("c1: pos.n must be a count from 1 to 10000")
    unit = cols.get("tu")
    if unit not in _TIME_UNITS:
        raise CompactError(f"c1: pos.tu must be one of {sorted(_TIME_UNITS)}")
    reasons = cols.get("reasons")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise CompactError("c1: pos.reasons must be a list of strings")
    seq = _undelta(_column(cols, "seq", n, False))
    ts = _undelta(_column(cols, "ts", n, False))
    mode = _column(cols, "mode", n, False)
    reason = _column(cols, "reason", n, False)
    scaled = {k: _undelta(_column(cols, k, n, True)) for k in SCALES}
    rows: list[dict[str, Any]] = []
    for i in range(n):
        r = reason[i]
        if r is None or not 0 <= r < len(reasons):
            raise CompactError(f"c1: pos.reason[{i}] = {r} is not an index into pos.reasons")
        try:
            when = _EPOCH + timedelta(**{_TIME_UNITS[unit]: ts[i] or 0})
        except OverflowError:
            raise CompactError(f"c1: pos.ts[{i}] is out of range") from None
        row: dict[str, Any] = {"seq": seq[i], "kind": "position", "ts": utc_iso(when)}
        for name, scale in SCALES.items():
            v = scaled[name][i]
            if v is not None:
                row[name] = v if scale == 1 else v / scale
        row["mode"] = mode[i]
        row["reason"] = reasons[r]
        rows.append(row)
    return rows


def parse_batch(payload: bytes) -> Batch:
    """A :class:`Batch` from a payload in either encoding, validated.

    What a consumer reading ``telemetry``/``events`` straight off the broker
    calls.  Raises :class:`CompactError` or pydantic's ``ValidationError``.
    """
    if is_compact(payload):
        return Batch.model_validate(decode(payload))
    return Batch.model_validate_json(payload)
