"""MQTT uplink: moves committed outbox rows to the broker, QoS 1, nothing lost.

paho-mqtt 2.x does the protocol.  This module adds what a vehicle needs
around it:

* its own reconnect loop with exponential backoff *and jitter* (paho's
  built-in one has none, and a fleet reconnecting in lock-step after a broker
  restart is a thundering herd);
* a bounded in-flight window fed from the outbox, oldest first, the
  ``events`` stream before ``telemetry``; rows leave the outbox only on a
  successful PUBACK (see agent.buffer.outbox);
* cellular thrift: routine telemetry is held until ``telemetry_hold_s`` old
  (or a full batch) and goes in one ``c1`` payload (agent.compact); events,
  requested positions and impacts go at once, and take held telemetry along
  (the radio is awake anyway);
* a retained birth on ``status`` and a retained last-will, TLS and
  per-device credentials when configured.

Threads: paho's network loop runs in one thread owned here; the outbox and
everything else live on the asyncio loop.  paho calls back on its thread and
the callbacks hop to the loop with ``call_soon_threadsafe``; ``publish`` is
called from the loop (paho's publish is thread-safe and wakes its select).
Within one process paho itself re-sends unacknowledged QoS 1 publishes after
a reconnect, so the in-flight map survives reconnects; after a restart the
outbox re-sends them and the bridge drops the duplicates by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import compact
from agent.backoff import Backoff
from agent.buffer.outbox import Outbox
from agent.buffer.send_order import SendOrder
from agent.clock import Clock
from agent.config import MqttConfig
from agent.messages import MAX_PAYLOAD_BYTES, STREAMS, Stream, batch_json, topic, with_seq
from agent.mqtt_client import mqtt_client

log = logging.getLogger(__name__)

#: A connection that lasted this long resets the reconnect backoff.
STABLE_LINK_S = 10.0


@dataclass(slots=True)
class _InFlight:
    stream: Stream
    seqs: list[int]
    since: float
    lane: str = "oldest"


@dataclass(slots=True)
class UplinkStats:
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    publishes: int = 0
    acked_records: int = 0
    failed_acks: int = 0
    last_error: str | None = None
    connected_since: float | None = None
    down_since: float | None = None  # monotonic; from the start until the first connect
    last_ack: float | None = None  # monotonic time of the last PUBACK of records
    last_acked_seq: int | None = None  # highest seq that PUBACK carried
    extra: dict[str, Any] = field(default_factory=dict)


class Uplink:
    """Owns the MQTT session; ``run()`` until cancelled; ``wake()`` on new data."""

    def __init__(
        self,
        cfg: MqttConfig,
        device: str,
        outbox: Outbox,
        clock: Clock,
        *,
        birth: Callable[[], str],
        will: Callable[[], str],
        rng: random.Random | None = None,
        on_downlink: Callable[[str, bytes], None] | None = None,
        ack_timeout_s: float = 60.0,
        tick_s: float = 1.0,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.outbox = outbox
        self.clock = clock
        self._birth = birth
        self._will = will
        self._on_downlink = on_downlink
        rng = rng or random.Random()
        # One backoff per thread: reconnects (network thread), rejections (loop).
        self._reconnect = Backoff(cfg.backoff_min_s, cfg.backoff_max_s, jitter=0.5, rng=rng)
        self._reject = Backoff(cfg.backoff_min_s, cfg.backoff_max_s, jitter=0.5, rng=rng)
        self._ack_timeout_s = ack_timeout_s
        self._tick_s = tick_s
        self._mono = mono  # the telemetry hold's clock (a bench replays a drive at speed)
        self.stats = UplinkStats(down_since=time.monotonic())
        self._inflight: dict[int, _InFlight] = {}
        self._order = {s: SendOrder(cfg.live_lane_after) for s in STREAMS}
        self._status_at = 0.0
        self._hold_until = 0.0  # after a broker rejection, wait before re-sending
        self._held_since: float | None = None  # routine telemetry waiting for a fuller batch
        self._flush = False  # send held telemetry at the next fill
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._make_client()
        # MQTT 5: a content type on every publish (3.1.1: the bridge tells c1
        # from JSON by its first byte).
        self._json = self._content_type("application/json")
        self._batch_type = self._content_type(
            compact.CONTENT_TYPE if cfg.encoding == "c1" else "application/json"
        )

    def _content_type(self, value: str) -> Properties | None:
        if self.cfg.protocol != "5":
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = value
        return props

    # -- paho client -------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt_client(cfg, self.device)
        client.max_inflight_messages_set(cfg.inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # Our network thread runs client.loop() itself (no loop_start), so paho
        # thinks nobody loops and would write a publish from the asyncio thread
        # straight onto the socket while the network thread uses it: over TLS
        # that corrupts the stream ("bad record mac", a reconnect, re-sends).
        # With this hook set paho only queues the packet and wakes the loop.
        client.on_socket_register_write = lambda *_: None
        return client

    def _topic(self, name: str) -> str:
        return topic(self.cfg.topic_prefix, self.device, name)

    def _network_thread(self) -> None:
        """Connect, run paho's loop until the link drops, back off, repeat."""
        while not self._stop.is_set():
            try:
                # A fresh will for each connect: its ts and last_seq are then
                # those of this connection, not of the agent's start.
                self._client.will_set(self._topic("status"), self._will(), qos=1, retain=True)
                if self.cfg.protocol == "5":
                    # The broker keeps our subscriptions and queues commands
                    # while we are offline (their own expiry drops stale ones);
                    # what we publish is kept by the outbox, not the session.
                    expiry = self.cfg.session_expiry_s
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = expiry
                    self._client.connect(
                        self.cfg.host,
                        self.cfg.port,
                        self.cfg.keepalive_s,
                        clean_start=expiry == 0,
                        properties=props,
                    )
                else:
                    self._client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                up_since: float | None = None
                while not self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    rc = self._client.loop(timeout=0.5)
                    if up_since is None and self._client.is_connected():
                        up_since = time.monotonic()
                if up_since is not None and time.monotonic() - up_since >= STABLE_LINK_S:
                    # Reset only after a link that held: two devices sharing a
                    # client id knock each other off at once, and must back off.
                    self._reconnect.reset()
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._note_error(f"connect to {self.cfg.host}:{self.cfg.port} failed: {exc}")
            if self._stop.is_set():
                break
            self._stop.wait(self._reconnect.next())
        try:
            if self._client.is_connected():
                # A clean disconnect suppresses the will, so say goodbye ourselves.
                info = self._client.publish(self._topic("status"), self._will(), qos=1, retain=True)
                deadline = time.monotonic() + 2.0
                while not info.is_published() and time.monotonic() < deadline:
                    self._client.loop(timeout=0.1)
            self._client.disconnect()
            self._client.loop(timeout=0.2)
        except (OSError, RuntimeError, ValueError):
            pass

    def _note_error(self, text: str) -> None:
        if text != self.stats.last_error:
            log.warning("%s", text)
        self.stats.last_error = text

    # -- callbacks (paho's thread) ------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self._note_error(f"broker refused connection: {reason}")
            return
        if self._on_downlink is not None:
            # Clean start drops subscriptions, so subscribe on every connect;
            # the retained config arrives right after, even if it was pushed
            # while the device was offline.
            client.subscribe([(self._topic("config"), 1), (self._topic("cmd"), 1)])
        self._call(self._connected)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        self._call(self._disconnected, str(reason))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self._call(self._acked, mid, reason.is_failure, str(reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._downlink, msg.topic, bytes(msg.payload))

    # -- loop side ------------------------------------------------------------

    def _downlink(self, topic_name: str, payload: bytes) -> None:
        name = topic_name.removeprefix(self._topic(""))
        if self._on_downlink is not None and name in ("config", "cmd"):
            self._on_downlink(name, payload)

    def publish_result(self, payload: str) -> mqtt.MQTTMessageInfo:
        """Answer on ``cmd/result`` (QoS 1; paho holds it across a reconnect)."""
        return self._client.publish(
            self._topic("cmd/result"), payload, qos=1, properties=self._json
        )

    def _publish_status(self) -> None:
        # The birth reads agent state (outbox, sources), so it is built here on
        # the loop, never on paho's thread.
        self._client.publish(self._topic("status"), self._birth(), qos=1, retain=True)
        self._status_at = time.monotonic()

    def _connected(self) -> None:
        self._publish_status()
        log.info("connected to %s:%d", self.cfg.host, self.cfg.port)
        for stream, order in self._order.items():
            waiting, newest = self.outbox.waiting(stream, order.cursor)
            order.link_up(newest, waiting)
            if order.draining:
                log.info("%s: %d records waiting; newest data gets a live lane", stream, waiting)
        self.stats.connected = True
        self.stats.connects += 1
        self.stats.connected_since = time.monotonic()
        self.stats.down_since = None
        self.stats.last_error = None
        self._wake.set()

    def _disconnected(self, reason: str) -> None:
        if self.stats.connected:
            log.warning("disconnected: %s", reason)
            self.stats.disconnects += 1
            self.stats.down_since = time.monotonic()
        self.stats.connected = False
        self.stats.connected_since = None

    def _acked(self, mid: int, failed: bool, reason: str) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return  # birth/status publish, or a re-send acked twice
        if failed:
            # The broker refused it (not authorised, quota, too large): keep the
            # rows and rewind so they are tried again after the backoff.
            self.stats.failed_acks += 1
            self._note_error(f"broker rejected publish on {entry.stream}: {reason}")
            self._order[entry.stream].rewind(entry.seqs[0], entry.lane)
            self._hold_until = time.monotonic() + self._reject.next()
        else:
            self._reject.reset()
            self.outbox.ack(entry.seqs)
            self.stats.acked_records += len(entry.seqs)
            self.stats.last_ack = time.monotonic()
            self.stats.last_acked_seq = max(entry.seqs)
        self._wake.set()

    def wake(self) -> None:
        """New rows were committed: look for something to send."""
        self._wake.set()

    def flush(self) -> None:
        """Send held telemetry now (a requested position, a ``flush`` command)."""
        self._flush = True
        self._wake.set()

    def _hold(self, stream: Stream, lane: str, rows: int) -> bool:
        """True to keep a part batch of routine telemetry back for now."""
        if stream != "telemetry" or lane == "priority" or rows >= self.cfg.batch_max:
            return False
        now = self._mono()
        if self._held_since is None:
            self._held_since = now
        return not self._flush and now - self._held_since < self.cfg.telemetry_hold_s

    def _fill_window(self) -> None:
        """Publish while the window has room: events first, then telemetry (see SendOrder)."""
        published = self.stats.publishes
        for stream in ("events", "telemetry"):
            if stream == "telemetry" and self.stats.publishes > published:
                self._flush = True  # events just went: held telemetry rides along
            order = self._order[stream]
            while len(self._inflight) < self.cfg.inflight:
                rows: list[tuple[int, str]] = []
                for lane, after, up_to in order.lanes():
                    rows = self.outbox.next_batch(
                        stream,
                        after,
                        self.cfg.batch_max,
                        MAX_PAYLOAD_BYTES - 1024,
                        up_to,
                        priority=lane == "priority",
                    )
                    if rows:
                        break
                    order.exhausted(lane)
                if not rows:
                    if stream == "telemetry":
                        self._flush, self._held_since = False, None
                    break
                if self._hold(stream, lane, len(rows)) or not self._publish(stream, rows, lane):
                    break
                order.sent(lane, rows[-1][0])
                if stream == "telemetry" and lane != "priority":
                    self._held_since = None

    def _publish(self, stream: Stream, rows: list[tuple[int, str]], lane: str) -> bool:
        """Hand one batch to paho; False when paho did not keep it (try again later)."""
        sent = self.clock.now()
        payload: str | bytes
        if self.cfg.encoding == "c1":
            payload = compact.encode(self.device, self.outbox.epoch, sent, rows)
        else:
            payload = batch_json(
                self.device, self.outbox.epoch, sent, [with_seq(body, seq) for seq, body in rows]
            )
        info = self._client.publish(
            self._topic(stream), payload, qos=1, properties=self._batch_type
        )
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Not kept by paho (e.g. message ids exhausted): the rows stay
            # unsent and are offered again on the next wake.
            self._note_error(f"publish not queued: {mqtt.error_string(info.rc)}")
            return False
        # NO_CONN: the link dropped just now; paho keeps it and sends it on reconnect.
        self._inflight[info.mid] = _InFlight(
            stream, [seq for seq, _ in rows], time.monotonic(), lane
        )
        self.stats.publishes += 1
        return True

    def _expire_stuck(self) -> None:
        """Safety net: a publish unacknowledged for long while connected is re-sent."""
        now = time.monotonic()
        since = self.stats.connected_since
        if since is None or now - since < self._ack_timeout_s:
            return
        stuck = [m for m, e in self._inflight.items() if now - e.since > self._ack_timeout_s]
        for mid in stuck:
            entry = self._inflight.pop(mid)
            self._order[entry.stream].rewind(entry.seqs[0], entry.lane)
        if stuck:
            self._note_error(f"{len(stuck)} publishes unacknowledged for {self._ack_timeout_s}s")

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.cfg.protocol == "3.1.1":
            log.warning(
                "MQTT 3.1.1: a broker acknowledges publishes its ACL refused, and the "
                "outbox then deletes them; use protocol 5 unless the broker lacks it"
            )
        thread = threading.Thread(target=self._network_thread, name="mqtt", daemon=True)
        thread.start()
        try:
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a
                # cancel() that lands while the wake completes (a PUBACK as the
                # agent stops), and the agent never stopped (seen in CI).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._tick_s):
                        await self._wake.wait()
                self._wake.clear()
                now = time.monotonic()
                if self.stats.connected and now - self._status_at >= self.cfg.status_interval_s:
                    self._publish_status()
                if self.stats.connected and now >= self._hold_until:
                    self._expire_stuck()
                    self._fill_window()
        finally:
            self._stop.set()
            await asyncio.to_thread(thread.join, 5.0)

    def status(self) -> dict[str, Any]:
        s = self.stats
        now = time.monotonic()
        return {
            "connected": s.connected,
            "broker": f"{self.cfg.host}:{self.cfg.port}",
            "tls": self.cfg.tls is not None,
            "connects": s.connects,
            "reconnects": max(0, s.connects - 1),
            "disconnects": s.disconnects,
            "down_s": None if s.down_since is None else round(now - s.down_since, 1),
            "publishes": s.publishes,
            "acked_records": s.acked_records,
            "last_ack_s": None if s.last_ack is None else round(now - s.last_ack, 1),
            "last_acked_seq": s.last_acked_seq,
            "failed_acks": s.failed_acks,
            "inflight": len(self._inflight),
            "last_error": s.last_error,
        }
