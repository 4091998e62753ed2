"""The device's paho client, built in one place: protocol, client id, credentials, TLS.

The uplink adds its callbacks and windows to it; ``telematics-agent check``
logs in with exactly the same settings, so a green check means the agent's
own connection works.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig, TlsConfig


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Server verification always (CERT_REQUIRED), the configured CA or the system's,
    the client certificate when configured, the host name checked unless ``insecure``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.cert is not None:
        ctx.load_cert_chain(str(tls.cert), None if tls.key is None else str(tls.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca is not None:
        ctx.load_verify_locations(str(tls.ca))
    else:
        ctx.load_default_certs()
    ctx.check_hostname = not tls.insecure
    return ctx


def mqtt_client(cfg: MqttConfig, device: str) -> mqtt.Client:
    """A paho 2.x client with the configured protocol, client id, credentials and TLS; no callbacks."""
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id or device,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    if cfg.username is not None:
        password = None if cfg.password is None else cfg.password.get_secret_value()
        client.username_pw_set(cfg.username, password)
    if cfg.tls is not None:
        client.tls_set_context(tls_context(cfg.tls))
        client.tls_insecure_set(cfg.tls.insecure)
    return client
