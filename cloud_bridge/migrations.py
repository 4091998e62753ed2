"""The bridge's schema, as numbered migrations applied once each, in order.

A migration is appended, never edited once released: a running fleet's
database moves forward by applying the ones it has not seen.  Each is written
for both engines; ``{ts}``, ``{json}``, ``{id}`` and ``{float}`` stand for the
column types that differ.  Several bridge workers may start together:
PostgreSQL serialises them on an advisory lock, SQLite on its write lock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cloud_bridge.db import Database

_TYPES = {
    "sqlite": {
        "ts": "TEXT",
        "json": "TEXT",
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "float": "REAL",
    },
    "postgres": {
        "ts": "TIMESTAMPTZ",
        "json": "JSONB",
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "float": "DOUBLE PRECISION",
    },
}

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "devices, records, trips, commands, configs, rejects, tokens, webhooks",
        """
CREATE TABLE devices (
    device TEXT PRIMARY KEY,
    first_seen {ts} NOT NULL,
    last_seen {ts} NOT NULL,
    state TEXT,
    status {json},
    status_at {ts},
    last_ts {ts},
    last_lat {float},
    last_lon {float},
    last_speed {float},
    last_course {float},
    config_version INTEGER,
    config_running INTEGER
);
CREATE TABLE positions (
    device TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts {ts} NOT NULL,
    lat {float} NOT NULL,
    lon {float} NOT NULL,
    alt {float},
    speed {float},
    course {float},
    mode SMALLINT NOT NULL,
    sats SMALLINT,
    hdop {float},
    reason TEXT,
    received_at {ts} NOT NULL,
    PRIMARY KEY (device, epoch, seq)
);
CREATE INDEX positions_device_ts ON positions (device, ts);
CREATE TABLE events (
    id {id},
    device TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts {ts} NOT NULL,
    type TEXT NOT NULL,
    lat {float},
    lon {float},
    data {json} NOT NULL,
    received_at {ts} NOT NULL,
    UNIQUE (device, epoch, seq)
);
CREATE INDEX events_device_ts ON events (device, ts);
CREATE INDEX events_type_ts ON events (type, ts);
CREATE INDEX events_received ON events (received_at);
CREATE TABLE obd (
    device TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts {ts} NOT NULL,
    signals {json} NOT NULL,
    received_at {ts} NOT NULL,
    PRIMARY KEY (device, epoch, seq)
);
CREATE INDEX obd_device_ts ON obd (device, ts);
CREATE TABLE trips (
    id {id},
    device TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    start_ts {ts} NOT NULL,
    end_ts {ts} NOT NULL,
    distance_m {float} NOT NULL,
    odometer_km {float},
    duration_s {float} NOT NULL,
    driving_s {float},
    idle_s {float},
    max_speed_kmh {float},
    mean_speed_kmh {float},
    harsh {json} NOT NULL,
    start_lat {float},
    start_lon {float},
    end_lat {float},
    end_lon {float},
    UNIQUE (device, epoch, seq)
);
CREATE INDEX trips_device_start ON trips (device, start_ts);
CREATE TABLE configs (
    device TEXT NOT NULL,
    version INTEGER NOT NULL,
    body {json} NOT NULL,
    created_at {ts} NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    result_at {ts},
    PRIMARY KEY (device, version)
);
CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    args {json} NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts},
    status TEXT NOT NULL,
    result {json},
    result_at {ts}
);
CREATE INDEX commands_device ON commands (device, created_at);
CREATE TABLE rejects (
    id {id},
    received_at {ts} NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX rejects_reason ON rejects (reason);
CREATE TABLE api_tokens (
    id {id},
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at {ts} NOT NULL,
    revoked_at {ts}
);
CREATE TABLE webhooks (
    id {id},
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    event_types {json} NOT NULL,
    created_at {ts} NOT NULL,
    active BOOLEAN NOT NULL
);
CREATE TABLE webhook_deliveries (
    id {id},
    webhook_id BIGINT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id BIGINT NOT NULL REFERENCES events (id),
    created_at {ts} NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at {ts} NOT NULL,
    locked_until {ts},
    delivered_at {ts},
    failed_at {ts},
    last_status INTEGER,
    last_error TEXT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL
""",
    ),
]


def migrate(db: Database) -> list[int]:
    """Apply what this database has not seen; the versions applied now."""
    types = _TYPES[db.dialect]
    applied: list[int] = []
    with db.transaction():
        if db.dialect == "postgres":
            db.execute("SELECT pg_advisory_xact_lock(7201)")  # one migrator at a time
        db.script(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            f"(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {types['ts']} NOT NULL)"
        )
        done = {int(v) for (v,) in db.query("SELECT version FROM schema_migrations")}
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            db.script(sql.format(**types))
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, db.ts(_now())),
            )
            applied.append(version)
    return applied


def schema_version(db: Database) -> int:
    return int(db.scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") or 0)


def _now() -> datetime:
    return datetime.now(UTC)
