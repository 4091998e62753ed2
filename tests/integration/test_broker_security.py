"""Acceptance (security): a real mosquitto running deploy/mosquitto/mosquitto.conf and acl.

Certificates are made by the test (tests/support/pki.py); the broker config is
the shipped example with only its paths, port and log destination replaced,
so what is tested is what is deployed.  Clients are real paho clients over
TLS; one is the agent's own Uplink.

"Not received" is never proven by sleeping: after the forbidden message, a
message the receiver may read goes the same way (a "marker"); MQTT delivers
one connection's messages in order, so once the marker is in, the forbidden
one would have been too.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.buffer.outbox import Outbox
from agent.compact import parse_batch
from agent.config import MqttConfig, TlsConfig
from simulators.broker import Mosquitto, free_port, password_file
from tests.support.pki import CertKey, Pki
from tests.support.uplinks import run_uplink
from tests.support.waiting import until
from tests.test_uplink_bridge import position

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
HOST = "127.0.0.1"  # in the server certificate's SAN; the broker listens only here
NOT_AUTHORIZED = 0x87
BRIDGE_TOPICS = [  # what cloud_bridge.subscriber subscribes to, with a share group
    "$share/bridge/fleet/+/telemetry",
    "$share/bridge/fleet/+/events",
    "$share/bridge/fleet/+/cmd/result",
    "fleet/+/status",
]


# -- broker ------------------------------------------------------------------


def render_example(etc: Path, var: Path, port: int, password_port: int | None = None) -> str:
    """deploy/mosquitto/mosquitto.conf with test paths and ports; optionally the password listener."""
    text = (DEPLOY / "mosquitto.conf").read_text()
    if password_port is not None:
        head, marker, alternative = text.partition("# Alternative")
        assert marker, "the example lost its username/password alternative"
        lines = [
            line[1:] if line[:1] == "#" and line[1:2].islower() else line
            for line in alternative.splitlines()
        ]
        text = head + marker + "\n".join(lines) + "\n"
    swaps = {
        "/etc/mosquitto/": f"{etc}/",
        "/var/lib/mosquitto/": f"{var}/",
        "listener 8883\n": f"listener {port} {HOST}\n",
        "user mosquitto\n": f"user {getpass.getuser()}\n",
        "log_dest syslog\n": f"log_dest file {var}/mosquitto.log\nlog_type debug\n",
    }
    if password_port is not None:
        swaps["listener 8884\n"] = f"listener {password_port} {HOST}\n"
    for old, new in swaps.items():
        assert old in text, f"the example config no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


class ExampleBroker(Mosquitto):
    """mosquitto with the shipped example config and ACL, certificates from ``pki``."""

    def __init__(
        self, workdir: Path, pki: Pki, server: CertKey, passwd: Path | None = None
    ) -> None:
        super().__init__(workdir)
        etc = workdir / "etc"
        (etc / "certs").mkdir(parents=True)
        shutil.copy(DEPLOY / "acl", etc / "acl")
        shutil.copy(pki.ca.cert, etc / "certs" / "ca.crt")
        shutil.copy(server.cert, etc / "certs" / "server.crt")
        shutil.copy(server.key, etc / "certs" / "server.key")
        self.password_port: int | None = None
        if passwd is not None:
            shutil.copy(passwd, etc / "passwd")
            self.password_port = free_port()
        self.conf.write_text(render_example(etc, workdir, self.port, self.password_port))

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Certs:
    pki: Pki
    server: CertKey
    bridge: CertKey
    van1: CertKey
    van2: CertKey
    rogue_van1: CertKey  # CN van-1, signed by a CA the broker does not trust


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pki = Pki(tmp_path_factory.mktemp("pki"), "fleet-ca")
    rogue = Pki(tmp_path_factory.mktemp("rogue"), "fleet-ca")  # same name, other key
    return Certs(
        pki,
        pki.server(),
        pki.client("bridge"),
        pki.client("van-1"),
        pki.client("van-2"),
        rogue.client("van-1"),
    )


@pytest.fixture
def broker(tmp_path: Path, certs: Certs) -> Iterator[ExampleBroker]:
    b = ExampleBroker(tmp_path / "broker", certs.pki, certs.server)
    b.start()
    try:
        yield b
    finally:
        b.stop()


# -- clients -----------------------------------------------------------------


@dataclass(repr=False)
class Peer:
    """A real paho client that records, in order, what it receives and what the broker answers."""

    name: str
    port: int
    ca: Path | None
    cert: CertKey | None = None
    protocol: str = "5"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    connacks: list[ReasonCode] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        v5 = self.protocol == "5"
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id or self.name,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if self.ca is not None:
            c.tls_set(
                ca_certs=str(self.ca),
                certfile=None if self.cert is None else str(self.cert.cert),
                keyfile=None if self.cert is None else str(self.cert.key),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        c.reconnect_delay_set(5, 5)  # a refused client should not hammer the broker
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self.client = c

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, connacks={self.connacks}, disconnects={self.disconnects})"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connacks.append(reason)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.disconnects.append(str(reason))

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.pubacks[mid] = reason

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        self.subacks[mid] = codes

    @property
    def connected(self) -> bool:
        return bool(self.connacks) and not self.connacks[-1].is_failure and not self.disconnects

    def attempt(self) -> Peer:
        """Connect and run the network loop; note an error raised by connect itself."""
        try:
            self.client.connect(HOST, self.port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return self
        self.client.loop_start()
        return self

    def connect(self) -> Peer:
        self.attempt()
        assert self.error is None, f"{self.name}: {self.error}"
        until(lambda: self.connacks or self.disconnects, f"{self.name} CONNACK")
        assert self.connected, f"{self.name}: {self.connacks} {self.disconnects}"
        return self

    def refused(self) -> str:
        """Connect, and return why there was no successful CONNACK by the deadline."""
        self.attempt()
        if self.error is not None:
            return self.error
        until(lambda: self.connacks or self.disconnects, f"{self.name} refused or connected")
        assert not self.connected, f"{self.name} was let in"
        return f"connack {[str(c) for c in self.connacks]}, disconnect {self.disconnects}"

    def subscribe(self, *topics: str) -> dict[str, ReasonCode]:
        """Subscribe at QoS 1 and wait for the SUBACK; its codes per topic filter."""
        rc, mid = self.client.subscribe([(t, 1) for t in topics])
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        until(lambda: mid in self.subacks, f"{self.name} SUBACK for {topics}")
        return dict(zip(topics, self.subacks[mid], strict=True))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and wait for the PUBACK; its reason code (v3.1.1: always success)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        until(lambda: info.mid in self.pubacks, f"{self.name} PUBACK on {topic}")
        return self.pubacks[info.mid]

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def until_marker(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including the marker, once it arrives."""
        until(lambda: (topic, payload) in self.received(), f"{self.name}: marker on {topic}")
        got = self.received()
        return got[: got.index((topic, payload)) + 1]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(broker: ExampleBroker, certs: Certs) -> Iterator[dict[str, Peer]]:
    """The bridge (subscribed as cloud_bridge is), van-1 and van-2; each connects on demand."""
    made: dict[str, Peer] = {}

    def make(name: str, cert: CertKey, protocol: str = "5") -> Peer:
        made[name] = Peer(name, broker.port, certs.pki.ca.cert, cert, protocol)
        return made[name]

    make("bridge", certs.bridge).connect().subscribe(*BRIDGE_TOPICS)
    make("van-1", certs.van1)
    make("van-2", certs.van2)
    try:
        yield made
    finally:
        for p in made.values():
            p.close()


# -- tests -------------------------------------------------------------------

PROTOCOLS = pytest.mark.parametrize("protocol", ["5", "3.1.1"])


@PROTOCOLS
def test_device_writes_only_its_own_topics(
    peers: dict[str, Peer], certs: Certs, broker: ExampleBroker, protocol: str
) -> None:
    bridge = peers["bridge"]
    van1 = Peer("van-1", broker.port, certs.pki.ca.cert, certs.van1, protocol).connect()
    van2 = peers["van-2"].connect()
    van2.subscribe("fleet/van-2/cmd", "fleet/van-2/config")
    try:
        assert van1.publish("fleet/van-1/telemetry", b"own telemetry").is_failure is False
        assert ("fleet/van-1/telemetry", b"own telemetry") in bridge.until_marker(
            "fleet/van-1/telemetry", b"own telemetry"
        )

        forbidden = [
            ("fleet/van-2/telemetry", False),
            ("fleet/van-2/status", True),
            ("fleet/van-2/events", False),
            ("fleet/van-2/cmd/result", False),
            ("fleet/van-2/cmd", False),  # forge a command for another van
            ("fleet/van-2/config", True),
            ("fleet/van-1/cmd", False),  # or for itself: down-topics are the bridge's
            ("fleet/van-1/config", True),
            ("fleet/bridge/telemetry", False),
        ]
        codes = {t: van1.publish(t, b"forged", retain=r) for t, r in forbidden}
        if protocol == "5":
            # MQTT 5: the PUBACK says so, and the agent keeps the rows.
            assert {t: c.value for t, c in codes.items()} == {t: NOT_AUTHORIZED for t in codes}
            assert all(str(c) == "Not authorized" for c in codes.values())
        else:
            # MQTT 3.1.1 has no way to refuse a publish: mosquitto acknowledges and drops it.
            assert {t: c.value for t, c in codes.items()} == {t: 0 for t in codes}

        # Markers the receivers may read, published after every forged message was acknowledged.
        van1.publish("fleet/van-1/telemetry", b"marker")
        van1.publish("fleet/van-1/status", b"marker", retain=True)
        bridge.publish("fleet/van-2/cmd", b"marker")
        seen = bridge.until_marker("fleet/van-1/telemetry", b"marker")
        seen += bridge.until_marker("fleet/van-1/status", b"marker")
        seen += van2.until_marker("fleet/van-2/cmd", b"marker")
        assert not [m for m in seen if m[1] == b"forged"]

        # Nothing forged was retained either: subscribing again replays the
        # retained messages, and only the devices' own are there.
        n_bridge, n_van2 = len(bridge.received()), len(van2.received())
        bridge.subscribe("fleet/+/status")
        van2.subscribe("fleet/van-2/config")
        van1.publish("fleet/van-1/status", b"marker 2", retain=True)
        bridge.publish("fleet/van-2/cmd", b"marker 2")
        replayed = bridge.until_marker("fleet/van-1/status", b"marker 2")[n_bridge:]
        assert replayed == [("fleet/van-1/status", b"marker"), ("fleet/van-1/status", b"marker 2")]
        assert van2.until_marker("fleet/van-2/cmd", b"marker 2")[n_van2:] == [
            ("fleet/van-2/cmd", b"marker 2")
        ]
    finally:
        van1.close()


@PROTOCOLS
def test_device_reads_only_its_own_downlink(
    peers: dict[str, Peer], certs: Certs, broker: ExampleBroker, protocol: str
) -> None:
    bridge = peers["bridge"]
    van2 = peers["van-2"].connect()
    van2.subscribe("fleet/van-2/cmd", "fleet/van-2/config")
    # A retained configuration for van-2 is waiting before van-1 subscribes.
    assert (
        bridge.publish("fleet/van-2/config", b"config for van-2", retain=True).is_failure is False
    )
    assert (
        bridge.publish("fleet/van-1/config", b"config for van-1", retain=True).is_failure is False
    )

    van1 = Peer("van-1", broker.port, certs.pki.ca.cert, certs.van1, protocol).connect()
    try:
        snooping = [
            "fleet/van-2/cmd",
            "fleet/+/cmd",
            "fleet/van-2/config",
            "fleet/+/config",
            "fleet/+/telemetry",
            "fleet/#",
            "#",
        ]
        subacks = van1.subscribe(*snooping)
        # Observed: mosquitto 2.0's ACL file checks reading per message, not
        # subscribing, so the SUBACK grants QoS 1 even under MQTT 5 and the
        # messages are then filtered one by one.
        assert {t: c.value for t, c in subacks.items()} == {t: 1 for t in snooping}

        assert van2.publish("fleet/van-2/telemetry", b"van-2 position").is_failure is False
        assert bridge.publish("fleet/van-2/cmd", b"cmd for van-2").is_failure is False
        assert bridge.publish("fleet/van-1/cmd", b"cmd for van-1").is_failure is False

        got = van1.until_marker("fleet/van-1/cmd", b"cmd for van-1")
        assert {t for t, _ in got} == {"fleet/van-1/config", "fleet/van-1/cmd"}, got
        assert ("fleet/van-1/config", b"config for van-1") in got
        assert not [m for m in got if b"van-2" in m[1]]

        # van-2 itself reads its command and its retained config.
        got2 = van2.until_marker("fleet/van-2/cmd", b"cmd for van-2")
        assert got2 == [
            ("fleet/van-2/config", b"config for van-2"),
            ("fleet/van-2/cmd", b"cmd for van-2"),
        ]
        # The bridge read van-2's telemetry (through its shared subscription).
        assert ("fleet/van-2/telemetry", b"van-2 position") in bridge.until_marker(
            "fleet/van-2/telemetry", b"van-2 position"
        )
    finally:
        van1.close()


def test_a_device_cannot_take_over_another_client_id(
    peers: dict[str, Peer], certs: Certs, broker: ExampleBroker
) -> None:
    """use_username_as_clientid: the certificate's CN is the client id, whatever is sent."""
    van2 = peers["van-2"].connect()
    bridge = peers["bridge"]
    for victim in ("van-2", "bridge"):
        thief = Peer("van-1", broker.port, certs.pki.ca.cert, certs.van1, client_id=victim)
        thief.connect()
        thief.close()
    # A round trip on each victim's connection after the thieves were let in:
    # had one been taken over, its socket was closed before this PUBACK.
    assert van2.publish("fleet/van-2/telemetry", b"still here").is_failure is False
    assert bridge.publish("fleet/van-2/cmd", b"still here").is_failure is False
    assert (len(van2.connacks), van2.disconnects) == (1, [])
    assert (len(bridge.connacks), bridge.disconnects) == (1, [])


def test_clients_without_a_trusted_certificate_are_refused(
    peers: dict[str, Peer], certs: Certs, broker: ExampleBroker
) -> None:
    ca = certs.pki.ca.cert
    tried: list[Peer] = []

    def refused(cert: CertKey | None, trust: Path = ca, **kw: Any) -> str:
        tried.append(Peer("van-1", broker.port, trust, cert, **kw))
        return tried[-1].refused()

    def broker_says(text: str, times: int) -> None:
        until(lambda: broker.log().count(text) >= times, f"broker log: {text!r} x{times}")

    try:
        # Observed with TLS 1.3: the client's handshake completes before the
        # broker checks its certificate, so paho only sees the connection drop
        # ("Unspecified error"); the broker's log says why.
        refused(None)
        broker_says("peer did not return a certificate", 1)
        refused(certs.rogue_van1)  # CN van-1, but from another CA
        broker_says("certificate verify failed", 1)
        # Username and password do not replace the certificate on this listener.
        refused(None, username="van-1", password="x")
        broker_says("peer did not return a certificate", 2)

        # A client that does not trust the broker's CA refuses the broker.
        assert "certificate verify failed" in refused(certs.van1, trust=certs.rogue_van1.cert)
    finally:
        for p in tried:
            p.close()
    assert broker.log().count("New client connected") == 1  # the bridge only

    # A trusted client still gets in afterwards.
    peers["van-1"].connect()


def test_plain_tcp_to_the_tls_port_fails(broker: ExampleBroker) -> None:
    plain = Peer("van-1", broker.port, None)
    try:
        why = plain.refused()
        assert plain.connacks == [], why
    finally:
        plain.close()
    # mosquitto read the CONNECT as a TLS record and dropped the connection.
    until(lambda: "wrong version number" in broker.log(), "broker: not TLS")

    # The same at the byte level: an MQTT CONNECT gets no CONNACK, the socket
    # is closed (observed: no bytes at all); a broker that kept it open would
    # fail the 5 s timeout.
    connect = bytes.fromhex("101000044d5154540402000a0004") + b"van1"
    with socket.create_connection((HOST, broker.port), timeout=5) as s:
        s.sendall(connect)
        try:
            reply = s.recv(4096)
        except ConnectionResetError:
            reply = b""
    assert reply == b"", f"expected the broker to close the connection, got {reply!r}"


# -- the agent -----------------------------------------------------------------


def seqs(bridge: Peer, device: str) -> list[int]:
    return [
        r.seq
        for t, body in bridge.received()
        if t == f"fleet/{device}/telemetry"
        for r in parse_batch(body).records
    ]


def test_agent_uplink_with_its_certificate(
    peers: dict[str, Peer], certs: Certs, broker: ExampleBroker, tmp_path: Path
) -> None:
    bridge = peers["bridge"]
    outbox = Outbox(tmp_path / "van-1.sqlite", "van-1")
    for i in range(30):
        outbox.add("telemetry", position(i))
    outbox.commit()
    cfg = MqttConfig(
        host=HOST,
        port=broker.port,
        backoff_min_s=0.2,
        backoff_max_s=0.5,
        tls=TlsConfig(ca=certs.pki.ca.cert, cert=certs.van1.cert, key=certs.van1.key),
    )
    uplink = run_uplink("van-1", cfg, outbox, lambda u: u.stats.acked_records == 30, 20)
    assert uplink.stats.acked_records == 30, uplink.status()
    # At least once (PROTOCOL.md): a reconnect may repeat a batch, never lose one.
    until(lambda: set(seqs(bridge, "van-1")) == set(range(1, 31)), "van-1's records at the bridge")
    assert any(t == "fleet/van-1/status" for t, _ in bridge.received())

    # The same certificate used as another device: refused under MQTT 5, rows kept.
    other = Outbox(tmp_path / "van-2.sqlite", "van-2")
    for i in range(5):
        other.add("telemetry", position(i))
    other.commit()
    refused = run_uplink("van-2", cfg, other, lambda u: u.stats.failed_acks > 0, 20)
    assert refused.stats.failed_acks > 0 and refused.stats.acked_records == 0
    assert "Not authorized" in (refused.stats.last_error or ""), refused.status()
    assert other.depth()["telemetry"] == 5
    assert seqs(bridge, "van-2") == []


# -- username and password -------------------------------------------------------


def test_username_password_alternative(certs: Certs, tmp_path: Path) -> None:
    """The example's commented-out password listener: TLS verified, same ACL, no certificate."""
    passwd = password_file(
        tmp_path / "passwd", {"van-2": "s3cret-van-2", "bridge": "s3cret-bridge"}
    )
    broker = ExampleBroker(tmp_path / "broker", certs.pki, certs.server, passwd)
    assert broker.password_port is not None
    port, ca = broker.password_port, certs.pki.ca.cert
    made: list[Peer] = []

    def peer(name: str, **kw: Any) -> Peer:
        made.append(Peer(name, port, ca, **kw))
        return made[-1]

    try:
        broker.start()
        bridge = peer("bridge", username="bridge", password="s3cret-bridge").connect()
        bridge.subscribe(*BRIDGE_TOPICS)
        # A wrong password, or none: CONNACK "Not authorized" (mosquitto does not say 0x86).
        wrong = peer("van-2", username="van-2", password="wrong")
        anonymous = peer("anon")
        for refused in (wrong, anonymous):
            refused.refused()
            assert [str(c) for c in refused.connacks] == ["Not authorized"]
        # This port is TLS only too: plain MQTT gets no CONNACK.
        plain = Peer("van-2", port, None, username="van-2", password="s3cret-van-2")
        made.append(plain)
        plain.refused()
        assert plain.connacks == []
        until(lambda: "wrong version number" in broker.log(), "broker: not TLS")

        # The agent, its password in a mode-600 file.
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret-van-2\n")
        secret.chmod(0o600)
        outbox = Outbox(tmp_path / "van-2.sqlite", "van-2")
        for i in range(5):
            outbox.add("telemetry", position(i))
        outbox.commit()
        cfg = MqttConfig(
            host=HOST,
            port=port,
            username="van-2",
            password_file=secret,
            backoff_min_s=0.2,
            backoff_max_s=0.5,
            tls=TlsConfig(ca=ca),
        )
        uplink = run_uplink("van-2", cfg, outbox, lambda u: u.stats.acked_records == 5, 20)
        assert uplink.stats.acked_records == 5, uplink.status()
        until(lambda: set(seqs(bridge, "van-2")) == set(range(1, 6)), "van-2's records at bridge")

        # The ACL is the same: van-2 cannot write van-1's topics.
        van2 = peer("van-2", username="van-2", password="s3cret-van-2").connect()
        assert van2.publish("fleet/van-1/telemetry", b"forged").value == NOT_AUTHORIZED
        van2.publish("fleet/van-2/telemetry", b"marker")
        assert not [
            m for m in bridge.until_marker("fleet/van-2/telemetry", b"marker") if m[1] == b"forged"
        ]
    finally:
        for p in made:
            p.close()
        broker.stop()
