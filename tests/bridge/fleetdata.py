"""Payloads as devices send them, for the bridge's tests (built with the shared schema)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.messages import Batch, utc_iso

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
EPOCH = "0123456789abcdef0123456789abcdef"


iso = utc_iso


def position(
    seq: int, t: float, lat: float = 53.55, lon: float = 10.0, **kw: Any
) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "position",
        "ts": iso(T0 + timedelta(seconds=t)),
        "lat": lat,
        "lon": lon,
        "mode": 3,
        "reason": "periodic",
        **kw,
    }


def event(
    seq: int, t: float, type: str, data: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "event",
        "ts": iso(T0 + timedelta(seconds=t)),
        "type": type,
        "data": data or {},
        **kw,
    }


def batch(device: str, records: list[dict[str, Any]], epoch: str = EPOCH) -> Batch:
    return Batch.model_validate({"v": 1, "device": device, "epoch": epoch, "records": records})


def drive(
    device: str, n: int = 100, lat0: float = 53.55, lon0: float = 10.0
) -> list[dict[str, Any]]:
    """``n`` positions 1 s apart heading north-east at ~10 m/s."""
    return [
        position(
            i, i - 1, lat0 + i * 6e-5, lon0 + i * 9e-5, speed=10.0, course=45.0, sats=9, hdop=0.8
        )
        for i in range(1, n + 1)
    ]


def trip_end(
    seq: int, t_start: float, t_end: float, distance_m: float, **data: Any
) -> dict[str, Any]:
    body = {
        "reason": "stopped",
        "start": iso(T0 + timedelta(seconds=t_start)),
        "distance_m": distance_m,
        "duration_s": t_end - t_start,
        "driving_s": t_end - t_start,
        "max_speed_kmh": 50.0,
        "mean_speed_kmh": 36.0,
        "harsh": {"harsh_braking": 1},
        **data,
    }
    return event(seq, t_end, "trip_end", body)
