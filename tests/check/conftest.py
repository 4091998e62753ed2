"""Real parts for the installer's check: simulators on ptys, a TLS mosquitto, a PKI.

Module-scoped where starting them is slow (the broker, the PKI, the
simulators keep running across the cases of one module); each case writes
its own config, so one source can be broken while the others stay good.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulators.broker import Mosquitto, free_port, password_file
from simulators.stack import command
from tests.support.pki import CertKey, Pki

DEVICE = "van-1"
PASSWORD = "s3cret-van-1-pw"


@dataclass(frozen=True)
class Certs:
    pki: Pki
    server: CertKey  # for localhost and 127.0.0.1
    other: CertKey  # for other.example (and 127.0.0.1): "localhost" does not match it
    rogue_ca: Path  # a CA that signed neither
    client: CertKey  # this device's certificate, from the fleet CA
    rogue_client: CertKey  # CN van-1 too, from the rogue CA: the broker refuses it


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pki = Pki(tmp_path_factory.mktemp("check-pki"), "fleet-ca", days=400)
    rogue = Pki(tmp_path_factory.mktemp("check-rogue"), "fleet-ca")  # same name, other key
    return Certs(
        pki,
        pki.server(),
        pki.server("other", hosts=("other.example",)),
        rogue.ca.cert,
        pki.client(DEVICE),
        rogue.client(DEVICE),
    )


class TlsBroker(Mosquitto):
    """mosquitto with password logins only, on three TLS listeners: the server certificate for
    localhost, one for other.example, and one that requires a client certificate."""

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__(workdir)
        self.other_port = free_port()
        self.mtls_port = free_port()
        passwd = password_file(workdir / "passwd", {DEVICE: PASSWORD})
        c = certs
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            "persistence false\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {c.pki.ca.cert}\ncertfile {c.server.cert}\nkeyfile {c.server.key}\n"
            f"listener {self.other_port} 127.0.0.1\n"
            f"cafile {c.pki.ca.cert}\ncertfile {c.other.cert}\nkeyfile {c.other.key}\n"
            f"listener {self.mtls_port} 127.0.0.1\n"
            f"cafile {c.pki.ca.cert}\ncertfile {c.server.cert}\nkeyfile {c.server.key}\n"
            "require_certificate true\n"
        )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path_factory.mktemp("check-broker"), certs)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _sim(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``telematics-sim`` device on a pty; its path is the first stdout line."""
    proc = subprocess.Popen(
        [command("telematics-sim"), *args],
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("/dev/"):
        proc.kill()
        raise RuntimeError(f"telematics-sim {args[0]} printed {line!r}; see {log}")
    return proc, line


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def gps_pty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The NMEA GPS simulator, real time, on a pty (looped: it outlives any module)."""
    log = tmp_path_factory.mktemp("check-gps") / "sim.log"
    proc, path = _sim(["gps", "--scenario", "urban_delivery", "--pty", "--loop"], log)
    try:
        yield path
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def elm_pty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ELM327 simulator on a pty, the engine running at the start of the round."""
    log = tmp_path_factory.mktemp("check-elm") / "elm.log"
    proc, path = _sim(["elm327", "--scenario", "urban_delivery", "--pty"], log)
    try:
        yield path
    finally:
        _stop(proc)


@pytest.fixture
def silent_pty() -> Iterator[str]:
    """A pseudo-terminal with nothing on the other side: a device that never answers."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """A TOML config from ``{"gps": {"device": ...}, "mqtt.tls": {...}}``."""
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class Setup:
    """A config where every source is good; tests replace one section to break it."""

    sections: dict[str, dict[str, object]]
    workdir: Path

    def with_(self, name: str, **keys: object) -> Setup:
        sections = {k: dict(v) for k, v in self.sections.items()}
        sections.setdefault(name, {}).update(keys)
        return Setup(sections, self.workdir)

    def without(self, name: str) -> Setup:
        return Setup({k: v for k, v in self.sections.items() if k != name}, self.workdir)

    def write(self, name: str = "agent.toml") -> Path:
        return write_config(self.workdir / name, self.sections)


@pytest.fixture
def good(tmp_path: Path, gps_pty: str, elm_pty: str, broker: TlsBroker, certs: Certs) -> Setup:
    """GPS simulator, ELM327 simulator, TLS broker with a password login, an outbox path."""
    pw = tmp_path / "mqtt.pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    return Setup(
        {
            "device": {"id": DEVICE},
            "gps": {"source": "serial", "device": gps_pty, "baud": 9600},
            "obd": {"source": "elm327", "port": elm_pty, "baud": 38400},
            "buffer": {"path": str(tmp_path / "var" / "outbox.sqlite")},
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "username": DEVICE,
                "password_file": str(pw),
            },
            "mqtt.tls": {"ca": str(certs.pki.ca.cert)},
        },
        tmp_path,
    )


def agent_cli() -> str:
    """The installed console script, beside this Python (what an installer runs)."""
    path = Path(sys.executable).parent / "telematics-agent"
    assert path.exists(), f"{path} missing: pip install -e ."
    return str(path)
