"""TLS with per-device client certificates, against a real mosquitto TLS listener."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.buffer.outbox import Outbox
from agent.config import MqttConfig, TlsConfig
from agent.uplink import Uplink
from simulators.broker import Mosquitto
from tests.support.pki import Pki
from tests.support.uplinks import run_uplink
from tests.test_uplink_bridge import position


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt, server.crt/key (localhost, 127.0.0.1) and device.crt/key (CN van-tls).

    RSA, as the fixture this replaced; the race test below relies on many small publishes.
    """
    ca = Pki(tmp_path_factory.mktemp("pki"), name="ca", rsa=True)
    ca.server()
    ca.client("van-tls", file="device")
    return ca.dir


def delivered(outbox: Outbox) -> Callable[[Uplink], bool]:
    return lambda u: outbox.depth()["telemetry"] == 0 and u.stats.acked_records > 0


def test_mutual_tls_delivers_and_wrong_ca_does_not(pki: Path, tmp_path: Path) -> None:
    broker = Mosquitto(
        tmp_path / "broker",
        listener_extra=(
            f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        ),
    ).start()
    try:
        outbox = Outbox(tmp_path / "o.sqlite", "van-tls")
        for i in range(20):
            outbox.add("telemetry", position(i))
        outbox.commit()
        good = MqttConfig(
            host="localhost",
            port=broker.port,
            backoff_min_s=0.2,
            backoff_max_s=0.5,
            tls=TlsConfig(ca=pki / "ca.crt", cert=pki / "device.crt", key=pki / "device.key"),
        )
        uplink = run_uplink("van-tls", good, outbox, delivered(outbox), 20)
        assert uplink.stats.acked_records == 20
        assert outbox.depth()["telemetry"] == 0

        # A broker certificate from another CA is refused and nothing is lost.
        for i in range(20, 25):
            outbox.add("telemetry", position(i))
        outbox.commit()
        bad = good.model_copy(
            update={
                "tls": TlsConfig(
                    ca=pki / "device.crt", cert=pki / "device.crt", key=pki / "device.key"
                )
            }
        )
        refused = run_uplink("van-tls", bad, outbox, delivered(outbox), 2)
        assert refused.stats.connects == 0
        assert (
            refused.stats.last_error is not None
            and "certificate verify failed" in refused.stats.last_error
        )
        assert outbox.depth()["telemetry"] == 5
    finally:
        broker.kill()


def test_many_batches_over_tls_keep_one_clean_connection(pki: Path, tmp_path: Path) -> None:
    """Publishes from the asyncio thread must not write on the TLS socket the loop uses."""
    broker = Mosquitto(
        tmp_path / "broker",
        listener_extra=(
            f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        ),
    ).start()
    try:
        cfg = MqttConfig(
            host="localhost",
            port=broker.port,
            backoff_min_s=0.2,
            backoff_max_s=0.5,
            batch_max=1,
            inflight=50,
            tls=TlsConfig(ca=pki / "ca.crt", cert=pki / "device.crt", key=pki / "device.key"),
        )
        extra_connects = 0
        # One record per publish: without the fix this failed in 3 of 4 runs.
        for run in range(10):
            outbox = Outbox(tmp_path / f"o{run}.sqlite", "van-tls")
            for i in range(300):
                outbox.add("telemetry", position(i))
            outbox.commit()
            uplink = run_uplink("van-tls", cfg, outbox, delivered(outbox), 60)
            assert outbox.depth()["telemetry"] == 0
            extra_connects += uplink.stats.connects - 1
            outbox.close()
        log = (tmp_path / "broker" / "mosquitto.log").read_text()
        assert "bad record mac" not in log and "decryption failed" not in log
        assert extra_connects == 0
    finally:
        broker.kill()
