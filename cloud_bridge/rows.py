"""What the bridge reads back out of its database, as plain typed rows.

The storage layer returns these; the HTTP API, the exports (GeoJSON, GPX),
the scorecard and the webhooks take them.  Nothing here knows SQL, so the
pure parts are tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.messages import utc_iso


@dataclass(frozen=True, slots=True)
class PositionRow:
    device: str
    epoch: str
    seq: int
    ts: datetime  # UTC, aware
    lat: float
    lon: float
    alt: float | None = None
    speed: float | None = None  # m/s
    course: float | None = None
    mode: int = 3
    sats: int | None = None
    hdop: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int  # the bridge's own id: a stable handle and a cursor
    device: str
    epoch: str
    seq: int
    ts: datetime
    type: str
    lat: float | None
    lon: float | None
    data: dict[str, Any] = field(default_factory=dict)
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TripRow:
    """A finished trip, from its ``trip_end`` event (docs/PROTOCOL.md)."""

    id: int
    device: str
    start: datetime
    end: datetime
    distance_m: float
    odometer_km: float | None
    duration_s: float
    driving_s: float | None
    idle_s: float | None
    max_speed_kmh: float | None
    mean_speed_kmh: float | None
    harsh: dict[str, int] = field(default_factory=dict)
    start_lat: float | None = None
    start_lon: float | None = None
    end_lat: float | None = None
    end_lon: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device: str
    first_seen: datetime
    last_seen: datetime  # when the bridge last received anything from it
    state: str | None  # online / offline from the retained status, None before any
    status: dict[str, Any] | None  # the last Status payload
    last_position: PositionRow | None
    config_version: int | None  # the newest desired config the bridge pushed
    config_running: int | None  # the version the device says it runs


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with ``Z`` (the protocol's ``utc_iso``), None passing through."""
    return None if ts is None else utc_iso(ts)


def event_dict(e: EventRow) -> dict[str, Any]:
    """An event as the API and webhooks send it (docs/BRIDGE.md)."""
    return {
        "id": e.id,
        "device": e.device,
        "epoch": e.epoch,
        "seq": e.seq,
        "ts": iso(e.ts),
        "type": e.type,
        "lat": e.lat,
        "lon": e.lon,
        "data": e.data,
        "received_at": iso(e.received_at),
    }
