"""The bridge's HTTP API for fleet backends, its live view and its /metrics.

FastAPI, so the OpenAPI spec (``/openapi.json``, committed as
docs/openapi.json) is generated from the same models that serialise the
answers.  Every ``/api`` route needs ``Authorization: Bearer <token>``
(``telematics-bridge token create``); ``/healthz``, ``/metrics``, the page
and its static files do not (they hold no fleet data).

Times in and out are ISO 8601 UTC (``Z``); a time without a zone is refused
rather than guessed.  Ranges are half-open: ``from <= ts < to``.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field, ValidationError

from agent.geofence.model import ZoneSet
from agent.messages import Command, DesiredConfig, validation_reason
from cloud_bridge.export import positions_geojson, positions_gpx
from cloud_bridge.rows import DeviceRow, EventRow, PositionRow, TripRow, event_dict, iso
from cloud_bridge.scorecard import scorecard
from cloud_bridge.storage import BridgeStore, StorageError
from cloud_bridge.webhooks import WebhookQueue

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
KMH_PER_MPS = 3.6


class Downlink(Protocol):
    """Publishes to a device: ``config`` (retained) or ``cmd`` (with a time to live)."""

    def __call__(
        self, device: str, name: str, payload: str, retain: bool, expiry_s: float | None = None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ApiSettings:
    tile_url: str | None = None  # None: the page draws no tiles (offline maps)
    attribution: str = ""
    refresh_s: float = 2.0
    max_points: int = 100_000  # per positions request


# -- response models (the OpenAPI spec is generated from these) ---------------------


class PositionOut(BaseModel):
    epoch: str
    seq: int
    ts: str
    lat: float
    lon: float
    alt: float | None = None
    speed_kmh: float | None = None
    course: float | None = None
    mode: int | None = None
    sats: int | None = None
    hdop: float | None = None
    reason: str | None = None


class LastPosition(BaseModel):
    ts: str
    lat: float
    lon: float
    speed_kmh: float | None
    course: float | None


class DeviceOut(BaseModel):
    device: str
    first_seen: str
    last_seen: str = Field(description="when the bridge last received anything from it")
    state: Literal["online", "offline"] | None
    online: bool
    last_position: LastPosition | None
    config_version: int | None = Field(description="newest desired config pushed")
    config_running: int | None = Field(description="config version the device reports running")
    status: dict[str, Any] | None = Field(None, description="the last Status (health) payload")


class EventOut(BaseModel):
    id: int
    device: str
    epoch: str
    seq: int
    ts: str
    type: str
    lat: float | None
    lon: float | None
    data: dict[str, Any]
    received_at: str | None


class TripOut(BaseModel):
    id: int
    device: str
    start: str
    end: str
    distance_m: float
    odometer_km: float | None
    duration_s: float
    driving_s: float | None
    idle_s: float | None
    max_speed_kmh: float | None
    mean_speed_kmh: float | None
    harsh: dict[str, int]
    start_lat: float | None
    start_lon: float | None
    end_lat: float | None
    end_lon: float | None


class DevicesOut(BaseModel):
    devices: list[DeviceOut]


class PositionsOut(BaseModel):
    device: str
    count: int
    truncated: bool = Field(description="more positions than `limit` in the range")
    positions: list[PositionOut]


class EventsOut(BaseModel):
    events: list[EventOut]


class TripsOut(BaseModel):
    trips: list[TripOut]


class ReplayPoint(BaseModel):
    ts: str
    lat: float
    lon: float
    speed_kmh: float | None


class ReplayOut(BaseModel):
    trip: TripOut
    positions: list[ReplayPoint]
    events: list[EventOut]


class ConfigIn(BaseModel):
    geofences: list[dict[str, Any]] | None = Field(
        None, description="zones as in docs/GEOFENCES.md; absent keeps the device's current set"
    )


class ConfigOut(BaseModel):
    device: str
    version: int
    config: dict[str, Any]
    created_at: str
    status: str = Field(description="pending until the device answers: applied/unchanged/rejected")
    reason: str | None
    result_at: str | None


class CommandIn(BaseModel):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = Field(
        description="e.g. request_position (docs/PROTOCOL.md)"
    )
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_s: Annotated[float, Field(gt=0, le=7 * 86400)] = Field(
        300.0, description="the device answers `expired` instead of running it after this"
    )


class CommandOut(BaseModel):
    id: str
    device: str
    name: str
    args: dict[str, Any]
    created_at: str
    expires_at: str | None
    status: str = Field(description="sent, then the device's answer: done/rejected/expired")
    result: dict[str, Any] | None
    result_at: str | None


class WebhookIn(BaseModel):
    url: str = Field(description="http(s) URL that receives a POST per event")
    event_types: list[str] = Field(
        description="event types, e.g. geofence_enter, impact, dtc; `*` for all", min_length=1
    )
    secret: str | None = Field(None, description="HMAC key; generated when absent")


class WebhookCreated(BaseModel):
    id: int
    secret: str = Field(description="shown once: verify X-Telematics-Signature with it")


class UiConfig(BaseModel):
    tile_url: str | None
    attribution: str
    refresh_s: float


# -- conversions ---------------------------------------------------------------------


def _kmh(mps: float | None) -> float | None:
    return None if mps is None else round(mps * KMH_PER_MPS, 1)


def position_out(p: PositionRow) -> PositionOut:
    return PositionOut(
        epoch=p.epoch,
        seq=p.seq,
        ts=iso(p.ts) or "",
        lat=p.lat,
        lon=p.lon,
        alt=p.alt,
        speed_kmh=_kmh(p.speed),
        course=p.course,
        mode=p.mode,
        sats=p.sats,
        hdop=p.hdop,
        reason=p.reason,
    )


def device_out(d: DeviceRow) -> DeviceOut:
    last = d.last_position
    return DeviceOut(
        device=d.device,
        first_seen=iso(d.first_seen) or "",
        last_seen=iso(d.last_seen) or "",
        state=d.state if d.state in ("online", "offline") else None,
        online=d.state == "online",
        last_position=None
        if last is None
        else LastPosition(
            ts=iso(last.ts) or "",
            lat=last.lat,
            lon=last.lon,
            speed_kmh=_kmh(last.speed),
            course=last.course,
        ),
        config_version=d.config_version,
        config_running=d.config_running,
        status=d.status,
    )


def event_out(e: EventRow) -> EventOut:
    return EventOut.model_validate(event_dict(e))


def trip_out(t: TripRow) -> TripOut:
    return TripOut(
        id=t.id,
        device=t.device,
        start=iso(t.start) or "",
        end=iso(t.end) or "",
        distance_m=t.distance_m,
        odometer_km=t.odometer_km,
        duration_s=t.duration_s,
        driving_s=t.driving_s,
        idle_s=t.idle_s,
        max_speed_kmh=t.max_speed_kmh,
        mean_speed_kmh=t.mean_speed_kmh,
        harsh=t.harsh,
        start_lat=t.start_lat,
        start_lon=t.start_lon,
        end_lat=t.end_lat,
        end_lon=t.end_lon,
    )


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise HTTPException(422, f"{name}: give a time zone (e.g. 2026-11-23T08:00:00Z)")
    return value.astimezone(UTC)


def _dated(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: (iso(v) if k in keys else v) for k, v in row.items()}


# -- metrics -------------------------------------------------------------------------


class _Metrics(Collector):
    """Read at scrape time: this process's ingest counts and the database's totals."""

    def __init__(
        self, store: BridgeStore, ingest: Counter[str] | None, queue: WebhookQueue
    ) -> None:
        self.store, self.ingest, self.queue = store, ingest, queue

    def collect(self) -> Iterator[Metric]:
        if self.ingest is not None:
            counts = dict(self.ingest)
            c = CounterMetricFamily(
                "bridge_messages", "MQTT payloads handled by this worker", labels=["outcome"]
            )
            for key in ("batches", "status", "results", "results_unmatched"):
                c.add_metric([key], counts.get(key, 0))
            yield c
            r = CounterMetricFamily(
                "bridge_records", "records handled by this worker", labels=["outcome"]
            )
            r.add_metric(["stored"], counts.get("stored", 0))
            r.add_metric(["duplicate"], counts.get("duplicates", 0))
            yield r
            rej = CounterMetricFamily(
                "bridge_rejected_worker", "payloads this worker rejected", labels=["reason"]
            )
            for key, n in sorted(counts.items()):
                if key.startswith("rejected."):
                    rej.add_metric([key.removeprefix("rejected.")], n)
            yield rej
        try:
            rejects = self.store.reject_counts()
            totals = self.store.totals()
            hooks = self.queue.stats(datetime.now(UTC))
        except StorageError as exc:
            log.warning("metrics: database unavailable: %s", exc)
            up = GaugeMetricFamily("bridge_database_up", "the database answered the scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("bridge_database_up", "the database answered the scrape")
        up.add_metric([], 1)
        yield up
        rj = CounterMetricFamily(
            "bridge_rejected", "payloads rejected by all workers (stored)", labels=["reason"]
        )
        for reason, n in rejects.items():
            rj.add_metric([reason], n)
        yield rj
        rows = GaugeMetricFamily("bridge_rows", "rows held per table", labels=["table"])
        for table, n in totals.items():
            rows.add_metric([table], n)
        yield rows
        wh = GaugeMetricFamily("bridge_webhook_deliveries", "webhook queue", labels=["state"])
        for state in ("pending", "delivered", "failed"):
            wh.add_metric([state], float(hooks.get(state, 0) or 0))
        yield wh
        age = GaugeMetricFamily(
            "bridge_webhook_oldest_pending_seconds", "age of the oldest undelivered webhook"
        )
        age.add_metric([], float(hooks.get("oldest_pending_age_s") or 0.0))
        yield age


# -- the app -------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)


def _auth(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The token's name; 401 for a missing, unknown or revoked token."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing API token", {"WWW-Authenticate": "Bearer"})
    store: BridgeStore = request.app.state.store
    name = store.token_name(creds.credentials)
    if name is None:
        raise HTTPException(401, "unknown or revoked API token", {"WWW-Authenticate": "Bearer"})
    return name


Auth = Annotated[str, Depends(_auth)]
From = Annotated[datetime | None, Query(alias="from", description="inclusive, UTC")]
To = Annotated[datetime | None, Query(alias="to", description="exclusive, UTC")]
Types = Annotated[list[str] | None, Query(description="event types; repeat or comma-separate")]
Limit = Annotated[int, Query(ge=1, le=100_000)]


def create_app(
    store: BridgeStore,
    downlink: Downlink,
    settings: ApiSettings | None = None,
    ingest_counts: Counter[str] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    """The API over ``store``; ``downlink`` publishes config and commands to devices."""
    cfg = settings or ApiSettings()
    queue = WebhookQueue(store.db)
    app = FastAPI(
        title="Fleet telematics bridge",
        version="1",
        description=(
            "Devices, positions (JSON, GeoJSON, GPX), events, trips, scorecards, "
            "remote config and commands, webhooks. See docs/BRIDGE.md."
        ),
    )
    app.state.store = store
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Metrics(store, ingest_counts, queue))

    def known(device: str) -> DeviceRow:
        rows = store.devices(device)
        if not rows:
            raise HTTPException(404, f"no device {device!r}")
        return rows[0]

    @app.exception_handler(StorageError)
    def _storage_down(_r: Request, exc: StorageError) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"ok": True, "database": store.dialect}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/ui/config.json", include_in_schema=False)
    def ui_config() -> UiConfig:
        return UiConfig(tile_url=cfg.tile_url, attribution=cfg.attribution, refresh_s=cfg.refresh_s)

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/v1/devices", tags=["devices"])
    def devices(_: Auth) -> DevicesOut:
        return DevicesOut(devices=[device_out(d) for d in store.devices()])

    @app.get("/api/v1/devices/{device}", tags=["devices"])
    def device(device: str, _: Auth) -> DeviceOut:
        return device_out(known(device))

    @app.get(
        "/api/v1/devices/{device}/positions",
        tags=["positions"],
        responses={
            200: {
                "content": {
                    "application/geo+json": {},
                    "application/gpx+xml": {},
                },
                "description": "JSON (default), GeoJSON or GPX 1.1 by `format`",
            }
        },
    )
    def positions(
        device: str,
        _: Auth,
        start: From = None,
        end: To = None,
        format: Literal["json", "geojson", "gpx"] = "json",
        events: Annotated[bool, Query(description="GeoJSON/GPX: add events as points")] = False,
        limit: Annotated[int, Query(ge=1, le=1_000_000)] = 100_000,
    ) -> Any:
        known(device)
        t0, t1 = _utc(start, "from"), _utc(end, "to")
        limit = min(limit, cfg.max_points)
        rows = store.positions(device, t0, t1, limit=limit + 1)
        truncated = len(rows) > limit
        rows = rows[:limit]
        evs = store.events(device, start=t0, end=t1, limit=10_000) if events else []
        if format == "geojson":
            return JSONResponse(
                positions_geojson(device, rows, evs), media_type="application/geo+json"
            )
        if format == "gpx":
            return Response(
                positions_gpx(device, rows, evs),
                media_type="application/gpx+xml",
                headers={"Content-Disposition": f'attachment; filename="{device}.gpx"'},
            )
        return PositionsOut(
            device=device,
            count=len(rows),
            truncated=truncated,
            positions=[position_out(p) for p in rows],
        )

    @app.get("/api/v1/devices/{device}/events", tags=["events"])
    def device_events(
        device: str,
        _: Auth,
        type: Types = None,
        start: From = None,
        end: To = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> EventsOut:
        known(device)
        return _events(device, type, start, end, None, limit)

    @app.get("/api/v1/events", tags=["events"])
    def all_events(
        _: Auth,
        device: str | None = None,
        type: Types = None,
        start: From = None,
        end: To = None,
        received_after: Annotated[
            datetime | None,
            Query(description="live feed: events that arrived after this (bridge time)"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 200,
    ) -> EventsOut:
        return _events(device, type, start, end, received_after, limit)

    def _events(
        device: str | None,
        types: list[str] | None,
        start: datetime | None,
        end: datetime | None,
        received_after: datetime | None,
        limit: int,
    ) -> EventsOut:
        wanted = [t for item in types or [] for t in item.split(",") if t] or None
        t0, t1 = _utc(start, "from"), _utc(end, "to")
        after = _utc(received_after, "received_after")
        latest = start is None and end is None and received_after is None and device is None
        rows = store.events(device, wanted, t0, t1, after, limit, newest=latest)
        return EventsOut(events=[event_out(e) for e in rows])

    @app.get("/api/v1/devices/{device}/trips", tags=["trips"])
    def trips(device: str, _: Auth, start: From = None, end: To = None) -> TripsOut:
        known(device)
        rows = store.trips(device, _utc(start, "from"), _utc(end, "to"))
        return TripsOut(trips=[trip_out(t) for t in rows])

    def _trip(trip_id: int) -> TripRow:
        trip = store.trip(trip_id)
        if trip is None:
            raise HTTPException(404, f"no trip {trip_id}")
        return trip

    @app.get("/api/v1/trips/{trip_id}", tags=["trips"])
    def trip(trip_id: int, _: Auth) -> TripOut:
        return trip_out(_trip(trip_id))

    @app.get("/api/v1/trips/{trip_id}/replay", tags=["trips"])
    def replay(trip_id: int, _: Auth) -> ReplayOut:
        """The trip's track and every event during it (harsh, idle, geofence...)."""
        t = _trip(trip_id)
        window = (t.start - timedelta(seconds=1), t.end + timedelta(seconds=1))
        points = store.positions(t.device, *window, limit=cfg.max_points)
        evs = store.events(t.device, None, *window, limit=10_000)
        return ReplayOut(
            trip=trip_out(t),
            positions=[
                ReplayPoint(ts=iso(p.ts) or "", lat=p.lat, lon=p.lon, speed_kmh=_kmh(p.speed))
                for p in points
            ],
            events=[event_out(e) for e in evs],
        )

    @app.get("/api/v1/devices/{device}/scorecard", tags=["scorecard"])
    def device_scorecard(
        device: str, _: Auth, start: From = None, end: To = None
    ) -> dict[str, Any]:
        """Harsh events per 100 km, idle minutes per active day, overspeed time (see BRIDGE.md)."""
        known(device)
        t1 = _utc(end, "to") or now()
        t0 = _utc(start, "from") or t1 - timedelta(days=7)
        if t0 >= t1:
            raise HTTPException(422, "from must be before to")
        # A trip counts in the period its end falls in: fetch those that started
        # up to a day earlier and let the scorecard choose.
        trips = store.trips(device, t0 - timedelta(days=1), t1)
        events = store.events(device, None, t0, t1, None, 10**6)
        card = scorecard(device, t0, t1, trips, events)
        return card.as_dict()

    @app.put("/api/v1/devices/{device}/config", tags=["remote"], status_code=202)
    def put_config(device: str, body: ConfigIn, _: Auth) -> ConfigOut:
        """Push a desired config (geofences): validated here as the device will, then retained."""
        known(device)
        if body.geofences is not None:
            try:
                ZoneSet.model_validate({"version": 1, "zones": body.geofences})
            except ValidationError as exc:
                raise HTTPException(422, f"geofences: {validation_reason(exc)}") from None
        version = store.add_config(device, body.model_dump(exclude_none=True), now())
        desired = DesiredConfig(version=version, geofences=body.geofences)
        downlink(device, "config", desired.model_dump_json(exclude_none=True), True)
        row = store.config(device, version)
        assert row is not None
        return ConfigOut.model_validate(_dated(row, "created_at", "result_at"))

    @app.get("/api/v1/devices/{device}/config", tags=["remote"])
    def get_config(device: str, _: Auth) -> ConfigOut:
        known(device)
        row = store.config(device)
        if row is None:
            raise HTTPException(404, f"no config pushed to {device!r}")
        return ConfigOut.model_validate(_dated(row, "created_at", "result_at"))

    @app.post("/api/v1/devices/{device}/commands", tags=["remote"], status_code=202)
    def send_command(device: str, body: CommandIn, _: Auth) -> CommandOut:
        """Send a command now (QoS 1, not retained); poll GET /api/v1/commands/{id}."""
        known(device)
        t = now()
        cmd = Command(
            id=uuid.uuid4().hex,
            name=body.name,
            args=body.args,
            expires=t + timedelta(seconds=body.ttl_s),
        )
        store.add_command(cmd.id, device, cmd.name, cmd.args, t, cmd.expires)
        downlink(device, "cmd", cmd.model_dump_json(exclude_none=True), False, body.ttl_s)
        return _command(cmd.id)

    def _command(command_id: str) -> CommandOut:
        row = store.command(command_id)
        if row is None:
            raise HTTPException(404, f"no command {command_id!r}")
        return CommandOut.model_validate(_dated(row, "created_at", "expires_at", "result_at"))

    @app.get("/api/v1/commands/{command_id}", tags=["remote"])
    def get_command(command_id: str, _: Auth) -> CommandOut:
        return _command(command_id)

    @app.get("/api/v1/webhooks", tags=["webhooks"])
    def list_webhooks(_: Auth) -> list[dict[str, Any]]:
        return [_dated(w, "created_at") for w in queue.list()]

    @app.post("/api/v1/webhooks", tags=["webhooks"], status_code=201)
    def add_webhook(body: WebhookIn, _: Auth) -> WebhookCreated:
        try:
            hook_id, secret = queue.add(body.url, body.event_types, body.secret, now=now())
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return WebhookCreated(id=hook_id, secret=secret)

    @app.delete("/api/v1/webhooks/{hook_id}", tags=["webhooks"], status_code=204)
    def delete_webhook(hook_id: int, _: Auth) -> Response:
        if not queue.delete(hook_id):
            raise HTTPException(404, f"no webhook {hook_id}")
        return Response(status_code=204)

    return app
