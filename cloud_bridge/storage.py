"""Bridge storage: what devices sent, what the cloud asked of them, what it owes webhooks.

SQLite (a file path) is the embedded default; PostgreSQL (a
``postgresql://`` URL) is for production and for several bridge workers.
The schema is in :mod:`cloud_bridge.migrations`; engine differences in
:mod:`cloud_bridge.db`.

Exactly once: ``(device, epoch, seq)`` is the key of every record, so a
re-delivered record, or the same record handled by two workers, is dropped by
the database itself.  Everything a batch causes (its rows, the device's last
position, trips from ``trip_end``, webhook deliveries for new events) is
written in one transaction: a crash leaves all of it or none, and the broker
redelivers what was not acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.messages import Batch, CommandResult, Event, Obd, Position, Status, utc_iso
from cloud_bridge.db import Database, StorageError
from cloud_bridge.migrations import migrate
from cloud_bridge.rows import DeviceRow, EventRow, PositionRow, TripRow

__all__ = ["BridgeStore", "StorageError", "StoreResult"]

_POSITION_COLS = [
    ("device", "text"),
    ("epoch", "text"),
    ("seq", "int8"),
    ("ts", "timestamptz"),
    ("lat", "float8"),
    ("lon", "float8"),
    ("alt", "float8"),
    ("speed", "float8"),
    ("course", "float8"),
    ("mode", "int2"),
    ("sats", "int2"),
    ("hdop", "float8"),
    ("reason", "text"),
    ("received_at", "timestamptz"),
]
_EVENT_COLS = [
    ("device", "text"),
    ("epoch", "text"),
    ("seq", "int8"),
    ("ts", "timestamptz"),
    ("type", "text"),
    ("lat", "float8"),
    ("lon", "float8"),
    ("data", "jsonb"),
    ("received_at", "timestamptz"),
]
_OBD_COLS = [
    ("device", "text"),
    ("epoch", "text"),
    ("seq", "int8"),
    ("ts", "timestamptz"),
    ("signals", "jsonb"),
    ("received_at", "timestamptz"),
]
_TRIP_COLS = [
    ("device", "text"),
    ("epoch", "text"),
    ("seq", "int8"),
    ("start_ts", "timestamptz"),
    ("end_ts", "timestamptz"),
    ("distance_m", "float8"),
    ("odometer_km", "float8"),
    ("duration_s", "float8"),
    ("driving_s", "float8"),
    ("idle_s", "float8"),
    ("max_speed_kmh", "float8"),
    ("mean_speed_kmh", "float8"),
    ("harsh", "jsonb"),
    ("start_lat", "float8"),
    ("start_lon", "float8"),
    ("end_lat", "float8"),
    ("end_lon", "float8"),
]
_TRIP_NUMBERS = (
    "distance_m",
    "odometer_km",
    "duration_s",
    "driving_s",
    "idle_s",
    "max_speed_kmh",
    "mean_speed_kmh",
    "start_lat",
    "start_lon",
    "end_lat",
    "end_lon",
)
_EVENT_SELECT = "id, device, epoch, seq, ts, type, lat, lon, data, received_at"
_POSITION_SELECT = "device, epoch, seq, ts, lat, lon, alt, speed, course, mode, sats, hdop, reason"
_TRIP_SELECT = (
    "id, device, start_ts, end_ts, distance_m, odometer_km, duration_s, driving_s, idle_s, "
    "max_speed_kmh, mean_speed_kmh, harsh, start_lat, start_lon, end_lat, end_lon"
)


@dataclass(frozen=True, slots=True)
class StoreResult:
    stored: int
    duplicates: int
    new_events: list[EventRow] = field(default_factory=list)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _parse_utc(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.astimezone(UTC) if ts.tzinfo is not None else None


class BridgeStore:
    """The bridge's database: ingest on one side, queries for the API on the other."""

    def __init__(
        self, url: str | Path, busy_timeout_s: float = 5.0, migrated: bool = False
    ) -> None:
        """``migrated``: another handle of this process has brought the schema up to date."""
        self.url = str(url)
        self.db = Database(self.url, busy_timeout_s=busy_timeout_s)
        if not migrated:
            migrate(self.db)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    # -- ingest -------------------------------------------------------------------

    def store_batch(self, stream: str, batch: Batch, received_at: float | datetime) -> StoreResult:
        """Store a batch's new records; duplicates are counted, not stored."""
        db = self.db
        now = _as_dt(received_at)
        rx = db.ts(now)
        positions = [r for r in batch.records if isinstance(r, Position)]
        events = [r for r in batch.records if isinstance(r, Event)]
        obd = [r for r in batch.records if isinstance(r, Obd)]
        d, e = batch.device, batch.epoch
        stored = 0
        new_events: list[EventRow] = []
        with db.transaction():
            if positions:
                n, _ = db.insert_rows(
                    "positions",
                    _POSITION_COLS,
                    [
                        (
                            d,
                            e,
                            p.seq,
                            db.ts(p.ts),
                            p.lat,
                            p.lon,
                            p.alt,
                            p.speed,
                            p.course,
                            p.mode,
                            p.sats,
                            p.hdop,
                            p.reason,
                            rx,
                        )
                        for p in positions
                    ],
                )
                stored += n
            if events:
                n, got = db.insert_rows(
                    "events",
                    _EVENT_COLS,
                    [
                        (d, e, v.seq, db.ts(v.ts), v.type, v.lat, v.lon, _dumps(v.data), rx)
                        for v in events
                    ],
                    returning="id, seq",
                )
                stored += n
                by_seq = {v.seq: v for v in events}
                for event_id, seq in got:
                    v = by_seq[int(seq)]
                    new_events.append(
                        EventRow(
                            int(event_id), d, e, v.seq, v.ts, v.type, v.lat, v.lon, v.data, now
                        )
                    )
                new_events.sort(key=lambda r: r.seq)
                self._store_trips(d, e, [r for r in new_events if r.type == "trip_end"])
                self._enqueue_webhooks(new_events, now)
            if obd:
                n, _ = db.insert_rows(
                    "obd",
                    _OBD_COLS,
                    [(d, e, o.seq, db.ts(o.ts), _dumps(o.signals), rx) for o in obd],
                )
                stored += n
            self._touch_device(d, now, max(positions, key=lambda p: p.ts, default=None))
        return StoreResult(stored, len(batch.records) - stored, new_events)

    def _touch_device(self, device: str, now: datetime, newest: Position | None) -> None:
        db = self.db
        rx = db.ts(now)
        db.execute(
            "INSERT INTO devices (device, first_seen, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (device) DO UPDATE SET last_seen = "
            + db.greatest("devices.last_seen", "excluded.last_seen"),
            (device, rx, rx),
        )
        if newest is not None:
            db.execute(
                "UPDATE devices SET last_ts = ?, last_lat = ?, last_lon = ?, last_speed = ?, "
                "last_course = ? WHERE device = ? AND (last_ts IS NULL OR last_ts < ?)",
                (
                    db.ts(newest.ts),
                    newest.lat,
                    newest.lon,
                    newest.speed,
                    newest.course,
                    device,
                    db.ts(newest.ts),
                ),
            )

    def _store_trips(self, device: str, epoch: str, ends: list[EventRow]) -> None:
        rows = []
        for ev in ends:
            data = ev.data
            start = _parse_utc(data.get("start")) or ev.ts
            harsh = data.get("harsh") if isinstance(data.get("harsh"), dict) else {}
            num = {k: _num(data.get(k)) for k in _TRIP_NUMBERS}
            rows.append(
                (
                    device,
                    epoch,
                    ev.seq,
                    self.db.ts(start),
                    self.db.ts(ev.ts),
                    num["distance_m"] or 0.0,
                    num["odometer_km"],
                    num["duration_s"] or (ev.ts - start).total_seconds(),
                    num["driving_s"],
                    num["idle_s"],
                    num["max_speed_kmh"],
                    num["mean_speed_kmh"],
                    _dumps(harsh),
                    num["start_lat"],
                    num["start_lon"],
                    num["end_lat"],
                    num["end_lon"],
                )
            )
        self.db.insert_rows("trips", _TRIP_COLS, rows)

    def _enqueue_webhooks(self, events: list[EventRow], now: datetime) -> None:
        """One delivery per (webhook, new event) it subscribes to, in the same transaction."""
        if not events:
            return
        hooks = [
            (int(i), set(self.db.from_json(types)))
            for i, types in self.db.query("SELECT id, event_types FROM webhooks WHERE active")
        ]
        rows = [
            (hook, ev.id, self.db.ts(now), 0, self.db.ts(now))
            for ev in events
            for hook, types in hooks
            if ev.type in types or "*" in types
        ]
        self.db.insert_rows(
            "webhook_deliveries",
            [
                ("webhook_id", "int8"),
                ("event_id", "int8"),
                ("created_at", "timestamptz"),
                ("attempts", "int4"),
                ("next_attempt_at", "timestamptz"),
            ],
            rows,
        )

    def store_status(
        self, status: Status, received_at: float | datetime, retained: bool = False
    ) -> None:
        """The device's presence and health.

        A status older than the stored one by the device's own ``ts`` (a late
        copy via another worker) leaves state and health alone.  A retained
        status arrives again at every (re)subscribe: it does not make the
        device "seen" now.
        """
        db = self.db
        rx = _as_dt(received_at)
        body = status.model_dump(mode="json", exclude_none=True)
        seen = db.ts(status.ts or rx) if retained else db.ts(rx)
        with db.transaction():
            # Every worker gets every status: the first one creates the row,
            # the others find it (no unique-key race), then one at a time.
            db.execute(
                "INSERT INTO devices (device, first_seen, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO NOTHING",
                (status.device, seen, seen),
            )
            lock = " FOR UPDATE" if db.dialect == "postgres" else ""
            rows = db.query(f"SELECT status FROM devices WHERE device = ?{lock}", (status.device,))
            stored = db.from_json(rows[0][0]) or {}
            before = _parse_utc(stored.get("ts"))
            if status.ts is None or before is None or status.ts >= before:
                db.execute(
                    "UPDATE devices SET state = ?, status = ?, status_at = ? WHERE device = ?",
                    (status.state, db.json(body), db.ts(rx), status.device),
                )
            if not retained:
                db.execute(
                    "UPDATE devices SET last_seen = ? WHERE device = ? AND last_seen < ?",
                    (db.ts(rx), status.device, db.ts(rx)),
                )

    def store_result(self, result: CommandResult, received_at: float | datetime) -> bool:
        """A device's answer on ``cmd/result``; False when it answers nothing we sent."""
        db = self.db
        rx = db.ts(_as_dt(received_at))
        with db.transaction():
            db.execute(
                "UPDATE devices SET config_running = ? WHERE device = ?",
                (result.running_version, result.device),
            )
            if result.kind == "config":
                return (
                    db.execute(
                        "UPDATE configs SET status = ?, reason = ?, result_at = ? "
                        "WHERE device = ? AND version = ?",
                        (result.status, result.reason, rx, result.device, result.version),
                    )
                    > 0
                )
            return (
                db.execute(
                    "UPDATE commands SET status = ?, result = ?, result_at = ? "
                    "WHERE id = ? AND device = ?",
                    (
                        result.status,
                        db.json(result.model_dump(mode="json", exclude_none=True)),
                        rx,
                        result.id,
                        result.device,
                    ),
                )
                > 0
            )

    def store_reject(
        self, topic: str, reason: str, detail: str, size: int, received_at: float | datetime
    ) -> None:
        self.db.execute(
            "INSERT INTO rejects (received_at, topic, reason, detail, size) VALUES (?, ?, ?, ?, ?)",
            (self.db.ts(_as_dt(received_at)), topic[:256], reason, detail[:500], size),
        )

    # -- the cloud's side: configs, commands, tokens --------------------------------

    def add_config(self, device: str, body: dict[str, Any], now: datetime) -> int:
        """Record the next desired config of a device; its version (one more than the last)."""
        db = self.db
        with db.transaction():
            if db.dialect == "postgres":  # two API calls at once must not share a version
                db.execute("SELECT pg_advisory_xact_lock(7202, hashtext(?))", (device,))
            last = db.scalar("SELECT MAX(version) FROM configs WHERE device = ?", (device,))
            running = db.scalar("SELECT config_running FROM devices WHERE device = ?", (device,))
            version = max(int(last or 0), int(running or 0)) + 1
            db.execute(
                "INSERT INTO configs (device, version, body, created_at, status) "
                "VALUES (?, ?, ?, ?, 'pending')",
                (device, version, db.json({**body, "version": version}), db.ts(now)),
            )
            db.execute(
                "INSERT INTO devices (device, first_seen, last_seen, config_version) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
                "config_version = excluded.config_version",
                (device, db.ts(now), db.ts(now), version),
            )
        return version

    def config(self, device: str, version: int | None = None) -> dict[str, Any] | None:
        sql = "SELECT version, body, created_at, status, reason, result_at FROM configs "
        if version is None:
            rows = self.db.query(sql + "WHERE device = ? ORDER BY version DESC LIMIT 1", (device,))
        else:
            rows = self.db.query(sql + "WHERE device = ? AND version = ?", (device, version))
        if not rows:
            return None
        v, body, created, status, reason, result_at = rows[0]
        return {
            "device": device,
            "version": int(v),
            "config": self.db.from_json(body),
            "created_at": self.db.from_ts(created),
            "status": status,
            "reason": reason,
            "result_at": self.db.opt_ts(result_at),
        }

    def add_command(
        self,
        command_id: str,
        device: str,
        name: str,
        args: dict[str, Any],
        now: datetime,
        expires_at: datetime | None,
    ) -> None:
        self.db.execute(
            "INSERT INTO commands (id, device, name, args, created_at, expires_at, status) "
            "VALUES (?, ?, ?, ?, ?, ?, 'sent')",
            (
                command_id,
                device,
                name,
                self.db.json(args),
                self.db.ts(now),
                self.db.ts(expires_at),
            ),
        )

    def command(self, command_id: str) -> dict[str, Any] | None:
        rows = self.db.query(
            "SELECT id, device, name, args, created_at, expires_at, status, result, result_at "
            "FROM commands WHERE id = ?",
            (command_id,),
        )
        if not rows:
            return None
        i, device, name, args, created, expires, status, result, result_at = rows[0]
        return {
            "id": i,
            "device": device,
            "name": name,
            "args": self.db.from_json(args),
            "created_at": self.db.from_ts(created),
            "expires_at": self.db.opt_ts(expires),
            "status": status,
            "result": self.db.from_json(result),
            "result_at": self.db.opt_ts(result_at),
        }

    def add_token(self, name: str, now: datetime) -> str:
        """A new API token; only its hash is kept, so it is shown once."""
        token = "tk_" + secrets.token_urlsafe(32)
        self.db.execute(
            "INSERT INTO api_tokens (name, token_sha256, created_at) VALUES (?, ?, ?)",
            (name, _sha256(token), self.db.ts(now)),
        )
        return token

    def token_name(self, token: str) -> str | None:
        """Whose token this is, or None (unknown or revoked)."""
        name = self.db.scalar(
            "SELECT name FROM api_tokens WHERE token_sha256 = ? AND revoked_at IS NULL",
            (_sha256(token),),
        )
        return None if name is None else str(name)

    def revoke_tokens(self, name: str, now: datetime) -> int:
        return self.db.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
            (self.db.ts(now), name),
        )

    # -- queries --------------------------------------------------------------------

    def devices(self, device: str | None = None) -> list[DeviceRow]:
        sql = (
            "SELECT device, first_seen, last_seen, state, status, last_ts, last_lat, last_lon, "
            "last_speed, last_course, config_version, config_running FROM devices"
        )
        args: tuple[Any, ...] = ()
        if device is not None:
            sql += " WHERE device = ?"
            args = (device,)
        out = []
        for d, first, last, state, status, lts, lat, lon, speed, course, cv, cr in self.db.query(
            sql + " ORDER BY device", args
        ):
            position = None
            if lts is not None:
                position = PositionRow(
                    d, "", 0, self.db.from_ts(lts), lat, lon, None, speed, course
                )
            out.append(
                DeviceRow(
                    device=d,
                    first_seen=self.db.from_ts(first),
                    last_seen=self.db.from_ts(last),
                    state=state,
                    status=self.db.from_json(status),
                    last_position=position,
                    config_version=cv,
                    config_running=cr,
                )
            )
        return out

    def positions(
        self,
        device: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100_000,
    ) -> list[PositionRow]:
        """A device's positions with ``start <= ts < end``, in time order."""
        where, args = self._range("device = ?", [device], start, end)
        rows = self.db.query(
            f"SELECT {_POSITION_SELECT} FROM positions WHERE {where} ORDER BY ts, seq LIMIT ?",
            [*args, limit],
        )
        return [
            PositionRow(d, e, int(q), self.db.from_ts(ts), *rest) for d, e, q, ts, *rest in rows
        ]

    def events(
        self,
        device: str | None = None,
        types: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        received_after: datetime | None = None,
        limit: int = 1000,
        newest: bool = False,
    ) -> list[EventRow]:
        """Events by device, type and time (event time, or arrival for a live feed)."""
        clauses, args = [], []
        if device is not None:
            clauses.append("device = ?")
            args.append(device)
        if types:
            clauses.append(f"type IN ({', '.join('?' for _ in types)})")
            args.extend(types)
        if received_after is not None:
            clauses.append("received_at > ?")
            args.append(self.db.ts(received_after))
        where, args = self._range(" AND ".join(clauses) or "1 = 1", args, start, end)
        order = "received_at, id" if received_after is not None else "ts, id"
        if newest:
            order = "received_at DESC, id DESC"
        rows = self.db.query(
            f"SELECT {_EVENT_SELECT} FROM events WHERE {where} ORDER BY {order} LIMIT ?",
            [*args, limit],
        )
        out = [self._event(r) for r in rows]
        return out[::-1] if newest else out

    def _event(self, row: tuple[Any, ...]) -> EventRow:
        i, d, e, q, ts, t, lat, lon, data, rx = row
        db = self.db
        return EventRow(
            int(i), d, e, int(q), db.from_ts(ts), t, lat, lon, db.from_json(data), db.from_ts(rx)
        )

    def trips(
        self, device: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[TripRow]:
        """Finished trips that started in [start, end), newest first."""
        where, args = self._range("device = ?", [device], start, end, column="start_ts")
        rows = self.db.query(
            f"SELECT {_TRIP_SELECT} FROM trips WHERE {where} ORDER BY start_ts DESC", args
        )
        return [self._trip(r) for r in rows]

    def trip(self, trip_id: int) -> TripRow | None:
        rows = self.db.query(f"SELECT {_TRIP_SELECT} FROM trips WHERE id = ?", (trip_id,))
        return self._trip(rows[0]) if rows else None

    def _trip(self, row: tuple[Any, ...]) -> TripRow:
        i, d, start, end, dist, odo, dur, drv, idle, vmax, vmean, harsh, *ends = row
        db = self.db
        return TripRow(
            int(i),
            d,
            db.from_ts(start),
            db.from_ts(end),
            dist,
            odo,
            dur,
            drv,
            idle,
            vmax,
            vmean,
            {str(k): int(v) for k, v in (db.from_json(harsh) or {}).items()},
            *ends,
        )

    def _range(
        self,
        where: str,
        args: list[Any],
        start: datetime | None,
        end: datetime | None,
        column: str = "ts",
    ) -> tuple[str, list[Any]]:
        if start is not None:
            where += f" AND {column} >= ?"
            args = [*args, self.db.ts(start)]
        if end is not None:
            where += f" AND {column} < ?"
            args = [*args, self.db.ts(end)]
        return where, args

    # -- compact views for the CLI, tests and metrics ---------------------------------

    def records(self, device: str, stream: str | None = None) -> Iterator[dict[str, Any]]:
        """A device's records as the device sent them, in (epoch, seq) order."""
        out: list[tuple[str, int, dict[str, Any]]] = []
        if stream in (None, "telemetry"):
            for p in self.positions(device, limit=10**9):
                body = {"kind": "position", "seq": p.seq, "ts": utc_iso(p.ts), "lat": p.lat}
                body |= {"lon": p.lon, "alt": p.alt, "speed": p.speed, "course": p.course}
                body |= {"mode": p.mode, "sats": p.sats, "hdop": p.hdop, "reason": p.reason}
                out.append((p.epoch, p.seq, {"stream": "telemetry", "epoch": p.epoch} | body))
            for e, q, ts, signals in self.db.query(
                "SELECT epoch, seq, ts, signals FROM obd WHERE device = ?", (device,)
            ):
                body = {"kind": "obd", "seq": int(q), "ts": utc_iso(self.db.from_ts(ts))}
                body["signals"] = self.db.from_json(signals)
                out.append((e, int(q), {"stream": "telemetry", "epoch": e} | body))
        if stream in (None, "events"):
            for ev in self.events(device, limit=10**9):
                body = {"kind": "event", "seq": ev.seq, "ts": utc_iso(ev.ts), "type": ev.type}
                body |= {"lat": ev.lat, "lon": ev.lon, "data": ev.data}
                out.append((ev.epoch, ev.seq, {"stream": "events", "epoch": ev.epoch} | body))
        first_seen = self._epoch_order(device)
        out.sort(key=lambda r: (first_seen.get(r[0], 0), r[0], r[1]))
        for _, _, rec in out:
            yield {k: v for k, v in rec.items() if v is not None}

    def _epoch_order(self, device: str) -> dict[str, int]:
        rows = self.db.query(
            "SELECT epoch, MIN(received_at) FROM ("
            "SELECT epoch, received_at FROM positions WHERE device = ? UNION ALL "
            "SELECT epoch, received_at FROM events WHERE device = ?) AS r GROUP BY epoch "
            "ORDER BY 2",
            (device, device),
        )
        return {str(e): i for i, (e, _) in enumerate(rows)}

    def arrival_order(self, device: str) -> list[tuple[str, str, int]]:
        """(stream, epoch, seq) of a device's records in the order they arrived.

        Batches are stamped with their arrival time; within a batch, seq order.
        """
        rows = self.db.query(
            "SELECT stream, epoch, seq FROM ("
            "SELECT 'telemetry' AS stream, epoch, seq, received_at FROM positions WHERE device = ? "
            "UNION ALL SELECT 'telemetry', epoch, seq, received_at FROM obd WHERE device = ? "
            "UNION ALL SELECT 'events', epoch, seq, received_at FROM events WHERE device = ?"
            ") AS r ORDER BY received_at, seq",
            (device, device, device),
        )
        return [(str(s), str(e), int(q)) for s, e, q in rows]

    def summary(self) -> list[dict[str, Any]]:
        """Per device: records held, seq range and time range (for ``telematics-bridge summary``)."""
        out = []
        for dev in self.devices():
            d = dev.device
            p = self.db.query(
                "SELECT COUNT(*), MIN(seq), MAX(seq), MIN(ts), MAX(ts), COUNT(DISTINCT epoch) "
                "FROM positions WHERE device = ?",
                (d,),
            )[0]
            ev = self.db.query(
                "SELECT COUNT(*), MIN(seq), MAX(seq) FROM events WHERE device = ?", (d,)
            )[0]
            n_obd = self.db.scalar("SELECT COUNT(*) FROM obd WHERE device = ?", (d,))
            seqs = [s for s in (p[1], p[2], ev[1], ev[2]) if s is not None]
            out.append(
                {
                    "device": d,
                    "epochs": int(p[5]),
                    "positions": int(p[0]),
                    "events": int(ev[0]),
                    "obd": int(n_obd or 0),
                    "seq_min": min(seqs, default=None),
                    "seq_max": max(seqs, default=None),
                    "first": None if p[3] is None else utc_iso(self.db.from_ts(p[3])),
                    "last": None if p[4] is None else utc_iso(self.db.from_ts(p[4])),
                    "status": dev.state,
                }
            )
        return out

    def reject_counts(self) -> dict[str, int]:
        return {
            str(reason): int(n)
            for reason, n in self.db.query(
                "SELECT reason, COUNT(*) FROM rejects GROUP BY reason ORDER BY reason"
            )
        }

    def totals(self) -> dict[str, int]:
        """Row counts for /metrics (approximate is fine in PostgreSQL for big tables)."""
        out = {}
        for table in ("devices", "positions", "events", "obd", "trips", "commands"):
            out[table] = int(self.db.scalar(f"SELECT COUNT(*) FROM {table}") or 0)
        return out

    def close(self) -> None:
        self.db.close()


def _as_dt(value: float | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(value, UTC)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
