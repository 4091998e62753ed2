"""The bridge's MQTT side: subscribe, validate with the shared schema, store.

Every payload is checked before it is stored: size, topic shape, JSON, the
schema (agent.messages, the same classes the agent builds with), and that
the device in the payload is the device in the topic.  A bad payload is
counted and logged with its reason and never stops the bridge.

Delivery: a persistent session (fixed client id; MQTT 5 with a session
expiry, or 3.1.1 with clean session off; QoS 1) so that messages published
while the bridge is down wait at the broker; paho acknowledges a message only
after ``on_message`` returns, so a record is in the database before the
broker forgets it.

Scale-out: with ``share_group`` set, N bridge processes (each its own client
id) subscribe to ``$share/{group}/fleet/+/telemetry`` and so on, and the
broker hands each message to one of them (MQTT 5 shared subscriptions;
mosquitto, EMQX, HiveMQ and VerneMQ all do this).  A message redelivered to
another worker after a crash is dropped by the database's unique key.
Retained ``status`` is not shared (a broker never sends retained messages to
a shared subscription), so every worker reads it; a status older than the
stored one (by its ``ts``) is ignored, and a retained copy replayed at a
(re)subscribe does not count as the device being seen.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from agent import compact
from agent.messages import (
    MAX_PAYLOAD_BYTES,
    Batch,
    CommandResult,
    Event,
    Status,
    topic,
    validation_reason,
)
from cloud_bridge.db import UnstorableData
from cloud_bridge.storage import BridgeStore, StorageError

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
    protocol: Literal["5", "3.1.1"] = "5"
    share_group: str | None = None  # e.g. "bridge": N workers split the stream
    session_expiry_s: int = 7 * 86400  # MQTT 5: how long the broker queues for us


class Bridge:
    """Validates and stores what devices publish; ``handle()`` is the pure-ish core."""

    def __init__(self, store: BridgeStore, settings: BridgeSettings) -> None:
        self.store = store
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.fatal: str | None = None  # storage failed: the process must exit
        self.on_new_events: Callable[[int], None] | None = None  # e.g. wake the webhooks
        self._client: mqtt.Client | None = None
        self._reject_log: dict[str, tuple[float, int]] = {}  # reason -> (logged at, hidden since)

    def handle(
        self,
        topic: str,
        payload: bytes,
        received_at: float | None = None,
        retained: bool = False,
    ) -> None:
        """Validate and store one message; count what happened to it."""
        now = time.time() if received_at is None else received_at
        with self._lock:
            try:
                rej = self._judge(topic, payload, now, retained)
                if rej is not None:
                    self.counts[f"rejected.{rej.reason}"] += 1
                    self._log_reject(topic, rej, now)
                    self.store.store_reject(topic, rej.reason, rej.detail, len(payload), now)
            except StorageError as exc:
                # Returning would let paho acknowledge a message we did not
                # store. Raise instead (no PUBACK) and let the process exit;
                # the broker keeps the message for our persistent session.
                self.fatal = f"storage failed: {exc}"
                log.critical("%s; exiting so the broker redelivers", self.fatal)
                raise

    def _judge(self, topic: str, payload: bytes, now: float, retained: bool) -> Rejected | None:
        """Store the message, or say why it is rejected; only a storage failure raises."""
        try:
            self._handle(topic, payload, now, retained)
        except Rejected as rej:
            return rej
        except UnstorableData as exc:
            return Rejected("unstorable", str(exc))
        except StorageError:
            raise
        except Exception as exc:  # a bug of ours must not stop the stream
            log.exception("internal error on %r", topic[:120])
            return Rejected("internal_error", f"{type(exc).__name__}: {exc}")
        return None

    def _log_reject(self, topic: str, rej: Rejected, now: float) -> None:
        """Once per reason a minute, with how many more there were: a flood stays readable."""
        last, hidden = self._reject_log.get(rej.reason, (-math.inf, 0))
        if now - last < 60.0:
            self._reject_log[rej.reason] = (last, hidden + 1)
            return
        more = f" ({hidden} more {rej.reason} in the last minute)" if hidden else ""
        log.warning("rejected message on %r: %s: %s%s", topic[:120], rej.reason, rej.detail, more)
        self._reject_log[rej.reason] = (now, 0)

    def _handle(self, topic: str, payload: bytes, now: float, retained: bool = False) -> None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise Rejected("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
        parts = topic.split("/")
        if len(parts) == 4 and parts[3] == "result" and parts[2] == "cmd":
            parts = [parts[0], parts[1], "cmd/result"]
        if len(parts) != 3 or parts[0] != self.settings.prefix:
            raise Rejected("foreign_topic", topic)
        _, device, name = parts
        if name == "cmd/result":
            answer = _validate(CommandResult, payload)
            if answer.device != device:
                raise Rejected("device_mismatch", f"topic {device!r}, payload {answer.device!r}")
            if self.store.store_result(answer, now):
                self.counts["results"] += 1
            else:
                # e.g. a config retained by another tool: the running version is kept.
                self.counts["results_unmatched"] += 1
            return
        if name == "status":
            if not payload:
                return  # a retained status being cleared
            status = _validate(Status, payload)
            if status.device != device:
                raise Rejected("device_mismatch", f"topic {device!r}, payload {status.device!r}")
            self.store.store_status(status, now, retained=retained)
            self.counts["status"] += 1
            return
        if name not in ("telemetry", "events"):
            raise Rejected("foreign_topic", topic)
        batch = _batch(payload)
        if batch.device != device:
            raise Rejected("device_mismatch", f"topic {device!r}, payload {batch.device!r}")
        wrong = [r.seq for r in batch.records if isinstance(r, Event) != (name == "events")]
        if wrong:
            raise Rejected("wrong_stream", f"records {wrong[:5]} do not belong on {name}")
        result = self.store.store_batch(name, batch, now)
        self.counts["stored"] += result.stored
        self.counts["duplicates"] += result.duplicates
        self.counts["batches"] += 1
        if result.new_events and self.on_new_events is not None:
            self.on_new_events(len(result.new_events))

    # -- MQTT -----------------------------------------------------------------

    def make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
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
        self._client = client
        return client

    def connect(self, client: mqtt.Client) -> None:
        """Start connecting (the network thread retries); a persistent session either way."""
        s = self.settings
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            client.connect_async(s.host, s.port, keepalive=30, clean_start=False, properties=props)
        else:
            client.connect_async(s.host, s.port, keepalive=30)

    def publish_downlink(
        self, device: str, name: str, payload: str, retain: bool, expiry_s: float | None = None
    ) -> None:
        """Send ``config`` or ``cmd`` to a device (QoS 1; paho queues it while offline).

        Under MQTT 5 a command carries its time to live as the message expiry,
        so the broker drops it rather than deliver it stale to a van that was
        offline; the device checks the command's own ``expires`` as well.
        """
        if self._client is None:
            raise RuntimeError("no MQTT client: make_client() first")
        props = None
        if self.settings.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = "application/json"
            if expiry_s is not None:
                props.MessageExpiryInterval = max(1, int(expiry_s))
        info = self._client.publish(
            topic(self.settings.prefix, device, name),
            payload,
            qos=1,
            retain=retain,
            properties=props,
        )
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish to {device}/{name} failed: {mqtt.error_string(info.rc)}")

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the bridge: %s", reason)
            return
        p = self.settings.prefix
        share = f"$share/{self.settings.share_group}/" if self.settings.share_group else ""
        client.subscribe(
            [
                (f"{share}{p}/+/telemetry", 1),
                (f"{share}{p}/+/events", 1),
                (f"{share}{p}/+/cmd/result", 1),
                (f"{p}/+/status", 1),
            ]
        )
        log.info("bridge connected to %s:%d", self.settings.host, self.settings.port)
        self.connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        self.connected.clear()
        log.warning("bridge disconnected: %s", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.handle(msg.topic, bytes(msg.payload), retained=bool(msg.retain))


M = TypeVar("M", Batch, Status, CommandResult)


def _validate(model: type[M], payload: bytes) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        kind = "invalid_json" if exc.errors()[0]["type"] == "json_invalid" else "invalid_schema"
        raise Rejected(kind, validation_reason(exc)) from None


def _batch(payload: bytes) -> Batch:
    """A Batch from either encoding: c1 is decoded, then validated like JSON."""
    if not compact.is_compact(payload):
        return _validate(Batch, payload)
    try:
        return compact.parse_batch(payload)
    except compact.CompactError as exc:
        raise Rejected("invalid_compact", str(exc)) from None
    except ValidationError as exc:
        raise Rejected("invalid_schema", validation_reason(exc)) from None
