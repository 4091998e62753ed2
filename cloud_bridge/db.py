"""One small database handle over SQLite (embedded default) and PostgreSQL.

The bridge's SQL is written once, with ``?`` placeholders, in the common
subset of both engines (``ON CONFLICT``, ``RETURNING``, partial indexes); the
few differences (timestamps, JSON, bulk insert) are methods here, so the
storage code reads as one piece.  Why not an ORM: the queries are few and
hot (ingest), and PostgreSQL's ``unnest`` bulk insert and ``SKIP LOCKED``
queue claims are what make it scale; both are plain SQL.

Timestamps are ``timestamptz`` in PostgreSQL and fixed-width ISO 8601 text
(``2026-01-02T03:04:05.000000Z``, which sorts as time) in SQLite.  JSON is
``jsonb`` in PostgreSQL (queryable by a fleet backend) and text in SQLite.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Dialect = Literal["sqlite", "postgres"]

_ISO = "%Y-%m-%dT%H:%M:%S.%fZ"


class StorageError(Exception):
    """The database failed (disk full, server gone): the caller must not acknowledge."""


class UnstorableData(Exception):
    """The database refuses these values (out of range, NaN in JSON, NUL in text).

    The payload's fault, not the database's: reject it and go on, or one
    poisoned message would stop a worker at every redelivery.
    """


def describe_url(url: str) -> str:
    """The database URL for logs, without a password (URL, query or key=value form)."""
    url = re.sub(r"(password=)[^&\s]*", r"\1***", url, flags=re.IGNORECASE)
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"


class Database:
    """A connection with a lock: one statement or transaction at a time per handle.

    Each bridge component (ingest, API, webhook sender) opens its own handle,
    so they do not wait on each other's lock; PostgreSQL or SQLite's WAL lets
    them run side by side.
    """

    dialect: Dialect

    def __init__(self, url: str, busy_timeout_s: float = 5.0) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._depth = 0
        if url.startswith(("postgresql://", "postgres://")):
            import psycopg

            self.dialect = "postgres"
            self._pg = psycopg.connect(url, autocommit=True, options="-c timezone=UTC")
            self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
            self._data_errors: tuple[type[BaseException], ...] = (
                psycopg.DataError,
                OverflowError,
                ValueError,
            )
        else:
            path = Path(url.removeprefix("sqlite:///").removeprefix("sqlite://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.dialect = "sqlite"
            self._sq = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._sq.execute("PRAGMA journal_mode=WAL")
            self._sq.execute("PRAGMA synchronous=NORMAL")
            self._sq.execute("PRAGMA foreign_keys=ON")
            self._sq.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._errors = (sqlite3.Error,)
            self._data_errors = (OverflowError, ValueError)

    # -- statements -------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._guard():
            if self.dialect == "postgres":
                with self._pg.cursor() as cur:
                    cur.execute(self._sql(sql), args)
                    return max(cur.rowcount, 0)
            return self._sq.execute(sql, args).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._guard():
            if self.dialect == "postgres":
                with self._pg.cursor() as cur:
                    cur.executemany(self._sql(sql), rows)
            else:
                self._sq.executemany(sql, rows)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._guard():
            if self.dialect == "postgres":
                with self._pg.cursor() as cur:
                    cur.execute(self._sql(sql), args)
                    return list(cur.fetchall()) if cur.description is not None else []
            return self._sq.execute(sql, args).fetchall()

    def scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = self.query(sql, args)
        return rows[0][0] if rows else None

    def insert_rows(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        returning: str | None = None,
    ) -> tuple[int, list[tuple[Any, ...]]]:
        """Insert many rows, skipping those whose key exists; (inserted, RETURNING rows).

        ``columns`` are (name, PostgreSQL type).  PostgreSQL gets one
        ``INSERT ... SELECT FROM unnest(arrays)``: one round trip and one plan
        for the whole batch, several times faster than executemany.  JSON
        columns are passed as JSON text (both engines) and cast on the server.
        """
        if not rows:
            return 0, []
        names = ", ".join(n for n, _ in columns)
        tail = " ON CONFLICT DO NOTHING" + (f" RETURNING {returning}" if returning else "")
        with self._guard():
            if self.dialect == "postgres":
                arrays = [[r[i] for r in rows] for i in range(len(columns))]
                unnest = ", ".join(f"%s::{'text' if t == 'jsonb' else t}[]" for _, t in columns)
                select = ", ".join(
                    f"c{i}::jsonb" if t == "jsonb" else f"c{i}" for i, (_, t) in enumerate(columns)
                )
                aliases = ", ".join(f"c{i}" for i in range(len(columns)))
                sql = (
                    f"INSERT INTO {table} ({names}) SELECT {select} "
                    f"FROM unnest({unnest}) AS t({aliases}){tail}"
                )
                with self._pg.cursor() as cur:
                    cur.execute(sql.encode(), arrays)
                    out = list(cur.fetchall()) if returning else []
                    return max(cur.rowcount, 0), out
            marks = ", ".join("?" for _ in columns)
            sql = f"INSERT INTO {table} ({names}) VALUES ({marks}){tail}"
            if returning:
                out = []
                for r in rows:
                    got = self._sq.execute(sql, r).fetchone()
                    if got is not None:
                        out.append(tuple(got))
                return len(out), out
            before = self._sq.total_changes
            self._sq.executemany(sql, rows)
            return self._sq.total_changes - before, []

    def script(self, sql: str) -> None:
        """Several statements (migrations); no parameters."""
        with self._guard():
            if self.dialect == "postgres":
                self._pg.execute(sql.encode())  # bytes: no placeholder parsing
            else:
                # executescript would COMMIT an open transaction: run each one.
                for statement in _split(sql):
                    self._sq.execute(statement)

    @contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[None]:
        """All or nothing; nests (an inner block joins the outer transaction).

        SQLite takes the write lock at BEGIN (``immediate``) so two writers
        wait on busy_timeout instead of failing mid-transaction.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                with self._guard():
                    if self.dialect == "postgres":
                        with self._pg.transaction():
                            yield
                    else:
                        self._sq.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                        try:
                            yield
                        except BaseException:
                            if self._sq.in_transaction:  # SQLITE_FULL rolled back already
                                self._sq.execute("ROLLBACK")
                            raise
                        self._sq.execute("COMMIT")
            finally:
                self._depth = 0

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """The lock, and the driver's errors as :class:`StorageError`."""
        with self._lock:
            try:
                yield
            except (StorageError, UnstorableData):
                raise
            except self._data_errors as exc:
                raise UnstorableData(f"{type(exc).__name__}: {exc}".strip()) from exc
            except self._errors as exc:
                raise StorageError(f"{type(exc).__name__}: {exc}".strip()) from exc

    # -- values -----------------------------------------------------------------

    def ts(self, value: datetime | None) -> Any:
        """A UTC datetime as this engine stores it."""
        if value is None or self.dialect == "postgres":
            return value
        return value.astimezone(UTC).strftime(_ISO)

    def from_ts(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.strptime(str(value), _ISO).replace(tzinfo=UTC)

    def opt_ts(self, value: Any) -> datetime | None:
        return None if value is None else self.from_ts(value)

    def json(self, value: Any) -> Any:
        if value is None:
            return None
        if self.dialect == "postgres":
            from psycopg.types.json import Jsonb

            return Jsonb(value)
        return json.dumps(value, separators=(",", ":"))

    @staticmethod
    def from_json(value: Any) -> Any:
        if value is None or isinstance(value, dict | list):
            return value
        return json.loads(value)

    def greatest(self, a: str, b: str) -> str:
        """SQL for the larger of two expressions (NULL-tolerant in both engines)."""
        if self.dialect == "postgres":
            return f"GREATEST({a}, {b})"
        return f"MAX(COALESCE({a}, {b}), COALESCE({b}, {a}))"

    def close(self) -> None:
        with self._lock:
            if self.dialect == "postgres":
                self._pg.close()
            else:
                self._sq.close()


def _split(script: str) -> list[str]:
    """Statements of a migration script (ours: no ``;`` inside literals or triggers)."""
    return [s.strip() for s in script.split(";") if s.strip()]
