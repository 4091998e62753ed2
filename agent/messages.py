"""The wire protocol: every payload the agent publishes, defined once.

The agent builds these models and the cloud bridge validates incoming
payloads with the very same classes, so the two can never drift apart.
docs/PROTOCOL.md explains them and ``agent/schema/messages.schema.json`` is
generated from them (``python -m agent.messages > agent/schema/...``); a test
fails when the committed copy is stale.

Shape: uplink topics ``telemetry`` and ``events`` carry a :class:`Batch`,
an envelope (schema version, device, epoch, send time) around one or more
records.  Every record has a sequence number ``seq``: assigned by the
device's outbox, strictly increasing within an ``epoch`` (the lifetime of one
outbox database), never reused.  ``(device, epoch, seq)`` identifies a
record exactly, so a consumer drops re-deliveries without guessing.
The retained ``status`` topic carries a :class:`Status` (presence, not a
record: only the latest matters, so it is not sequenced or buffered).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION: Literal[1] = 1

#: Largest payload the bridge accepts; the agent never builds a bigger batch.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_BATCH_RECORDS = 500

DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
EpochId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Seq = Annotated[int, Field(ge=1, le=2**63 - 1)]
Latitude = Annotated[float, Field(ge=-90.0, le=90.0)]


def _utc(ts: datetime) -> datetime:
    if ts.utcoffset() != timedelta(0):
        raise ValueError("timestamps are UTC (offset Z or +00:00)")
    return ts


UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0)]

Stream = Literal["telemetry", "events"]
STREAMS: tuple[Stream, ...] = ("telemetry", "events")


class _Model(BaseModel):
    """Strict about shape: unknown fields are an error, not silently kept."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PositionData(_Model):
    """One sampled GNSS position, as produced on the device."""

    kind: Literal["position"] = "position"
    ts: UtcTime = Field(description="UTC time of the fix (from the receiver)")
    lat: Latitude
    lon: Longitude
    alt: float | None = Field(None, description="metres above mean sea level")
    speed: Annotated[float, Field(ge=0)] | None = Field(None, description="m/s over ground")
    course: Annotated[float, Field(ge=0, lt=360)] | None = Field(None, description="degrees true")
    mode: Literal[2, 3] = Field(description="2 = 2D fix, 3 = 3D fix")
    sats: Annotated[int, Field(ge=0, le=255)] | None = None
    hdop: Annotated[float, Field(ge=0)] | None = None
    reason: Literal[
        "first", "periodic", "heading", "distance", "speed", "heartbeat", "fix", "requested"
    ] = Field(description="why the sampler emitted this point")


class EventData(_Model):
    """Something that happened on the device, at a time, maybe at a place."""

    kind: Literal["event"] = "event"
    ts: UtcTime = Field(description="UTC time the event happened")
    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    lat: Latitude | None = None
    lon: Longitude | None = None
    data: dict[str, Any] = Field(default_factory=dict)


VssName = Annotated[str, Field(pattern=r"^Vehicle(\.[A-Za-z][A-Za-z0-9]*){1,6}$", max_length=96)]


class ObdData(_Model):
    """A snapshot of vehicle-bus signals (OBD-II), named and unitised as COVESA VSS.

    Sent on ``telemetry`` at ``obd.snapshot_interval_s``; each value is the
    latest reading at ``ts`` (docs/PROTOCOL.md lists names and units).
    """

    kind: Literal["obd"] = "obd"
    ts: UtcTime = Field(description="UTC time of the newest reading in the snapshot")
    signals: Annotated[dict[VssName, float], Field(min_length=1, max_length=64)]


class Position(PositionData):
    """A position record on the wire: the device's data plus its sequence number."""

    seq: Seq


class Event(EventData):
    """An event record on the wire."""

    seq: Seq


class Obd(ObdData):
    """An OBD snapshot record on the wire."""

    seq: Seq


Record = Annotated[Position | Event | Obd, Field(discriminator="kind")]


class Batch(_Model):
    """Envelope of every ``telemetry`` and ``events`` publish."""

    v: Literal[1] = SCHEMA_VERSION
    device: DeviceId
    epoch: EpochId = Field(description="new when the device's outbox database is new")
    sent: UtcTime | None = Field(
        None, description="UTC when published; null while the device has no trusted time"
    )
    records: Annotated[list[Record], Field(min_length=1, max_length=MAX_BATCH_RECORDS)]


class Status(_Model):
    """Retained presence on ``status``: birth when connected, last-will when gone."""

    v: Literal[1] = SCHEMA_VERSION
    device: DeviceId
    state: Literal["online", "offline"]
    epoch: EpochId | None = None
    ts: UtcTime | None = Field(
        None, description="UTC when the status was made (the will's is its connect time)"
    )
    version: str | None = None
    config_hash: str | None = None
    last_seq: Annotated[int, Field(ge=0)] | None = Field(
        None, description="highest seq committed to the outbox when this status was made"
    )
    health: dict[str, Any] = Field(default_factory=dict)


class DesiredConfig(_Model):
    """Retained on ``config`` (cloud -> device): what the device should run.

    Versioned: the device applies a version higher than the one it runs,
    answers on ``cmd/result`` either way, and keeps the previous set when a
    new one is invalid.
    """

    v: Literal[1] = SCHEMA_VERSION
    version: Annotated[int, Field(ge=1, le=2**31 - 1)]
    geofences: Annotated[list[dict[str, Any]], Field(max_length=10_000)] | None = Field(
        None, description="zones (docs/GEOFENCES.md); absent = keep the current set"
    )


CommandId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Command(_Model):
    """Published on ``cmd`` (cloud -> device, QoS 1, not retained): do one thing now.

    The device answers every command it receives on ``cmd/result`` with the
    same ``id``: done, refused (unknown name, bad arguments) or expired.
    """

    v: Literal[1] = SCHEMA_VERSION
    id: CommandId = Field(description="chosen by the cloud; echoed in the result")
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = Field(
        description="what to do (docs/PROTOCOL.md lists the names a device knows)"
    )
    args: dict[str, Any] = Field(default_factory=dict)
    expires: UtcTime | None = Field(
        None, description="a command still queued after this is answered `expired`, not run"
    )


class CommandResult(_Model):
    """Published on ``cmd/result`` (device -> cloud): the outcome of a config or command."""

    v: Literal[1] = SCHEMA_VERSION
    device: DeviceId
    ts: UtcTime | None = None
    kind: Literal["config", "command"]
    id: CommandId | None = Field(None, description="the command's id (kind `command`)")
    name: str | None = Field(None, description="the command's name (kind `command`)")
    version: Annotated[int, Field(ge=-1, le=2**31 - 1)] | None = Field(
        None, description="the config version answered (kind `config`); -1: it had none"
    )
    status: Literal["applied", "unchanged", "rejected", "done", "expired"]
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="what a command returns")
    running_version: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(
        description="the config version the device now runs"
    )


def record_body(record: PositionData | EventData | ObdData) -> str:
    """Compact JSON of a record without its seq, as the outbox stores it."""
    return record.model_dump_json(exclude_none=True)


def with_seq(body: str, seq: int) -> str:
    """Insert ``seq`` into a stored record body without re-parsing it.

    Bodies always come from :func:`record_body`, so they are JSON objects with
    at least ``kind``; the result validates as :data:`Record`.
    """
    return f'{{"seq":{seq},{body[1:]}'


def batch_json(device: str, epoch: str, sent: datetime | None, records: list[str]) -> str:
    """Build a :class:`Batch` payload from stored bodies that already carry seq.

    String assembly keeps the publish path cheap on a Pi; the bridge and a
    round-trip test validate the result against :class:`Batch`.
    """
    sent_json = "null" if sent is None else json.dumps(utc_iso(sent))
    return (
        f'{{"v":{SCHEMA_VERSION},"device":{json.dumps(device)},"epoch":"{epoch}",'
        f'"sent":{sent_json},"records":[{",".join(records)}]}}'
    )


def utc_iso(ts: datetime, timespec: str = "auto") -> str:
    """ISO 8601 UTC with ``Z``: how every time in a payload is written."""
    return ts.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def validation_reason(exc: ValidationError) -> str:
    """The first problem of a pydantic error as one line: ``where: what``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "payload"
    return f"{where}: {str(err['msg']).removeprefix('Value error, ')}"


def topic(prefix: str, device: str, name: str) -> str:
    """``{prefix}/{device}/{name}``: the only place topic names are spelled."""
    return f"{prefix}/{device}/{name}"


def json_schema() -> dict[str, Any]:
    """JSON Schema for every payload, generated from the models above."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Fleet telematics protocol",
        "description": f"Schema version {SCHEMA_VERSION}; see docs/PROTOCOL.md",
        "$defs": {
            "Batch": Batch.model_json_schema(mode="serialization"),
            "Status": Status.model_json_schema(mode="serialization"),
            "DesiredConfig": DesiredConfig.model_json_schema(mode="serialization"),
            "Command": Command.model_json_schema(mode="serialization"),
            "CommandResult": CommandResult.model_json_schema(mode="serialization"),
        },
        "oneOf": [
            {"$ref": "#/$defs/Batch"},
            {"$ref": "#/$defs/Status"},
            {"$ref": "#/$defs/DesiredConfig"},
            {"$ref": "#/$defs/Command"},
            {"$ref": "#/$defs/CommandResult"},
        ],
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover - used to regenerate the committed schema
    sys.stdout.write(json_schema_text())
