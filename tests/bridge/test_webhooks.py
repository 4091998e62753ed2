"""Webhooks end to end: real SQLite/PostgreSQL queue, real HTTP receivers, moved clocks.

The receiver is a real ThreadingHTTPServer that checks every signature with
``verify`` against its own clock; the dispatcher's scheduling clock (``now``)
is moved forward by the tests instead of sleeping through backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.messages import Batch, Event
from cloud_bridge.db import Database
from cloud_bridge.rows import event_dict, iso
from cloud_bridge.storage import BridgeStore
from cloud_bridge.webhooks import USER_AGENT, Dispatcher, WebhookQueue, safe_url, sign, verify
from simulators.broker import free_port
from simulators.postgres import PostgresServer
from tests.support.waiting import until

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
EPOCH = "5f0c6a4e9d2b4c1e8a7f3b2d1c0e9f8a"
SECRET_A = "s3cret-for-fleet-backend-a"
SECRET_B = "s3cret-for-fleet-backend-b"
TYPES = ("geofence_enter", "impact", "dtc", "harsh_braking")
SUBSCRIBED = ["geofence_enter", "impact", "dtc"]


# -- a real receiver -----------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    valid: bool  # verify() with the receiver's own clock

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def delivery(self) -> int:
        return int(self.headers["X-Telematics-Delivery"])


class Receiver:
    """A fleet backend's webhook endpoint on 127.0.0.1:``port``; stop/start keeps the port.

    ``script`` answers requests in turn (a status code, or "hang" to never
    answer until stopped); when empty, 200.
    """

    def __init__(self, secret: str, port: int | None = None) -> None:
        self.secret = secret
        self.port = port or free_port()
        self.requests: list[Received] = []
        self.script: deque[int | str] = deque()
        self.location = ""
        self.latency = threading.Event()  # never set: wait(delay_s) is simulated work
        self.delay_s = 0.0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hooks/fleet") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                ok = verify(
                    receiver.secret,
                    headers.get("X-Telematics-Timestamp"),
                    headers.get("X-Telematics-Signature"),
                    body,
                    datetime.now(UTC),
                )
                with receiver._lock:
                    receiver.requests.append(Received(self.path, headers, body, ok))
                    action = receiver.script.popleft() if receiver.script else 200
                if receiver.delay_s:
                    receiver.latency.wait(receiver.delay_s)
                if action == "hang":
                    receiver.release.wait(10)
                    return
                status = int(action)
                reply = b"ok" if status < 300 else b"boom   from\nreceiver"
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", receiver.location)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def receiver(made: list[Receiver], secret: str, start: bool = True) -> Receiver:
    r = Receiver(secret)
    made.append(r)
    return r.start() if start else r


# -- a real store ----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BridgeStore]:
    s = BridgeStore(tmp_path / "b.sqlite")
    yield s
    s.close()


@pytest.fixture
def dispatchers() -> Iterator[list[Dispatcher]]:
    made: list[Dispatcher] = []
    yield made
    for d in made:
        d.close()


def dispatcher(made: list[Dispatcher], queue: WebhookQueue, **kw: Any) -> Dispatcher:
    d = Dispatcher(queue, rng=random.Random(7), **kw)
    made.append(d)
    return d


def batch(device: str, seqs: range, first_type: int = 0) -> Batch:
    return Batch.model_validate(
        {
            "device": device,
            "epoch": EPOCH,
            "records": [
                {
                    "kind": "event",
                    "seq": seq,
                    "ts": iso(T0 - timedelta(minutes=5) + timedelta(seconds=seq)),
                    "type": TYPES[(seq + first_type) % len(TYPES)],
                    "lat": 52.37 + seq / 1000,
                    "lon": 4.89,
                    "data": {"zone": "depot-north", "n": seq, "note": "café"},
                }
                for seq in seqs
            ],
        }
    )


def drain(d: Dispatcher, now: datetime) -> None:
    """Passes at ``now`` until nothing more is due (a backlog takes several)."""
    for _ in range(50):
        if d.deliver_due(now) == 0:
            return
    raise AssertionError("deliver_due never ran dry")


def deliveries(db: Database, webhook_id: int) -> list[dict[str, Any]]:
    rows = db.query(
        "SELECT d.id, e.device, e.epoch, e.seq, e.type, d.attempts, d.next_attempt_at, "
        "d.delivered_at, d.failed_at, d.last_status, d.last_error "
        "FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.webhook_id = ? ORDER BY d.id",
        (webhook_id,),
    )
    keys = ["id", "device", "epoch", "seq", "type", "attempts", "next"]
    keys += ["delivered", "failed", "status", "error"]
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    for row in out:
        row["next"] = db.from_ts(row["next"])
    return out


# -- signing ----------------------------------------------------------------------------


def test_sign_is_hmac_sha256_over_timestamp_dot_body_and_verify_rejects_what_it_should() -> None:
    body = b'{"delivery_id":7,"webhook_id":1,"event":{}}'
    ts = 1_772_438_400
    expected = hmac.new(SECRET_A.encode(), b"1772438400." + body, hashlib.sha256).hexdigest()
    signature = sign(SECRET_A, ts, body)
    assert signature == "sha256=" + expected

    assert verify(SECRET_A, str(ts), signature, body, now=ts + 299)
    assert verify(SECRET_A, str(ts), signature, body, now=datetime.fromtimestamp(ts - 10, UTC))
    assert not verify(SECRET_B, str(ts), signature, body, now=ts)  # another secret
    assert not verify(SECRET_A, str(ts), signature, body + b" ", now=ts)  # body changed
    assert not verify(SECRET_A, str(ts + 1), signature, body, now=ts)  # timestamp changed
    assert not verify(SECRET_A, str(ts), signature, body, now=ts + 301)  # replayed late
    assert not verify(SECRET_A, str(ts), signature, body, now=ts - 301)  # from the future
    assert not verify(SECRET_A, str(ts), signature, body, now=ts + 60, tolerance_s=30)
    assert not verify(SECRET_A, "yesterday", signature, body, now=ts)
    assert not verify(SECRET_A, None, signature, body, now=ts)
    assert not verify(SECRET_A, str(ts), None, body, now=ts)
    assert not verify(SECRET_A, str(ts), "sha256=é" + expected[2:], body, now=ts)
    assert not verify(SECRET_A, str(ts), expected, body, now=ts)  # without the prefix


def test_safe_url_drops_credentials_and_query() -> None:
    assert safe_url("https://u:pw@hooks.example.com:8443/a/b?token=x#f") == (
        "https://hooks.example.com:8443/a/b"
    )
    assert safe_url("http://[::1]:9000/h") == "http://[::1]:9000/h"


# -- registrations ----------------------------------------------------------------------


def test_add_validates_generates_secrets_and_never_lists_them(store: BridgeStore) -> None:
    queue = WebhookQueue(store.db)
    hook, secret = queue.add("https://hooks.example.com/fleet", ["impact", "dtc", "impact"])
    other, secret2 = queue.add("http://10.0.0.5:8080/h", ["*"], SECRET_B, now=T0)
    assert secret.startswith("whsec_") and len(secret) >= 40 and secret != secret2
    assert secret2 == SECRET_B

    listed = queue.list()
    assert [h["id"] for h in listed] == [hook, other]
    assert listed[0]["event_types"] == ["impact", "dtc"]
    assert listed[1] == {
        "id": other,
        "url": "http://10.0.0.5:8080/h",
        "event_types": ["*"],
        "created_at": T0,
        "active": True,
        "pending": 0,
        "delivered": 0,
        "failed": 0,
    }
    assert secret not in repr(listed) and SECRET_B not in repr(listed)

    bad: list[tuple[str, list[str], str | None, str]] = [
        ("ftp://hooks.example.com/x", ["impact"], None, "http:// or https://"),
        ("hooks.example.com/x", ["impact"], None, "http:// or https://"),
        ("http://", ["impact"], None, "with a host"),
        ("http://exa mple.com/x", ["impact"], None, "whitespace"),
        ("http://example.com:99999/x", ["impact"], None, "not a valid URL"),
        ("https://example.com/x", [], None, "non-empty list"),
        ("https://example.com/x", ["Impact"], None, "'Impact' is invalid"),
        ("https://example.com/x", ["a" * 65], None, "is invalid"),
        ("https://example.com/x", [""], None, "is invalid"),
        ("https://example.com/x", ["impact"], "short", "at least 16"),
    ]
    for url, types, sec, message in bad:
        with pytest.raises(ValueError, match=message):
            queue.add(url, types, sec)
    with pytest.raises(ValueError, match="non-empty list"):
        queue.add("https://example.com/x", "impact")  # a str is not a list of types
    assert len(queue.list()) == 2


def test_delete_removes_the_webhook_and_its_queued_deliveries(store: BridgeStore) -> None:
    queue = WebhookQueue(store.db)
    hook, _ = queue.add("https://hooks.example.com/fleet", ["*"], SECRET_A)
    store.store_batch("events", batch("van-007", range(1, 5)), T0)
    assert queue.stats(T0)["pending"] == 4
    assert queue.delete(hook)
    assert not queue.delete(hook)
    assert queue.list() == []
    assert queue.stats(T0)["pending"] == 0
    assert queue.claim(T0) == []


# -- the acceptance case: receiver down for a stretch --------------------------------------


def test_receiver_down_for_a_stretch_gets_every_webhook_once_after_it_returns(
    store: BridgeStore, receivers: list[Receiver], dispatchers: list[Dispatcher]
) -> None:
    queue = WebhookQueue(store.db)
    rx_a = receiver(receivers, SECRET_A)  # subscribes to three types; goes down
    rx_b = receiver(receivers, SECRET_B)  # subscribes to everything; stays up
    hook_a, _ = queue.add(rx_a.url(), SUBSCRIBED, SECRET_A, now=T0)
    hook_b, _ = queue.add(rx_b.url("/all"), ["*"], SECRET_B, now=T0)
    d = dispatcher(dispatchers, queue, timeout_s=2)

    store.store_batch("events", batch("van-000", range(1, 2)), T0)  # an impact, while up
    drain(d, T0)
    assert [len(rx_a.requests), len(rx_b.requests)] == [1, 1]
    rx_a.stop()

    batches = [batch("van-001", range(1, 11)), batch("van-002", range(1, 11), first_type=1)]
    for b in batches:
        assert len(store.store_batch("events", b, T0 + timedelta(seconds=1)).new_events) == 10
    sent = [
        (b.device, b.epoch, r.seq, r.type)
        for b in batches
        for r in b.records
        if isinstance(r, Event)
    ]
    wanted = {(dev, ep, seq) for dev, ep, seq, t in sent if t in SUBSCRIBED}
    assert len(wanted) == 15 and {t for *_, t in sent} == set(TYPES)

    # Down: each step doubles (±20 %); the backlog waits with the one delivery tried.
    now = T0 + timedelta(seconds=1)
    drain(d, now)
    assert len(rx_b.requests) == 21  # the other receiver is not held up
    steps = []
    for step in range(3):
        rows = [r for r in deliveries(store.db, hook_a) if r["delivered"] is None]
        assert len(rows) == 15
        assert sum(r["attempts"] for r in rows) == step + 1
        assert {r["next"] for r in rows} == {rows[0]["next"]}  # the whole backlog waits
        assert all(r["error"].startswith("ConnectError") for r in rows if r["attempts"])
        wait = (rows[0]["next"] - now).total_seconds()
        assert 0.8 * 2 * 2**step <= wait <= 1.2 * 2 * 2**step, (step, wait)
        steps.append(wait)
        assert d.deliver_due(rows[0]["next"] - timedelta(milliseconds=1)) == 0  # not yet due
        now = rows[0]["next"]
        drain(d, now)
    assert steps == sorted(steps)
    assert d.counts["retried"] == 4 and d.counts["deferred"] >= 14  # 4 tries, 4 HTTP requests
    assert queue.stats(now)["pending"] == 15

    rx_a.start()  # back, on the same port
    assert rx_a.url().endswith(f":{rx_a.port}/hooks/fleet")
    pending = deliveries(store.db, hook_a)[-1]["next"]
    drain(d, pending + timedelta(seconds=1))

    got = rx_a.requests[1:]
    assert len(got) == 15
    assert all(r.valid for r in got)
    ids = [r.delivery for r in got]
    assert len(set(ids)) == 15 == len(ids)  # each once
    assert set(ids) == {r["id"] for r in deliveries(store.db, hook_a)[1:]}
    events = {e.id: e for e in store.events(limit=100)}
    seen = set()
    for r in got:
        body = r.json
        assert set(body) == {"delivery_id", "webhook_id", "event"}
        assert body["delivery_id"] == r.delivery and body["webhook_id"] == hook_a
        assert body["event"] == event_dict(events[body["event"]["id"]])
        assert body["event"]["type"] in SUBSCRIBED
        assert r.headers["X-Telematics-Event"] == body["event"]["type"]
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["User-Agent"] == USER_AGENT
        assert r.path == "/hooks/fleet"
        assert r.body == json.dumps(body, separators=(",", ":")).encode()  # compact
        seen.add((body["event"]["device"], body["event"]["epoch"], body["event"]["seq"]))
    assert seen == wanted
    assert all(r.valid for r in rx_b.requests)
    assert {r.json["event"]["type"] for r in rx_b.requests} == set(TYPES)
    assert {r.json["webhook_id"] for r in rx_b.requests} == {hook_b}

    stats = queue.stats(now)
    assert stats["pending"] == 0 and stats["failed"] == 0 and stats["delivered"] == 16 + 21
    assert stats["oldest_pending_age_s"] == 0.0
    assert stats["attempts"] == 16 + 21 + 4

    # The broker redelivers the same batches: nothing new is queued or sent.
    total = store.db.scalar("SELECT COUNT(*) FROM webhook_deliveries")
    for b in batches:
        result = store.store_batch("events", b, now)
        assert (result.stored, result.duplicates, result.new_events) == (0, 10, [])
    assert store.db.scalar("SELECT COUNT(*) FROM webhook_deliveries") == total
    drain(d, now + timedelta(days=1))
    assert len(rx_a.requests) == 16 and len(rx_b.requests) == 21
    assert d.counts["delivered"] == 37 and d.counts["failed"] == 0


# -- other failures ------------------------------------------------------------------------


def test_500_is_retried_alone_and_then_delivered(
    store: BridgeStore, receivers: list[Receiver], dispatchers: list[Dispatcher]
) -> None:
    queue = WebhookQueue(store.db)
    rx = receiver(receivers, SECRET_A)
    hook, _ = queue.add(rx.url(), ["*"], SECRET_A)
    d = dispatcher(dispatchers, queue)
    store.store_batch("events", batch("van-003", range(1, 3)), T0)
    rx.script.extend([500, 200])

    assert d.deliver_due(T0) == 2
    first, second = deliveries(store.db, hook)
    assert (first["status"], first["error"], first["delivered"]) == (
        500,
        "HTTP 500: boom from receiver",
        None,
    )
    assert second["delivered"] is not None  # a 500 is about one request, not the receiver
    assert d.deliver_due(T0 + timedelta(seconds=1)) == 0  # backoff ≥ 1.6 s
    assert d.deliver_due(T0 + timedelta(seconds=3)) == 1
    first = deliveries(store.db, hook)[0]
    assert first["delivered"] is not None and first["status"] == 200 and first["error"] is None
    assert first["attempts"] == 2
    assert [r.delivery for r in rx.requests] == [first["id"], second["id"], first["id"]]
    assert all(r.valid for r in rx.requests)
    assert d.counts == {"delivered": 2, "retried": 1}


def test_a_timeout_is_retried_with_the_same_delivery_id(
    store: BridgeStore, receivers: list[Receiver], dispatchers: list[Dispatcher]
) -> None:
    queue = WebhookQueue(store.db)
    rx = receiver(receivers, SECRET_A)
    hook, _ = queue.add(rx.url(), ["impact"], SECRET_A)
    d = dispatcher(dispatchers, queue, timeout_s=0.3)
    store.store_batch("events", batch("van-004", range(1, 2)), T0)
    rx.script.append("hang")

    d.deliver_due(T0)
    (row,) = deliveries(store.db, hook)
    assert row["error"].startswith("ReadTimeout") and row["status"] is None
    assert row["delivered"] is None and row["attempts"] == 1
    d.deliver_due(T0 + timedelta(seconds=3))
    (row,) = deliveries(store.db, hook)
    assert row["delivered"] is not None and row["attempts"] == 2
    assert [r.delivery for r in rx.requests] == [row["id"], row["id"]]  # the idempotency key
    assert all(r.valid for r in rx.requests)


def test_redirects_are_not_followed(
    store: BridgeStore, receivers: list[Receiver], dispatchers: list[Dispatcher]
) -> None:
    queue = WebhookQueue(store.db)
    rx = receiver(receivers, SECRET_A)
    elsewhere = receiver(receivers, SECRET_A)
    hook, _ = queue.add(rx.url(), ["*"], SECRET_A)
    d = dispatcher(dispatchers, queue)
    store.store_batch("events", batch("van-005", range(1, 2)), T0)
    rx.script.append(302)
    rx.location = elsewhere.url("/stolen")

    d.deliver_due(T0)
    (row,) = deliveries(store.db, hook)
    assert row["status"] == 302 and "redirects are not followed" in row["error"]
    assert elsewhere.requests == [] and len(rx.requests) == 1


def test_gives_up_after_max_age_logs_once_without_secrets(
    store: BridgeStore,
    receivers: list[Receiver],
    dispatchers: list[Dispatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = WebhookQueue(store.db)
    down = receiver(receivers, SECRET_A, start=False)
    url = f"http://ops:hunter2hunter2@127.0.0.1:{down.port}/hook?token=tok-abc"
    hook, _ = queue.add(url, ["*"], SECRET_A)
    d = dispatcher(dispatchers, queue, max_age_s=3600)
    store.store_batch("events", batch("van-006", range(1, 3)), T0)
    caplog.set_level(logging.INFO, logger="cloud_bridge.webhooks")

    drain(d, T0)
    assert d.counts == {"retried": 1, "deferred": 1}
    drain(d, T0 + timedelta(seconds=3599))
    assert d.counts["failed"] == 0
    drain(d, T0 + timedelta(seconds=3601))
    assert d.counts["failed"] == 2  # the one tried, and the one waiting behind it
    rows = deliveries(store.db, hook)
    assert all(r["failed"] is not None and r["delivered"] is None for r in rows)
    assert "ConnectError" in rows[0]["error"] and "older than max age" in rows[1]["error"]
    stats = queue.stats(T0 + timedelta(days=1))
    assert (stats["pending"], stats["failed"], stats["oldest_pending_age_s"]) == (0, 2, 0.0)

    attempts = stats["attempts"]
    for days in (1, 2, 5):  # not retried
        assert d.deliver_due(T0 + timedelta(days=days)) == 0
    assert queue.stats(T0)["attempts"] == attempts

    gave_up = [r for r in caplog.records if "gave up" in r.getMessage()]
    assert len(gave_up) == 2  # once per decision, each with the reason
    text = caplog.text
    assert f"http://127.0.0.1:{down.port}/hook" in text
    for leaked in ("hunter2", "tok-abc", SECRET_A):
        assert leaked not in text


# -- the background loop ----------------------------------------------------------------------


def test_run_delivers_when_woken_and_stops(
    tmp_path: Path, receivers: list[Receiver], dispatchers: list[Dispatcher]
) -> None:
    store = BridgeStore(tmp_path / "b.sqlite")
    sender_db = Database(str(tmp_path / "b.sqlite"))  # the sender's own handle
    try:
        rx = receiver(receivers, SECRET_A)
        WebhookQueue(store.db).add(rx.url(), ["dtc"], SECRET_A)
        d = dispatcher(dispatchers, WebhookQueue(sender_db))
        stop = threading.Event()
        thread = threading.Thread(target=d.run, args=(stop,), kwargs={"poll_s": 60})
        thread.start()
        try:
            store.store_batch("events", batch("van-008", range(1, 5)), datetime.now(UTC))
            d.wake()
            until(lambda: len(rx.requests) == 1, "the dtc webhook after wake()", 10)
            assert rx.requests[0].valid and rx.requests[0].json["event"]["type"] == "dtc"
        finally:
            stop.set()
            d.wake()
            thread.join(10)
        assert not thread.is_alive()
        until(lambda: d.counts["delivered"] == 1, "the delivery marked", 5)
    finally:
        sender_db.close()
        store.close()


# -- several bridge workers on PostgreSQL --------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("pg")) as server:
        yield server


def test_two_dispatchers_on_postgres_claim_disjoint_sets(
    postgres: PostgresServer, receivers: list[Receiver], dispatchers: list[Dispatcher]
) -> None:
    dsn = postgres.create_database("webhooks_two_workers")
    store = BridgeStore(dsn)
    workers = [Database(dsn), Database(dsn)]
    try:
        rx = receiver(receivers, SECRET_A)
        hook, _ = WebhookQueue(store.db).add(rx.url(), ["*"], SECRET_A, now=T0)
        for n in range(4):
            store.store_batch("events", batch(f"van-1{n}", range(1, 11)), T0)
        q1, q2 = WebhookQueue(workers[0]), WebhookQueue(workers[1])

        # Leases: what one worker holds, the other does not get, until the lease ends.
        c1, c2 = q1.claim(T0, limit=15), q2.claim(T0, limit=15)
        assert len(c1) == len(c2) == 15
        assert not {c.id for c in c1} & {c.id for c in c2}
        assert len(q1.claim(T0, limit=50)) == 10
        assert q2.claim(T0 + timedelta(seconds=59), limit=50) == []
        assert c1[0].secret == SECRET_A and SECRET_A not in repr(c1[0])
        assert c1[0].event.device == "van-10" and c1[0].event.data["note"] == "café"

        # Both send at once, after the leases: no delivery is sent twice.
        rx.delay_s = 0.02
        now = T0 + timedelta(seconds=120)
        d1 = dispatcher(dispatchers, q1, batch=5)
        d2 = dispatcher(dispatchers, q2, batch=5)
        start = threading.Barrier(2)

        def work(d: Dispatcher) -> None:
            start.wait(10)
            drain(d, now)

        threads = [threading.Thread(target=work, args=(d,)) for d in (d1, d2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        ids = [r.delivery for r in rx.requests]
        assert len(ids) == 40 == len(set(ids))
        assert set(ids) == {r["id"] for r in deliveries(store.db, hook)}
        assert all(r.valid for r in rx.requests)
        assert d1.counts["delivered"] > 0 and d2.counts["delivered"] > 0
        assert d1.counts["delivered"] + d2.counts["delivered"] == 40
        stats = q1.stats(now)
        assert (stats["pending"], stats["delivered"], stats["attempts"]) == (0, 40, 40)
        assert q1.list()[0]["delivered"] == 40
    finally:
        for db in workers:
            db.close()
        store.close()


def test_503_holds_the_receivers_backlog_until_the_next_step(
    store: BridgeStore, receivers: list[Receiver], dispatchers: list[Dispatcher]
) -> None:
    queue = WebhookQueue(store.db)
    rx = receiver(receivers, SECRET_A)
    queue.add(rx.url(), ["*"], SECRET_A)
    d = dispatcher(dispatchers, queue)
    store.store_batch("events", batch("van-009", range(1, 4)), T0)
    rx.script.append(503)  # "back off": the other two are not sent into it

    assert d.deliver_due(T0) == 3
    assert len(rx.requests) == 1 and d.counts == {"retried": 1, "deferred": 2}
    assert d.deliver_due(T0 + timedelta(seconds=1)) == 0
    drain(d, T0 + timedelta(seconds=3))
    assert d.counts["delivered"] == 3 and len({r.delivery for r in rx.requests}) == 3
