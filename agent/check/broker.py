"""Broker rows of the installer's check: name, connection, TLS, login, each told apart.

An installer needs to know *which* step fails, because each has another
fix: a misspelt host (DNS), a closed port or firewall (TCP), the wrong CA
file or host name (TLS), a wrong password or a user the broker does not
allow (MQTT CONNACK).  So the steps are done one by one with the agent's
settings, and the login itself with a paho client built the way the uplink
builds its own (``mqtt_client``: protocol, client id, credentials, TLS).

The login uses the agent's client id and session settings (MQTT 5: no clean
start unless ``session_expiry_s = 0``, the same expiry) and never
acknowledges a message, so a session the broker keeps for the agent comes
out of the check untouched: commands queued in it are redelivered to the
agent.  No will is set and nothing is published or subscribed.

Secrets never appear in a row: the password is neither shown nor put in
``data``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.check.report import Row, busy_row
from agent.config import MqttConfig, TlsConfig
from agent.mqtt_client import mqtt_client, tls_context

STEP_TIMEOUT_S = 5.0  # DNS, TCP, TLS each; the login gets what is left of the deadline
CERT_WARN_DAYS = 30  # a broker certificate expiring sooner is worth a warning
_POST_HANDSHAKE_S = 0.3  # TLS 1.3 sends a refused client certificate's alert after the handshake

# OpenSSL verify codes (X509_V_ERR_*)
_HOSTNAME_MISMATCH = {62, 64}
_NOT_YET_VALID = 9
_EXPIRED = 10
_UNTRUSTED = {2, 18, 19, 20, 21}

# CONNACK reason codes (paho maps MQTT 3.1.1 return codes onto these)
_UNSUPPORTED_PROTOCOL = 0x84
_BAD_CLIENT_ID = 0x85
_BAD_PASSWORD = 0x86
_NOT_AUTHORISED = 0x87
_BANNED = 0x8A


# -- the client, as the uplink makes it ------------------------------------------------


# -- failures in plain words (pure) ------------------------------------------------------


def dns_failure(host: str, exc: BaseException) -> Row:
    """A name that does not resolve: misspelt, or no working DNS (no mobile data)."""
    code = getattr(exc, "errno", None)
    if code == socket.EAI_NONAME:
        detail = f"broker name {host!r} not found (DNS)"
        fix = (
            f"check mqtt.host is spelt right; if it is, this network's DNS does not know it: "
            f"try 'getent hosts {host}' and check the mobile data connection (APN)"
        )
    elif isinstance(exc, TimeoutError):
        detail = f"no DNS answer for {host!r} within {STEP_TIMEOUT_S:g} s"
        fix = "the device has no working network or DNS: check the modem / mobile data (APN)"
    else:
        detail = f"DNS lookup of {host!r} failed: {exc}"
        fix = (
            "the device has no working network or DNS: check the modem / mobile data (APN) "
            "and /etc/resolv.conf"
        )
    return Row("broker.dns", "fail", detail, fix, data={"host": host})


def tcp_failure(where: str, port: int, exc: BaseException) -> Row:
    """Refused (nothing listens), timed out (firewall, APN), or no route (no network)."""
    if isinstance(exc, ConnectionRefusedError):
        detail = f"connection to {where} refused: nothing listens there"
        fix = (
            "check mqtt.port (8883 for TLS, 1883 for plain MQTT) and that the broker is "
            "running; a firewall may also refuse it"
        )
    elif isinstance(exc, TimeoutError):
        detail = f"no answer from {where} within {STEP_TIMEOUT_S:g} s"
        fix = (
            f"a firewall or the mobile network blocks port {port} (some APNs allow only web "
            "ports): have it opened, or check mqtt.host and mqtt.port"
        )
    else:
        detail = f"cannot reach {where}: {getattr(exc, 'strerror', None) or exc}"
        fix = "the device has no route to the broker: check the modem / mobile data (APN)"
    return Row("broker.tcp", "fail", detail, fix, data={"address": where})


def tls_failure(host: str, tls: TlsConfig, exc: BaseException) -> Row:
    """Why the TLS handshake failed: bad CA, host name, dates, client certificate, not TLS."""
    data: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, msg = exc.verify_code, exc.verify_message
        data["verify_code"] = code
        if code in _HOSTNAME_MISMATCH:
            return Row(
                "broker.tls",
                "fail",
                f"the broker's certificate is not valid for {host!r} ({msg})",
                "set mqtt.host to the name written on the broker's certificate (a name, "
                "not an IP address, unless the certificate lists the address), or have the "
                "certificate reissued for this name",
                data=data,
            )
        if code == _EXPIRED:
            return Row(
                "broker.tls",
                "fail",
                "the broker's certificate has expired",
                "the broker's certificate must be renewed (tell its admin); if this device's "
                "date is wrong ('date'), fix the clock first",
                data=data,
            )
        if code == _NOT_YET_VALID:
            now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            return Row(
                "broker.tls",
                "fail",
                "the broker's certificate is not valid yet",
                f"this device's clock is probably wrong (it says {now}): enable NTP "
                "(sudo timedatectl set-ntp true) or let GPS time set it",
                data=data,
            )
        if code in _UNTRUSTED:
            if tls.ca is not None:
                fix = (
                    f"mqtt.tls.ca ({tls.ca}) is not the CA that signed the broker's "
                    "certificate: get the right CA file from the broker's admin"
                )
            else:
                fix = (
                    "no mqtt.tls.ca is set, so the system's CAs are used and none of them "
                    "signed the broker's certificate: set mqtt.tls.ca to the fleet's CA file"
                )
            return Row(
                "broker.tls",
                "fail",
                f"the broker's certificate is not signed by a CA this device trusts ({msg})",
                fix,
                data=data,
            )
        return Row(
            "broker.tls",
            "fail",
            f"the broker's certificate did not verify ({msg})",
            "check mqtt.tls.ca and the broker's certificate with its admin",
            data=data,
        )
    reason = str(getattr(exc, "reason", "") or "").upper()
    text = str(exc)
    if isinstance(exc, ssl.SSLError) and (
        "CERTIFICATE_REQUIRED" in reason
        or "BAD_CERTIFICATE" in reason
        or "UNKNOWN_CA" in reason
        or "CERTIFICATE_UNKNOWN" in reason
        or "HANDSHAKE_FAILURE" in reason
        or "ACCESS_DENIED" in reason
    ):
        if tls.cert is None:
            return Row(
                "broker.tls",
                "fail",
                f"the broker wants a client certificate ({reason.lower()})",
                "set mqtt.tls.cert and mqtt.tls.key to this device's certificate and key "
                "(issued by the fleet CA, CN = the device id)",
                data=data,
            )
        return Row(
            "broker.tls",
            "fail",
            f"the broker refused this device's certificate ({reason.lower()})",
            f"mqtt.tls.cert ({tls.cert}) must be issued by the CA the broker trusts, valid "
            "today, and made for this device: ask the broker's admin",
            data=data,
        )
    if (
        isinstance(exc, ssl.SSLError)
        and (
            "WRONG_VERSION_NUMBER" in reason
            or "RECORD_LAYER" in reason
            or "PACKET_LENGTH" in reason
        )
    ) or isinstance(exc, ssl.SSLEOFError | ConnectionResetError | EOFError):
        return Row(
            "broker.tls",
            "fail",
            f"no TLS on this port ({text})",
            "this looks like a plain MQTT port: use the broker's TLS port (usually 8883), "
            "or remove [mqtt.tls] if the broker is reached over a private network",
            data=data,
        )
    if isinstance(exc, TimeoutError):
        return Row(
            "broker.tls",
            "fail",
            f"no TLS answer within {STEP_TIMEOUT_S:g} s",
            "the port accepts connections but does not answer TLS: check mqtt.port is the "
            "broker's TLS port",
            data=data,
        )
    return Row(
        "broker.tls",
        "fail",
        f"TLS handshake failed: {text}",
        "check [mqtt.tls] (ca, cert, key) against what the broker expects",
        data=data,
    )


def tls_pass(host: str, tls: TlsConfig, version: str, cert: dict[str, Any], now: datetime) -> Row:
    """The handshake held: name what was verified; warn when insecure or expiring soon."""
    subject = dict(x[0] for x in cert.get("subject", ()) if x)
    issuer = dict(x[0] for x in cert.get("issuer", ()) if x)
    not_after = cert.get("notAfter")
    data: dict[str, Any] = {
        "version": version,
        "subject": subject.get("commonName"),
        "issuer": issuer.get("commonName"),
        "not_after": not_after,
        "ca": None if tls.ca is None else str(tls.ca),
        "client_certificate": None if tls.cert is None else str(tls.cert),
    }
    days: float | None = None
    if isinstance(not_after, str):
        expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
        days = (expires - now).total_seconds() / 86400
        data["days_left"] = round(days, 1)
    trust = f"signed by {issuer.get('commonName', '?')}"
    if tls.insecure:
        return Row(
            "broker.tls",
            "warn",
            f"{version}, certificate {trust}, host name NOT checked (mqtt.tls.insecure)",
            "mqtt.tls.insecure is for test benches: anyone on the path can pose as the broker; "
            "set it to false and connect by the certificate's name",
            data=data,
        )
    detail = f"{version}, certificate for {host!r} {trust}"
    if days is not None and days < CERT_WARN_DAYS:
        return Row(
            "broker.tls",
            "warn",
            f"{detail}, expires in {days:.0f} days",
            "the broker's certificate must be renewed soon: tell the broker's admin",
            data=data,
        )
    return Row("broker.tls", "pass", detail, data=data)


def login_failure(cfg: MqttConfig, code: int, reason: str) -> Row:
    """A CONNACK that refuses, in words: bad password, not authorised, banned, old protocol."""
    user = "no user name" if cfg.username is None else f"user {cfg.username!r}"
    data = {"reason_code": code, "reason": reason, "username": cfg.username}
    if code in (_BAD_PASSWORD, _NOT_AUTHORISED):
        what = "bad user name or password" if code == _BAD_PASSWORD else "not authorised"
        detail = f"login refused: {what} ({user})"
        if cfg.username is not None:
            fix = (
                "check mqtt.username and the password (mqtt.password_file, or "
                "TELEMATICS_MQTT__PASSWORD in the service's environment; it is never shown "
                "here): mosquitto answers 'not authorised' to a wrong password too; if both "
                "are right, the broker's admin must allow this user"
            )
        elif cfg.tls is not None and cfg.tls.cert is not None:
            fix = (
                "the broker does not accept this device's certificate as a login: its CN must "
                "be a user the broker allows (ask the broker's admin)"
            )
        else:
            fix = (
                "the broker refuses anonymous logins: set mqtt.username and the password, or "
                "a client certificate (mqtt.tls.cert and mqtt.tls.key)"
            )
    elif code == _BAD_CLIENT_ID:
        detail = f"login refused: client id {cfg.client_id!r} not accepted"
        fix = (
            "set mqtt.client_id to what the broker expects (usually the device id: leave it unset)"
        )
    elif code == _UNSUPPORTED_PROTOCOL:
        detail = f"login refused: the broker does not speak MQTT {cfg.protocol}"
        fix = 'set mqtt.protocol = "3.1.1"' if cfg.protocol == "5" else "the broker is too old"
    elif code == _BANNED:
        detail = "login refused: this client is banned"
        fix = "ask the broker's admin why this device is banned"
    else:
        detail = f"login refused: {reason}"
        fix = "the broker is busy or unavailable: try again later, or ask its admin"
    return Row("broker.login", "fail", detail, fix, data=data)


def _skip(check: str, why: str) -> Row:
    return Row(check, "skip", f"not checked: {why}")


# -- the steps (I/O) -------------------------------------------------------------------


def _resolve(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """getaddrinfo with a timeout (it has none of its own): a daemon thread does the lookup."""
    box: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            box.append(exc)
        done.set()

    threading.Thread(target=lookup, name="check-dns", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError("no DNS answer")
    if isinstance(box[0], BaseException):
        raise box[0]
    return list(box[0])


def _connect(addresses: list[tuple[Any, ...]], timeout: float) -> tuple[socket.socket, str, float]:
    """Connect to the first address that answers, as ``socket.create_connection`` does."""
    error: OSError = OSError("no address")
    for family, kind, proto, _name, addr in addresses:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        t0 = time.monotonic()
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock, str(addr[0]), time.monotonic() - t0
    raise error


def _handshake(
    sock: socket.socket, host: str, tls: TlsConfig, timeout: float
) -> tuple[ssl.SSLSocket, str, dict[str, Any]]:
    wrapped = tls_context(tls).wrap_socket(
        sock, server_hostname=host, do_handshake_on_connect=False
    )
    wrapped.settimeout(timeout)
    wrapped.do_handshake()
    version = wrapped.version() or "TLS"
    if version == "TLSv1.3":
        # A broker that refuses our client certificate says so after the handshake.
        wrapped.settimeout(_POST_HANDSHAKE_S)
        with contextlib.suppress(TimeoutError):
            if wrapped.recv(1) == b"":
                raise ConnectionResetError("the broker closed the connection after the handshake")
    cert = wrapped.getpeercert() or {}
    return wrapped, version, dict(cert)


def _login(cfg: MqttConfig, device: str, deadline: float) -> Row:
    """Connect with paho as the uplink would; the CONNACK's verdict, then a clean disconnect."""
    client = mqtt_client(cfg, device)
    client.manual_ack_set(True)  # a message from the agent's session is left for the agent
    client.connect_timeout = max(0.5, min(STEP_TIMEOUT_S * 2, deadline - time.monotonic()))
    got: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        got.setdefault("connack", reason)

    def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        got.setdefault("disconnect", reason)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    who = {"client_id": cfg.client_id or device, "username": cfg.username, "protocol": cfg.protocol}
    try:
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            client.connect(
                cfg.host,
                cfg.port,
                cfg.keepalive_s,
                clean_start=cfg.session_expiry_s == 0,
                properties=props,
            )
        else:
            client.connect(cfg.host, cfg.port, cfg.keepalive_s)
        while "connack" not in got and "disconnect" not in got and time.monotonic() < deadline:
            rc = client.loop(timeout=0.1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                got.setdefault("disconnect", mqtt.error_string(rc))
                break
    except (OSError, ssl.SSLError, ValueError) as exc:
        return Row(
            "broker.login",
            "fail",
            f"the connection failed during the login: {exc}",
            "run the check again; if it persists, the broker drops this device: check its log",
            data=who,
        )
    connack = got.get("connack")
    try:
        if connack is not None and not connack.is_failure:
            user = "" if cfg.username is None else f" as {cfg.username!r}"
            return Row(
                "broker.login",
                "pass",
                f"MQTT {cfg.protocol} login accepted{user} (client id {who['client_id']!r})",
                data=who,
            )
        if connack is not None:
            return login_failure(cfg, int(connack.value), str(connack))
        if "disconnect" in got:
            tls_hint = (
                "; with TLS, the broker may have refused this device's certificate"
                if cfg.tls is not None
                else ""
            )
            return Row(
                "broker.login",
                "fail",
                f"the broker closed the connection without answering the login ({got['disconnect']})",
                f"check the broker's log for client {who['client_id']!r}{tls_hint}",
                data=who,
            )
        return Row(
            "broker.login",
            "fail",
            "no answer to the MQTT login in time",
            "the port accepts connections but does not answer MQTT: check mqtt.port is the "
            "broker's MQTT port",
            data=who,
        )
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.1)


def probe_broker(
    cfg: MqttConfig, device: str, deadline: float, *, agent_pid: int | None = None
) -> list[Row]:
    """DNS, TCP, TLS and login rows; no login while an agent runs (it would be knocked off)."""
    host, port = cfg.host, cfg.port

    def step() -> float:
        return max(0.2, min(STEP_TIMEOUT_S, deadline - time.monotonic()))

    rows: list[Row] = []
    try:
        ipaddress.ip_address(host.strip("[]"))
        literal = True
    except ValueError:
        literal = False
    try:
        addresses = _resolve(host.strip("[]"), port, step())
    except (OSError, TimeoutError) as exc:
        rows.append(dns_failure(host, exc))
        return [
            *rows,
            *(_skip(c, "no address") for c in ("broker.tcp", "broker.tls", "broker.login")),
        ]
    found = sorted({str(a[4][0]) for a in addresses})
    rows.append(
        Row(
            "broker.dns",
            "pass",
            "IP address, no lookup needed" if literal else f"{host} -> {', '.join(found)}",
            data={"host": host, "addresses": found},
        )
    )
    where = f"{host}:{port}"
    try:
        sock, address, took = _connect(addresses, step())
    except OSError as exc:
        rows.append(tcp_failure(where, port, exc))
        return [*rows, _skip("broker.tls", "no connection"), _skip("broker.login", "no connection")]
    with contextlib.closing(sock):
        rows.append(
            Row(
                "broker.tcp",
                "pass",
                f"connected to {address} port {port} in {took * 1000:.0f} ms",
                data={"address": address, "port": port, "connect_ms": round(took * 1000, 1)},
            )
        )
        if cfg.tls is None:
            rows.append(
                Row(
                    "broker.tls",
                    "skip",
                    "plain MQTT: no [mqtt.tls] (broker on this machine or a private network)",
                )
            )
        else:
            try:
                wrapped, version, cert = _handshake(sock, host.strip("[]"), cfg.tls, step())
            except (OSError, ssl.SSLError, ValueError) as exc:
                rows.append(tls_failure(host, cfg.tls, exc))
                return [*rows, _skip("broker.login", "no TLS connection")]
            wrapped.close()
            rows.append(tls_pass(host, cfg.tls, version, cert, datetime.now(UTC)))
    if agent_pid is not None:
        rows.append(busy_row("broker.login", agent_pid))
        return rows
    rows.append(_login(cfg, device, deadline))
    return rows
