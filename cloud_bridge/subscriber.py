"""The bridge's MQTT side: subscribe, validate with the shared schema, store.

Every payload is checked before it is stored: size, topic shape, JSON, the
schema (agent.messages, the same classes the agent builds with), and that
the device in the payload is the device in the topic.  A bad payload is
counted and logged with its reason and never stops the bridge.

Delivery: a persistent session (fixed client id, clean session off, QoS 1)
so that messages published while the bridge is down wait at the broker; paho
acknowledges a message only after ``on_message`` returns, so a record is in
the database before the broker forgets it.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from agent.messages import MAX_PAYLOAD_BYTES, Batch, Event, Status, validation_reason
from cloud_bridge.storage import BridgeStore

log = logging.getLogger(__name__)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    host: str = "localhost"
    port: int = 1883
    prefix: str = "fleet"
    client_id: str = "telematics-bridge"
    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class Bridge:
    """Validates and stores what devices publish; ``handle()`` is the pure-ish core."""

    def __init__(self, store: BridgeStore, settings: BridgeSettings) -> None:
        self.store = store
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.fatal: str | None = None  # storage failed: the process must exit

    def handle(self, topic: str, payload: bytes, received_at: float | None = None) -> None:
        """Validate and store one message; count what happened to it."""
        now = time.time() if received_at is None else received_at
        with self._lock:
            try:
                try:
                    self._handle(topic, payload, now)
                except Rejected as rej:
                    self.counts[f"rejected.{rej.reason}"] += 1
                    log.warning(
                        "rejected message on %r: %s: %s", topic[:120], rej.reason, rej.detail
                    )
                    self.store.store_reject(topic, rej.reason, rej.detail, len(payload), now)
            except sqlite3.Error as exc:
                # Returning would let paho acknowledge a message we did not
                # store. Raise instead (no PUBACK) and let the process exit;
                # the broker keeps the message for our persistent session.
                self.fatal = f"storage failed: {exc}"
                log.critical("%s; exiting so the broker redelivers", self.fatal)
                raise

    def _handle(self, topic: str, payload: bytes, now: float) -> None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise Rejected("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != self.settings.prefix:
            raise Rejected("foreign_topic", topic)
        _, device, name = parts
        if name == "status":
            if not payload:
                return  # a retained status being cleared
            status = _validate(Status, payload)
            if status.device != device:
                raise Rejected("device_mismatch", f"topic {device!r}, payload {status.device!r}")
            self.store.store_status(status, now)
            self.counts["status"] += 1
            return
        if name not in ("telemetry", "events"):
            raise Rejected("foreign_topic", topic)
        batch = _validate(Batch, payload)
        if batch.device != device:
            raise Rejected("device_mismatch", f"topic {device!r}, payload {batch.device!r}")
        wrong = [r.seq for r in batch.records if isinstance(r, Event) != (name == "events")]
        if wrong:
            raise Rejected("wrong_stream", f"records {wrong[:5]} do not belong on {name}")
        result = self.store.store_batch(name, batch, now)
        self.counts["stored"] += result.stored
        self.counts["duplicates"] += result.duplicates
        self.counts["batches"] += 1

    # -- MQTT -----------------------------------------------------------------

    def make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.ca is not None:
            client.tls_set(
                ca_certs=str(s.ca),
                certfile=None if s.cert is None else str(s.cert),
                keyfile=None if s.key is None else str(s.key),
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the bridge: %s", reason)
            return
        p = self.settings.prefix
        client.subscribe([(f"{p}/+/telemetry", 1), (f"{p}/+/events", 1), (f"{p}/+/status", 1)])
        log.info("bridge connected to %s:%d", self.settings.host, self.settings.port)
        self.connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        self.connected.clear()
        log.warning("bridge disconnected: %s", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.handle(msg.topic, bytes(msg.payload))


M = TypeVar("M", Batch, Status)


def _validate(model: type[M], payload: bytes) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        kind = "invalid_json" if exc.errors()[0]["type"] == "json_invalid" else "invalid_schema"
        raise Rejected(kind, validation_reason(exc)) from None
