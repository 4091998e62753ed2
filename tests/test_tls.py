"""TLS with per-device client certificates, against a real mosquitto TLS listener."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from pathlib import Path

import pytest

from agent.buffer.outbox import Outbox
from agent.clock import Clock
from agent.config import MqttConfig, TlsConfig
from agent.messages import Status
from agent.uplink import Uplink
from simulators.broker import Mosquitto
from tests.test_uplink_bridge import position


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a broker certificate for 127.0.0.1/localhost and a device certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in (("server", "localhost"), ("device", "van-tls")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        extra = ["-extfile", "san.ext"] if name == "server" else []
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.crt",
            *extra,
            cwd=d,
        )
    return d


def run_uplink(outbox: Outbox, cfg: MqttConfig, until: float) -> Uplink:
    status = Status(device="van-tls", state="online").model_dump_json()
    uplink = Uplink(
        cfg,
        "van-tls",
        outbox,
        Clock("system", synced=lambda: True),
        birth=lambda: status,
        will=lambda: status,
        rng=random.Random(0),
    )

    async def main() -> None:
        task = asyncio.create_task(uplink.run())
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            outbox.commit()
            if outbox.depth()["telemetry"] == 0 and uplink.stats.acked_records:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return uplink


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
        uplink = run_uplink(outbox, good, until=20)
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
        refused = run_uplink(outbox, bad, until=2)
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
            batch_max=5,
            tls=TlsConfig(ca=pki / "ca.crt", cert=pki / "device.crt", key=pki / "device.key"),
        )
        extra_connects = 0
        for run in range(10):  # the race showed up in 2 to 21 of 15 uploads like this
            outbox = Outbox(tmp_path / f"o{run}.sqlite", "van-tls")
            for i in range(300):
                outbox.add("telemetry", position(i))
            outbox.commit()
            uplink = run_uplink(outbox, cfg, until=60)
            assert outbox.depth()["telemetry"] == 0
            extra_connects += uplink.stats.connects - 1
            outbox.close()
        log = (tmp_path / "broker" / "mosquitto.log").read_text()
        assert "bad record mac" not in log and "decryption failed" not in log
        assert extra_connects == 0
    finally:
        broker.kill()
