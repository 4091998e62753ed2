"""Acceptance: each source broken in turn; its row red with the right advice, the others green.

Every case starts from a configuration where everything works (GPS and
ELM327 simulators on ptys, a TLS mosquitto with a password login) and
breaks one thing the way it breaks in a van.  Nothing of ours is mocked:
the wrong baud rate is a receiver fixed at one speed behind a pty that
garbles bytes as a mismatched UART does (tests/check/uart.py), the silent
adapter a pty nobody answers on.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from agent.check import CheckOptions, rows_by_check, run_checks
from agent.check.report import Row, exit_status, format_table, to_json
from agent.config import load_config
from simulators.broker import free_port
from tests.check.conftest import PASSWORD, Certs, Setup, TlsBroker
from tests.check.uart import receiver_at

GROUPS = ("gps", "obd", "broker", "buffer")


def check(setup: Setup, timeout: float = 10.0) -> tuple[dict[str, Row], list[Row]]:
    rows = run_checks(load_config(setup.write()), CheckOptions(timeout=timeout))
    return rows_by_check(rows), rows


def assert_green(by: dict[str, Row], groups: Iterable[str]) -> None:
    """Every row of these sources passed: breaking one source left the others alone."""
    for row in by.values():
        if row.group in groups:
            assert row.status == "pass", row


# -- GPS -------------------------------------------------------------------------------


def test_gps_device_absent(good: Setup) -> None:
    by, rows = check(good.with_("gps", device="/dev/ttyGPS-missing"))
    port = by["gps.port"]
    assert port.status == "fail" and port.detail == "no device at /dev/ttyGPS-missing"
    assert "plug it in" in port.fix and "/dev/serial/by-id/" in port.fix
    assert by["gps.nmea"].status == by["gps.fix"].status == "skip"
    assert_green(by, ("obd", "broker", "buffer"))
    assert exit_status(rows) == 1


@pytest.mark.parametrize(("receiver", "configured"), [(38400, 9600), (9600, 38400)])
def test_gps_wrong_baud(good: Setup, receiver: int, configured: int) -> None:
    with receiver_at(receiver) as gps:
        by, rows = check(good.with_("gps", device=gps.path, baud=configured), timeout=15)
        assert configured in gps.reader_bauds and receiver in gps.reader_bauds  # it really hunted
    nmea = by["gps.nmea"]
    assert nmea.status == "fail"
    assert nmea.detail.startswith(
        f"bytes arrive from {gps.path} at {configured} baud but no valid NMEA"
    )
    assert nmea.fix.startswith(f"the receiver speaks {receiver} baud, not {configured}")
    assert f"set gps.baud = {receiver}" in nmea.fix
    assert nmea.data["receiver_baud"] == receiver and nmea.data["baud"] == configured
    assert by["gps.port"].status == "pass" and by["gps.fix"].status == "skip"
    assert_green(by, ("obd", "broker", "buffer"))
    assert exit_status(rows) == 1


def test_gps_right_baud_through_the_uart_model(good: Setup) -> None:
    """The same receiver at the configured speed: green, so the model garbles only mismatches."""
    with receiver_at(38400) as gps:
        by, _ = check(good.with_("gps", device=gps.path, baud=38400).without("obd"))
    assert by["gps.nmea"].status == by["gps.fix"].status == "pass"


def test_gps_port_silent(good: Setup, silent_pty: str) -> None:
    by, _ = check(good.with_("gps", device=silent_pty).without("obd"), timeout=6)
    nmea = by["gps.nmea"]
    assert nmea.status == "fail" and nmea.detail.startswith(f"nothing arrives from {silent_pty}")
    assert "power" in nmea.fix and "cable" in nmea.fix
    assert by["gps.fix"].status == "skip"
    assert_green(by, ("broker", "buffer"))


# -- OBD -------------------------------------------------------------------------------


def test_obd_adapter_silent(good: Setup, silent_pty: str) -> None:
    by, rows = check(good.with_("obd", port=silent_pty), timeout=8)
    adapter = by["obd.adapter"]
    assert adapter.status == "fail"
    assert adapter.detail.startswith(f"adapter silent: no answer on {silent_pty} at 38400 baud")
    for advice in ("ignition", "obd.port", "obd.baud", "lit"):
        assert advice in adapter.fix
    assert by["obd.vehicle"].status == "skip"
    assert_green(by, ("gps", "broker", "buffer"))
    assert exit_status(rows) == 1


def test_obd_adapter_absent(good: Setup) -> None:
    by, _ = check(good.with_("obd", port="/dev/obd-missing").without("gps"))
    adapter = by["obd.adapter"]
    assert adapter.status == "fail" and adapter.detail == "no adapter at /dev/obd-missing"
    assert "plug the adapter" in adapter.fix


# -- broker ----------------------------------------------------------------------------


def test_broker_down(good: Setup) -> None:
    by, rows = check(good.with_("mqtt", port=free_port()))
    assert by["broker.dns"].status == "pass"
    tcp = by["broker.tcp"]
    assert tcp.status == "fail" and "refused" in tcp.detail and "mqtt.port" in tcp.fix
    assert by["broker.tls"].status == by["broker.login"].status == "skip"
    assert_green(by, ("gps", "obd", "buffer"))
    assert exit_status(rows) == 1


def test_broker_name_unknown(good: Setup) -> None:
    by, _ = check(good.with_("mqtt", host="broker.invalid").without("obd"))
    dns = by["broker.dns"]
    assert dns.status == "fail" and "broker.invalid" in dns.detail
    assert "mqtt.host" in dns.fix or "network" in dns.fix
    assert by["broker.tcp"].status == "skip"


def test_broker_tls_unknown_ca(good: Setup, certs: Certs) -> None:
    by, rows = check(good.with_("mqtt.tls", ca=str(certs.rogue_ca)))
    tls = by["broker.tls"]
    assert tls.status == "fail"
    assert "not signed by a CA this device trusts" in tls.detail
    assert f"mqtt.tls.ca ({certs.rogue_ca}) is not the CA that signed" in tls.fix
    assert by["broker.tcp"].status == "pass" and by["broker.login"].status == "skip"
    assert_green(by, ("gps", "obd", "buffer"))
    assert exit_status(rows) == 1


def test_broker_tls_host_name_mismatch(good: Setup, broker: TlsBroker) -> None:
    """The second listener's certificate is for other.example: 'localhost' does not match."""
    by, _ = check(good.with_("mqtt", host="localhost", port=broker.other_port).without("obd"))
    tls = by["broker.tls"]
    assert tls.status == "fail"
    assert "not valid for 'localhost'" in tls.detail
    assert "set mqtt.host to the name written on the broker's certificate" in tls.fix


def test_broker_tls_to_a_plain_port(good: Setup, tmp_path_factory: pytest.TempPathFactory) -> None:
    """TLS configured, the port speaks plain MQTT: said so, not a certificate error."""
    from simulators.broker import Mosquitto

    plain = Mosquitto(tmp_path_factory.mktemp("plain")).start()
    try:
        by, _ = check(good.with_("mqtt", port=plain.port).without("obd"))
    finally:
        plain.stop()
    tls = by["broker.tls"]
    assert tls.status == "fail" and tls.detail.startswith("no TLS on this port")
    assert "8883" in tls.fix


def test_broker_bad_password(good: Setup) -> None:
    wrong = "not-the-password-4711"
    pw = good.workdir / "wrong.pw"
    pw.write_text(wrong + "\n")
    pw.chmod(0o600)
    by, rows = check(good.with_("mqtt", password_file=str(pw)))
    login = by["broker.login"]
    assert login.status == "fail"
    # mosquitto says "not authorised" for a wrong password; other brokers "bad user name or password"
    assert login.detail in (
        "login refused: not authorised (user 'van-1')",
        "login refused: bad user name or password (user 'van-1')",
    )
    assert "mqtt.username and the password" in login.fix
    assert by["broker.tls"].status == "pass"
    assert_green(by, ("gps", "obd", "buffer"))
    shown = format_table(rows) + to_json(rows)
    assert wrong not in shown and PASSWORD not in shown  # never a secret, right or wrong


def test_broker_anonymous_not_authorised(good: Setup) -> None:
    sections = {k: v for k, v in good.sections.items() if k != "mqtt"}
    mqtt = {
        k: v for k, v in good.sections["mqtt"].items() if k not in ("username", "password_file")
    }
    by, _ = check(Setup({**sections, "mqtt": mqtt}, good.workdir).without("obd"))
    login = by["broker.login"]
    assert login.status == "fail"
    assert login.detail == "login refused: not authorised (no user name)"
    assert "anonymous" in login.fix


# -- buffer and a running agent -----------------------------------------------------------


def test_outbox_damaged(good: Setup) -> None:
    path = good.workdir / "var" / "outbox.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is no sqlite database, it is a text file" * 100)
    by, rows = check(good.without("obd"))
    row = by["buffer.file"]
    assert row.status == "fail" and "cannot read" in row.detail
    assert f"mv {path} {path}.broken" in row.fix
    assert by["buffer.disk"].status == "pass"
    assert_green(by, ("gps", "broker"))
    assert exit_status(rows) == 1


# -- client certificates (a listener that requires one) ---------------------------------------


def test_broker_wants_a_client_certificate(good: Setup, broker: TlsBroker) -> None:
    by, _ = check(good.with_("mqtt", port=broker.mtls_port).without("obd"))
    tls = by["broker.tls"]
    assert tls.status == "fail" and tls.detail.startswith("the broker wants a client certificate")
    assert "set mqtt.tls.cert and mqtt.tls.key" in tls.fix
    assert by["broker.login"].status == "skip"


def test_broker_refuses_a_foreign_client_certificate(
    good: Setup, broker: TlsBroker, certs: Certs
) -> None:
    rogue = certs.rogue_client
    setup = good.with_("mqtt", port=broker.mtls_port).without("obd")
    by, _ = check(setup.with_("mqtt.tls", cert=str(rogue.cert), key=str(rogue.key)))
    tls = by["broker.tls"]
    assert tls.status == "fail"
    assert tls.detail.startswith("the broker refused this device's certificate")
    assert f"mqtt.tls.cert ({rogue.cert}) must be issued by the CA the broker trusts" in tls.fix


def test_broker_with_this_devices_certificate(good: Setup, broker: TlsBroker, certs: Certs) -> None:
    mine = certs.client
    setup = good.with_("mqtt", port=broker.mtls_port).without("obd")
    by, _ = check(setup.with_("mqtt.tls", cert=str(mine.cert), key=str(mine.key)))
    assert_green(by, ("broker",))
    assert by["broker.tls"].data["client_certificate"] == str(mine.cert)
