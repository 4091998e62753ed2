"""Webhooks: signed HTTP POSTs of chosen event types, from a durable queue.

Ingest enqueues one ``webhook_deliveries`` row per (active webhook, new
event) inside the ingest transaction (:meth:`BridgeStore.store_batch`), so an
event the bridge stored is never without its deliveries, and a re-delivered
MQTT message never enqueues twice.  This module sends them: a
:class:`Dispatcher` claims due rows from the :class:`WebhookQueue` under a
lease (``FOR UPDATE SKIP LOCKED`` in PostgreSQL, so several bridge workers
never send one delivery at once), POSTs each and marks the outcome; failures
come back with exponential backoff until ``max_age_s``, then are given up.

Delivery is at least once and not in event order: a crash between the POST
and the mark sends it again after the lease, so receivers deduplicate on
``X-Telematics-Delivery`` (stable across retries) and order by the event's
``ts``/``seq``.  While a receiver is unreachable its backlog waits behind
one delivery's backoff, so a long outage costs one connection per step.  Each body is HMAC-SHA256 signed over
``"{timestamp}." + body`` with the webhook's secret (:func:`sign`,
:func:`verify`); the timestamp lets receivers reject replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import re
import secrets as secrets_mod
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from cloud_bridge.db import Database, StorageError
from cloud_bridge.rows import EventRow, event_dict

__all__ = [
    "USER_AGENT",
    "Delivery",
    "Dispatcher",
    "WebhookQueue",
    "safe_url",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

USER_AGENT = "fleet-telematics-bridge"
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MIN_SECRET_LEN = 16
MAX_URL_LEN = 2048
_ERROR_MAX = 500

# Not finished; due ones are what the partial index webhook_deliveries_due covers.
_OPEN = "delivered_at IS NULL AND failed_at IS NULL"
_PENDING = "d.delivered_at IS NULL AND d.failed_at IS NULL"
_CLAIMABLE = (
    f"{_PENDING} AND d.next_attempt_at <= ? AND (d.locked_until IS NULL OR d.locked_until <= ?)"
)
_DELIVERY_SELECT = (
    "SELECT d.id, d.webhook_id, w.url, w.secret, d.attempts, d.created_at, "
    "e.id, e.device, e.epoch, e.seq, e.ts, e.type, e.lat, e.lon, e.data, e.received_at "
    "FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
    "JOIN events e ON e.id = d.event_id"
)


# -- signing ---------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, "{timestamp}." + body)>``: what a receiver checks."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: float | datetime,
    tolerance_s: float = 300,
) -> bool:
    """Whether a request is ours and fresh: signature matches, timestamp within tolerance.

    For receivers (docs, tests).  Constant-time compare; a replayed request
    older than ``tolerance_s`` is refused even with a valid signature.
    """
    if not timestamp_header or not signature_header:
        return False
    try:
        timestamp = int(timestamp_header)
    except ValueError:
        return False
    clock = now.timestamp() if isinstance(now, datetime) else float(now)
    if abs(clock - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature_header.strip().encode("utf-8", "replace"))


def safe_url(url: str) -> str:
    """A URL for logs: no userinfo (credentials) and no query (often a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LEN:
        raise ValueError(f"webhook url must be a non-empty string of at most {MAX_URL_LEN} chars")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"webhook url {safe_url(url)!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook url {safe_url(url)!r} must be http:// or https:// with a host")
    if any(c.isspace() for c in url):
        raise ValueError(f"webhook url {safe_url(url)!r} must not contain whitespace")
    return url


def _check_types(event_types: Sequence[str]) -> list[str]:
    if isinstance(event_types, str) or not event_types:
        raise ValueError('event_types must be a non-empty list of event types (or ["*"])')
    out: list[str] = []
    for t in event_types:
        if not isinstance(t, str) or (t != "*" and not EVENT_TYPE.match(t)):
            raise ValueError(
                f"event type {t!r} is invalid: expected '*' or {EVENT_TYPE.pattern} "
                "(lower-case, e.g. geofence_enter, impact, dtc)"
            )
        if t not in out:
            out.append(t)
    return out


def _check_secret(secret: str | None) -> str:
    if secret is None:
        return "whsec_" + secrets_mod.token_urlsafe(32)
    if not isinstance(secret, str) or len(secret.strip()) < MIN_SECRET_LEN:
        raise ValueError(f"webhook secret must be at least {MIN_SECRET_LEN} characters")
    return secret


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- the queue ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed delivery with what sending it needs."""

    id: int
    webhook_id: int
    url: str
    secret: str = field(repr=False)
    event: EventRow
    attempts: int  # made before this claim
    created_at: datetime


Hooks = list[dict[str, Any]]
Deliveries = list[Delivery]


class WebhookQueue:
    """Webhook registrations and their delivery queue, over the bridge's database.

    Deliveries for a webhook are enqueued at ingest, so a new webhook gets
    the events stored after it was added, not older ones.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- registrations ---------------------------------------------------------------

    def add(
        self,
        url: str,
        event_types: Sequence[str],
        secret: str | None = None,
        *,
        now: datetime | None = None,
    ) -> tuple[int, str]:
        """Register a webhook; (id, secret).  The secret is shown here only, never listed."""
        url = _check_url(url)
        types = _check_types(event_types)
        secret = _check_secret(secret)
        db = self.db
        row = db.query(
            "INSERT INTO webhooks (url, secret, event_types, created_at, active) "
            "VALUES (?, ?, ?, ?, TRUE) RETURNING id",
            (url, secret, db.json(types), db.ts(now or _utcnow())),
        )
        return int(row[0][0]), secret

    def list(self) -> Hooks:
        """Every webhook with its delivery counts; without secrets."""
        db = self.db
        rows = db.query(
            "SELECT w.id, w.url, w.event_types, w.created_at, w.active, "
            f"COALESCE(SUM(CASE WHEN d.id IS NOT NULL AND {_PENDING} THEN 1 ELSE 0 END), 0), "
            "COUNT(d.delivered_at), COUNT(d.failed_at) "
            "FROM webhooks w LEFT JOIN webhook_deliveries d ON d.webhook_id = w.id "
            "WHERE w.active GROUP BY w.id, w.url, w.event_types, w.created_at, w.active ORDER BY w.id"
        )
        return [
            {
                "id": int(i),
                "url": url,
                "event_types": list(db.from_json(types)),
                "created_at": db.from_ts(created),
                "active": bool(active),
                "pending": int(pending),
                "delivered": int(delivered),
                "failed": int(failed),
            }
            for i, url, types, created, active, pending, delivered, failed in rows
        ]

    def delete(self, webhook_id: int) -> bool:
        """Stop a webhook and drop its undelivered deliveries; False when there is none.

        The row stays (inactive): an ingest transaction that read the active
        set a moment earlier may still queue a delivery for it, which must
        not fail on a missing key; the claim skips inactive webhooks.
        """
        with self.db.transaction():
            gone = self.db.execute(
                "UPDATE webhooks SET active = ? WHERE id = ? AND active", (False, webhook_id)
            )
            self.db.execute(
                "DELETE FROM webhook_deliveries WHERE webhook_id = ? AND delivered_at IS NULL",
                (webhook_id,),
            )
        return gone > 0

    # -- deliveries ---------------------------------------------------------------

    def claim(self, now: datetime, limit: int = 50, lease_s: float = 60) -> Deliveries:
        """Lease up to ``limit`` due deliveries, oldest first; no one else gets them meanwhile.

        A worker that dies holding a lease delays those deliveries by
        ``lease_s``; it does not lose them.
        """
        db = self.db
        at, until = db.ts(now), db.ts(now + timedelta(seconds=lease_s))
        due = (
            "FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
            f"WHERE {_CLAIMABLE} AND w.active"
        )
        pick = f"SELECT d.id {due} ORDER BY d.next_attempt_at, d.id LIMIT ?"
        if db.dialect == "postgres":
            # One statement: rows another worker is claiming are skipped, not waited on.
            # OF d: locking the webhooks row too would make workers skip each other's hook.
            # MATERIALIZED: the locking pick runs once, never re-planned into the UPDATE.
            got = db.query(
                f"WITH due AS MATERIALIZED ({pick} FOR UPDATE OF d SKIP LOCKED) "
                "UPDATE webhook_deliveries SET locked_until = ? FROM due "
                "WHERE webhook_deliveries.id = due.id RETURNING webhook_deliveries.id",
                (at, at, limit, until),
            )
            ids = [int(i) for (i,) in got]
        elif db.scalar(f"SELECT 1 {due} LIMIT 1", (at, at)) is None:
            return []  # nothing due: no write lock taken from ingest every poll
        else:
            with db.transaction():  # BEGIN IMMEDIATE: the write lock, one claimer at a time
                ids = [int(i) for (i,) in db.query(pick, (at, at, limit))]
                if ids:
                    db.execute(
                        "UPDATE webhook_deliveries SET locked_until = ? "
                        f"WHERE id IN ({_marks(ids)})",
                        (until, *ids),
                    )
        if not ids:
            return []
        rows = db.query(
            f"{_DELIVERY_SELECT} WHERE d.id IN ({_marks(ids)}) ORDER BY d.next_attempt_at, d.id",
            ids,
        )
        return [self._delivery(r) for r in rows]

    def _delivery(self, row: Sequence[Any]) -> Delivery:
        db = self.db
        did, hook, url, secret, attempts, created, *ev = row
        eid, device, epoch, seq, ts, etype, lat, lon, data, rx = ev
        event = EventRow(
            int(eid),
            device,
            epoch,
            int(seq),
            db.from_ts(ts),
            etype,
            lat,
            lon,
            db.from_json(data) or {},
            db.opt_ts(rx),
        )
        return Delivery(int(did), int(hook), url, secret, event, int(attempts), db.from_ts(created))

    def delivered(self, delivery_id: int, now: datetime, status: int) -> bool:
        """The receiver answered 2xx: done for good."""
        return (
            self.db.execute(
                "UPDATE webhook_deliveries SET delivered_at = ?, last_status = ?, "
                "last_error = NULL, attempts = attempts + 1, locked_until = NULL "
                "WHERE id = ? AND delivered_at IS NULL",
                (self.db.ts(now), status, delivery_id),
            )
            > 0
        )

    def retry(
        self,
        delivery_id: int,
        now: datetime,
        status: int | None,
        error: str,
        next_at: datetime,
    ) -> bool:
        """An attempt failed at ``now``: try again at ``next_at``."""
        if next_at < now:
            raise ValueError("next_at is before now")
        return (
            self.db.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = ?, last_status = ?, "
                "last_error = ?, attempts = attempts + 1, locked_until = NULL "
                f"WHERE id = ? AND {_OPEN}",
                (self.db.ts(next_at), status, error[:_ERROR_MAX], delivery_id),
            )
            > 0
        )

    def give_up(self, delivery_id: int, now: datetime, status: int | None, error: str) -> bool:
        """An attempt failed and the delivery is too old to try again."""
        return (
            self.db.execute(
                "UPDATE webhook_deliveries SET failed_at = ?, last_status = ?, last_error = ?, "
                "attempts = attempts + 1, locked_until = NULL "
                f"WHERE id = ? AND {_OPEN}",
                (self.db.ts(now), status, error[:_ERROR_MAX], delivery_id),
            )
            > 0
        )

    def defer_webhook(
        self,
        webhook_id: int,
        held: Sequence[int],
        now: datetime,
        next_at: datetime,
        max_age_s: float,
        reason: str,
    ) -> tuple[int, int]:
        """The receiver is unreachable: hold its other pending deliveries until ``next_at``.

        Without an attempt (``attempts`` is unchanged), so a backlog costs one
        connection per backoff step, not one per delivery.  ``held`` are the
        caller's leased ones; rows another worker holds are left alone.  Those
        older than ``max_age_s`` are given up (``reason``).  (given up, deferred).
        """
        db = self.db
        mine = f"id IN ({_marks(held)}) OR " if held else ""
        scope = (
            f"webhook_id = ? AND {_OPEN} AND next_attempt_at < ? AND "
            f"({mine}locked_until IS NULL OR locked_until <= ?)"
        )
        at = db.ts(now)
        with db.transaction():
            failed = db.execute(
                "UPDATE webhook_deliveries SET failed_at = ?, last_error = ?, locked_until = NULL "
                f"WHERE {scope} AND created_at <= ?",
                (
                    at,
                    reason[:_ERROR_MAX],
                    webhook_id,
                    db.ts(next_at),
                    *held,
                    at,
                    db.ts(now - timedelta(seconds=max_age_s)),
                ),
            )
            deferred = db.execute(
                f"UPDATE webhook_deliveries SET next_attempt_at = ?, locked_until = NULL "
                f"WHERE {scope}",
                (db.ts(next_at), webhook_id, db.ts(next_at), *held, at),
            )
        return failed, deferred

    def stats(self, now: datetime) -> dict[str, float | int]:
        """Queue totals for /metrics: pending, delivered, failed, oldest_pending_age_s, attempts."""
        db = self.db
        pending, delivered, failed, oldest, attempts = db.query(
            f"SELECT COALESCE(SUM(CASE WHEN {_PENDING} THEN 1 ELSE 0 END), 0), "
            "COUNT(d.delivered_at), COUNT(d.failed_at), "
            f"MIN(CASE WHEN {_PENDING} THEN d.created_at END), COALESCE(SUM(d.attempts), 0) "
            "FROM webhook_deliveries d"
        )[0]
        age = 0.0 if oldest is None else max(0.0, (now - db.from_ts(oldest)).total_seconds())
        return {
            "pending": int(pending),
            "delivered": int(delivered),
            "failed": int(failed),
            "oldest_pending_age_s": age,
            "attempts": int(attempts),
        }


def _marks(ids: Sequence[object]) -> str:
    return ", ".join("?" for _ in ids)


# -- sending ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: int | None  # HTTP status, None when no response
    error: str | None  # None: delivered
    unreachable: bool  # no answer, or asked to back off: hold the webhook's other deliveries


class Dispatcher:
    """Sends due deliveries: one pass with :meth:`deliver_due`, or a loop with :meth:`run`.

    ``deliver_due(now)`` schedules with the ``now`` it is given (tests move
    time forward instead of sleeping); only the signature timestamp reads
    ``clock``, because receivers check it against their own clock.
    """

    def __init__(
        self,
        queue: WebhookQueue,
        *,
        client: httpx.Client | None = None,
        timeout_s: float = 10,
        backoff_min_s: float = 2,
        backoff_max_s: float = 600,
        max_age_s: float = 3 * 86400,
        rng: random.Random | None = None,
        batch: int = 20,
        lease_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if backoff_min_s <= 0 or backoff_max_s < backoff_min_s:
            raise ValueError("need 0 < backoff_min_s <= backoff_max_s")
        self.queue = queue
        self._own_client = client is None
        self.client = client or httpx.Client(follow_redirects=False)
        self.timeout_s = timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.max_age_s = max_age_s
        self.rng = rng or random.Random()
        self.batch = batch
        # A lease must outlast a pass in which every send is slow, else two workers send.
        self.lease_s = lease_s if lease_s is not None else max(60.0, 2 * batch * timeout_s)
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._wake = threading.Event()

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` earlier failures, ±20 % jitter."""
        base = min(self.backoff_max_s, self.backoff_min_s * 2.0 ** min(attempts, 40))
        return base * self.rng.uniform(0.8, 1.2)

    def deliver_due(self, now: datetime) -> int:
        """One pass: claim what is due at ``now``, POST each, mark it; how many were claimed."""
        claimed = self.queue.claim(now, limit=self.batch, lease_s=self.lease_s)
        down: set[int] = set()
        for i, d in enumerate(claimed):
            if d.webhook_id in down:
                continue  # deferred with the failure that marked it down
            outcome = self._send(d)
            if outcome.error is None:
                self.queue.delivered(d.id, now, outcome.status or 0)
                self.counts["delivered"] += 1
                continue
            next_at = self._failed(d, outcome.status, outcome.error, now)
            if outcome.unreachable:
                down.add(d.webhook_id)
                self._defer(d, [c.id for c in claimed[i + 1 :]], now, next_at, outcome.error)
        return len(claimed)

    def _failed(self, d: Delivery, status: int | None, error: str, now: datetime) -> datetime:
        """Retry with backoff (the last try at the deadline), or give up past it; when next."""
        deadline = d.created_at + timedelta(seconds=self.max_age_s)
        next_at = now + timedelta(seconds=self.backoff(d.attempts))
        if now >= deadline:
            self.queue.give_up(d.id, now, status, error)
            self.counts["failed"] += 1
            log.warning(
                "webhook %d: gave up delivery %d (event %d %s) to %s after %d attempts "
                "over %.0f s (max age %.0f s): %s",
                d.webhook_id,
                d.id,
                d.event.id,
                d.event.type,
                safe_url(d.url),
                d.attempts + 1,
                (now - d.created_at).total_seconds(),
                self.max_age_s,
                error,
            )
            return next_at
        next_at = min(next_at, deadline)
        self.queue.retry(d.id, now, status, error, next_at)
        self.counts["retried"] += 1
        log.info(
            "webhook %d: delivery %d to %s failed (attempt %d: %s); next try in %.0f s",
            d.webhook_id,
            d.id,
            safe_url(d.url),
            d.attempts + 1,
            error,
            (next_at - now).total_seconds(),
        )
        return next_at

    def _defer(
        self, d: Delivery, later: list[int], now: datetime, next_at: datetime, error: str
    ) -> None:
        reason = f"gave up: {safe_url(d.url)} unreachable and older than max age ({error})"
        failed, deferred = self.queue.defer_webhook(
            d.webhook_id, later, now, next_at, self.max_age_s, reason
        )
        self.counts["deferred"] += deferred
        if failed:
            self.counts["failed"] += failed
            log.warning(
                "webhook %d: gave up %d deliveries older than %.0f s: %s",
                d.webhook_id,
                failed,
                self.max_age_s,
                reason,
            )

    def _send(self, d: Delivery) -> _Outcome:
        body = json.dumps(
            {"delivery_id": d.id, "webhook_id": d.webhook_id, "event": event_dict(d.event)},
            separators=(",", ":"),
        ).encode()
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Telematics-Event": d.event.type,
            "X-Telematics-Delivery": str(d.id),
            "X-Telematics-Timestamp": str(timestamp),
            "X-Telematics-Signature": sign(d.secret, timestamp, body),
        }
        try:
            with self.client.stream(
                "POST",
                d.url,
                content=body,
                headers=headers,
                timeout=self.timeout_s,
                follow_redirects=False,
            ) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return _Outcome(status, None, False)
                snippet = _snippet(response)
        except httpx.TransportError as exc:  # refused, timeout, reset: the receiver is away
            return _Outcome(None, f"{type(exc).__name__}: {exc}".strip(), True)
        except httpx.HTTPError as exc:  # a URL httpx will not send to
            return _Outcome(None, f"{type(exc).__name__}: {exc}".strip(), False)
        error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return _Outcome(status, error, status in (429, 503))

    def wake(self) -> None:
        """New deliveries are queued: make :meth:`run` pass now instead of at its next poll."""
        self._wake.set()

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Deliver until ``stop`` is set (a background thread); storage errors are retried."""
        while not stop.is_set():
            try:
                claimed = self.deliver_due(datetime.fromtimestamp(self.clock(), UTC))
            except StorageError as exc:
                log.warning("webhook dispatcher: storage error, retrying: %s", exc)
                claimed = 0
            except Exception:
                log.exception("webhook dispatcher: pass failed")
                claimed = 0
            if claimed >= self.batch:
                continue  # a backlog: next pass at once
            self._wake.wait(poll_s)
            self._wake.clear()

    def close(self) -> None:
        if self._own_client:
            self.client.close()


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    """The start of an error body, for last_error; never the whole of a large one."""
    got = b""
    try:
        for chunk in response.iter_bytes():
            got += chunk
            if len(got) >= limit:
                break
    except httpx.HTTPError:
        pass
    text = got[:limit].decode("utf-8", "replace")
    return " ".join(text.split())
