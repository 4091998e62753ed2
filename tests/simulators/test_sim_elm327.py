"""The ELM327 simulator: the interpreter byte for byte, then unmodified python-OBD
over a real pty and real TCP, faults (a disconnect unplugs the device), and the CLI.

No sleeps: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import IO

import obd
import pytest
import serial

from simulators.broker import wait_for
from simulators.ecu import EcuModel
from simulators.elm327 import Elm327, Elm327Device, Output, PtyPort, TcpPort
from simulators.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[2]
MOVING_T = 720.0  # urban_delivery: driving at 31.7 km/h, P0301 stored

SHORT = """
start_utc = 2024-05-14T07:30:00Z
[vehicle]
vin = "WDB9066331S123456"
[route]
waypoints = [
  { lat = 52.0, lon = 5.0, speed_kmh = 36, dwell_s = 20, engine = "idle" },
  { lat = 52.003, lon = 5.0, dwell_s = 20 },
]
[obd]
response_delay_ms = 40
faults = [
  { at_s = 100, duration_s = 10, kind = "silence" },
  { at_s = 110, duration_s = 10, kind = "no_data" },
  { at_s = 120, duration_s = 10, kind = "can_error" },
  { at_s = 130, duration_s = 10, kind = "bus_init_error" },
  { at_s = 140, duration_s = 10, kind = "stopped" },
  { at_s = 150, duration_s = 10, kind = "unable_to_connect" },
  { at_s = 160, duration_s = 10, kind = "buffer_full" },
  { at_s = 170, duration_s = 10, kind = "garbage" },
  { at_s = 180, duration_s = 10, kind = "slow", delay_ms = 1500 },
  { at_s = 190, duration_s = 10, kind = "disconnect" },
]
[[dtcs]]
code = "P0301"
at_s = 0
"""


def urban_with(extra: str) -> Scenario:
    """urban_delivery with more TOML appended (e.g. [[obd.faults]] tables)."""
    text = (resources.files("simulators") / "scenarios" / "urban_delivery.toml").read_text()
    return parse_scenario(text + extra, default_name="urban_delivery")


def new_elm(text: str = SHORT) -> Elm327:
    return Elm327(EcuModel(parse_scenario(text)))


def talk(elm: Elm327, command: str, t: float = 5.0) -> bytes:
    return b"".join(o.data for o in elm.feed(command.encode() + b"\r", t))


def quiet(elm: Elm327, *commands: str) -> None:
    for command in commands:
        talk(elm, command)


# --------------------------------------------------------------------------- interpreter


def test_reset_echo_and_ok() -> None:
    elm = new_elm()
    assert talk(elm, "ATZ") == b"ATZ\r\r\rELM327 v1.5\r\r>"  # echo is on after a reset
    assert talk(elm, "ATE0") == b"ATE0\rOK\r\r>"
    assert talk(elm, "ATE1") == b"OK\r\r>"  # echo was still off for this line
    assert talk(elm, "at e0") == b"at e0\rOK\r\r>"  # case and spaces do not matter
    assert talk(elm, "ATI") == b"ELM327 v1.5\r\r>"
    assert talk(elm, "AT@1") == b"OBDII to RS232 Interpreter\r\r>"
    assert talk(elm, "ATWS") == b"\r\rELM327 v1.5\r\r>"
    assert talk(elm, "ATE0") == b"ATE0\rOK\r\r>"  # the warm start turned echo back on
    for command in ("ATM0", "ATAL", "ATAT1", "ATST64", "ATCAF1", "ATSH7E0", "ATPC", "ATD"):
        assert talk(elm, command) == b"OK\r\r>", command


def test_unknown_commands_get_a_question_mark() -> None:
    elm = new_elm()
    quiet(elm, "ATE0")
    for command in ("ATFOO", "XYZ", "0", "AT", "01 0C 0D 05 0F 10 11 2F", "\x7f\x7f"):
        assert talk(elm, command) == b"?\r\r>", command


def test_linefeeds_spaces_and_headers() -> None:
    elm = new_elm()
    quiet(elm, "ATE0")
    assert talk(elm, "ATSP6") == b"OK\r\r>"  # a fixed protocol: no search
    assert talk(elm, "010D") == b"41 0D 00\r\r>"
    assert talk(elm, "ATL1") == b"OK\r\n\r\n>"
    assert talk(elm, "010D") == b"41 0D 00\r\n\r\n>"
    quiet(elm, "ATL0", "ATH1")
    assert talk(elm, "010C") == b"7E8 04 41 0C 0B B8\r\r>"  # 750 rpm idling
    quiet(elm, "ATS0")
    assert talk(elm, "010C") == b"7E804410C0BB8\r\r>"
    quiet(elm, "ATH0")
    assert talk(elm, "010C") == b"410C0BB8\r\r>"
    quiet(elm, "ATS1", "ATCAF0")
    assert talk(elm, "02 01 0C") == b"04 41 0C 0B B8\r\r>"  # formatting off: PCI both ways


def test_searching_then_the_protocol_is_known() -> None:
    elm = new_elm()
    quiet(elm, "ATE0", "ATH1")
    assert talk(elm, "ATSP0") == b"OK\r\r>"
    assert talk(elm, "ATDP") == b"AUTO\r\r>"
    first = elm.feed(b"0100\r", 5.0)
    assert first[0].data == b"SEARCHING...\r"
    assert first[1].data.startswith(b"7E8 06 41 00 ") and first[1].delay_s > 0.5
    assert talk(elm, "0100").startswith(b"7E8 06 41 00 ")  # found: no second search
    assert talk(elm, "ATDP") == b"AUTO, ISO 15765-4 (CAN 11/500)\r\r>"
    assert talk(elm, "ATDPN") == b"A6\r\r>"
    quiet(elm, "ATSP6")
    assert talk(elm, "ATDP") == b"ISO 15765-4 (CAN 11/500)\r\r>"
    assert talk(elm, "ATDPN") == b"6\r\r>"


@pytest.mark.parametrize(
    ("protocol", "answer"),
    [("8", b"CAN ERROR"), ("7", b"NO DATA"), ("3", b"BUS INIT: ...ERROR"), ("1", b"NO DATA")],
)
def test_a_fixed_wrong_protocol_cannot_talk(protocol: str, answer: bytes) -> None:
    elm = new_elm()
    quiet(elm, "ATE0", f"ATSP{protocol}")
    assert talk(elm, "010C") == answer + b"\r\r>"
    quiet(elm, f"ATTPA{protocol}")  # automatic, trying the wrong one first: finds CAN 11/500
    assert talk(elm, "010D") == b"SEARCHING...\r41 0D 00\r\r>"


def test_multi_frame_vin_with_and_without_headers() -> None:
    elm = new_elm()
    quiet(elm, "ATE0", "ATSP6", "ATH1")
    assert talk(elm, "0902") == (
        b"7E8 10 14 49 02 01 57 44 42\r"
        b"7E8 21 39 30 36 36 33 33 31\r"
        b"7E8 22 53 31 32 33 34 35 36\r\r>"
    )
    quiet(elm, "ATH0")
    assert talk(elm, "0902") == (
        b"014\r0: 49 02 01 57 44 42\r1: 39 30 36 36 33 33 31\r2: 53 31 32 33 34 35 36\r\r>"
    )
    quiet(elm, "ATS0")
    assert talk(elm, "0902").startswith(b"014\r0:490201574442\r1:39303636333331\r")


def test_dtcs_count_repeat_and_addressing() -> None:
    elm = new_elm()
    quiet(elm, "ATE0", "ATSP6", "ATH1")
    assert talk(elm, "03") == b"7E8 04 43 01 03 01\r\r>"
    assert talk(elm, "07") == b"7E8 02 47 00\r\r>"
    replies = elm.feed(b"010D1\r", 5.0)  # a response count: no wait for other ECUs
    assert replies[-1].data == b"7E8 03 41 0D 00\r\r>"
    assert talk(elm, "") == b"7E8 03 41 0D 00\r\r>"  # an empty line repeats the request
    assert talk(elm, "ATSH7E1") == b"OK\r\r>"  # the transmission: nobody answers here
    assert talk(elm, "010D") == b"NO DATA\r\r>"
    quiet(elm, "ATSH7E0")
    assert talk(elm, "010D") == b"7E8 03 41 0D 00\r\r>"
    assert talk(elm, "0600") == b"NO DATA\r\r>"  # mode 06 not simulated
    assert talk(elm, "04") == b"7E8 01 44\r\r>"
    assert talk(elm, "03") == b"7E8 02 43 00\r\r>"


def test_battery_voltage_follows_the_engine() -> None:
    elm = Elm327(EcuModel(load_scenario("parked_drift")))
    quiet(elm, "ATE0")
    assert talk(elm, "ATRV", t=60.0) == b"12.4V\r\r>"  # parked, engine off
    assert talk(elm, "AT RV", t=1795.0) == b"14.1V\r\r>"  # started 8 s before leaving


def test_extended_ids_on_protocol_7() -> None:
    elm = new_elm(SHORT.replace("response_delay_ms = 40", 'protocol = "7"'))
    quiet(elm, "ATE0", "ATSP7", "ATH1")
    assert talk(elm, "010D") == b"18 DA F1 10 03 41 0D 00\r\r>"
    quiet(elm, "ATSH DA10F1")
    assert talk(elm, "010D") == b"18 DA F1 10 03 41 0D 00\r\r>"


def test_only_can_vehicles() -> None:
    with pytest.raises(ScenarioError, match=r"obd\.protocol"):
        new_elm(SHORT.replace("response_delay_ms = 40", 'protocol = "3"'))


def test_low_power_wakes_on_any_character() -> None:
    elm = new_elm()
    quiet(elm, "ATE0")
    assert talk(elm, "ATLP") == b"OK\r\r>"
    assert b"".join(o.data for o in elm.feed(b" \r", 5.0)) == b"\r\rELM327 v1.5\r\r>"
    assert talk(elm, "ATI") == b"ELM327 v1.5\r\r>"


@pytest.mark.parametrize(
    ("t", "text"),
    [
        (110.0, b"NO DATA"),
        (120.0, b"CAN ERROR"),
        (130.0, b"BUS INIT: ...ERROR"),
        (140.0, b"STOPPED"),
        (150.0, b"UNABLE TO CONNECT"),
        (160.0, b"BUFFER FULL"),
    ],
)
def test_fault_texts_replace_answers_while_on(t: float, text: bytes) -> None:
    elm = new_elm()
    quiet(elm, "ATE0", "ATSP6")
    assert talk(elm, "010C", t=t) == text + b"\r\r>"
    assert talk(elm, "ATI", t=t) == b"ELM327 v1.5\r\r>"  # the chip itself is fine
    assert talk(elm, "010D", t=t + 100.0).startswith(b"41 0D ")  # over: answers again
    assert sum(elm.stats.faults.values()) == 1


def test_silence_garbage_and_slow() -> None:
    elm = new_elm()
    quiet(elm, "ATE0", "ATSP6")
    assert elm.feed(b"010C\r", 105.0) == []  # no bytes, no prompt, not even for AT commands
    assert elm.feed(b"ATI\r", 105.0) == []
    junk = talk(elm, "010C", t=175.0)
    assert junk.endswith(b">")
    assert not set(junk[:-3]) & set(b"0123456789ABCDEFabcdef>")
    normal = elm.feed(b"010C\r", 5.0)
    slow = elm.feed(b"010C\r", 185.0)
    assert slow[-1].data.startswith(b"41 0C ")
    assert slow[-1].delay_s == pytest.approx(normal[-1].delay_s + 1.5)
    assert elm.stats.faults == {"silence": 2, "garbage": 1, "slow": 1}
    assert elm.disconnected(195.0) and not elm.disconnected(200.0)


def test_latencies() -> None:
    elm = new_elm()
    quiet(elm, "ATE0", "ATSP6")
    at = elm.feed(b"ATI\r", 5.0)
    obd_reply = elm.feed(b"010C1\r", 5.0)
    no_data = elm.feed(b"0600\r", 5.0)
    assert at == [Output(0.005, b"ELM327 v1.5\r\r>")]
    assert obd_reply[-1].delay_s == pytest.approx(0.040)
    assert no_data[-1].delay_s == pytest.approx(0.040 + 0.020 + 0.200)  # + ATST timeout


# --------------------------------------------------------------------------- devices


@contextmanager
def serving(
    scenario: Scenario, port: PtyPort | TcpPort, clock: Callable[[], float]
) -> Iterator[Elm327Device]:
    device = Elm327Device(Elm327(EcuModel(scenario)), port, clock=clock)
    device.open()
    thread = threading.Thread(target=device.run, daemon=True)
    thread.start()
    try:
        yield device
    finally:
        device.request_stop()
        thread.join(timeout=10)
        device.close()
        assert not thread.is_alive()


def connect(url: str) -> obd.OBD:
    return obd.OBD(url, baudrate=38400, fast=False, timeout=2)


def check_python_obd(url: str, model: EcuModel, t: float) -> None:
    conn = connect(url)
    try:
        assert conn.status() == obd.OBDStatus.CAR_CONNECTED
        assert conn.protocol_name() == "ISO 15765-4 (CAN 11/500)"
        state = model.state_at(t)
        rpm = conn.query(obd.commands.RPM)
        assert rpm.value.magnitude == pytest.approx(state.rpm, abs=0.25)
        speed = conn.query(obd.commands.SPEED)
        assert speed.value.magnitude == round(state.speed_kmh)
        assert state.speed_kmh > 5 and "P0301" in state.dtcs  # a moving moment, DTC on
        dtcs = conn.query(obd.commands.GET_DTC)
        assert dtcs.value == [("P0301", "Cylinder 1 Misfire Detected")]
        vin = conn.query(obd.commands.VIN)
        assert bytes(vin.value).decode() == "WDB9066331S123456"
        volts = conn.query(obd.commands.ELM_VOLTAGE)
        assert volts.value.magnitude == pytest.approx(14.1)
        assert conn.supports(obd.commands.FUEL_LEVEL) and conn.supports(obd.commands.MAF)
    finally:
        conn.close()


def test_python_obd_over_a_pty(tmp_path: Path) -> None:
    scenario = load_scenario("urban_delivery")
    link = tmp_path / "obd0"
    pty = PtyPort(link)
    with serving(scenario, pty, lambda: MOVING_T) as device:
        assert os.readlink(link) == pty.path
        check_python_obd(str(link), device.elm.model, MOVING_T)
    assert not os.path.lexists(link)  # the device unplugged at the end
    assert device.summary.obd_requests >= 8 and device.summary.faults == {}


def test_python_obd_over_tcp() -> None:
    scenario = load_scenario("urban_delivery")
    port = TcpPort("127.0.0.1", 0)
    with serving(scenario, port, lambda: MOVING_T) as device:
        check_python_obd(f"socket://127.0.0.1:{port.port}", device.elm.model, MOVING_T)
    assert device.summary.connections == 1


def test_a_disconnect_unplugs_the_pty_and_it_comes_back(tmp_path: Path) -> None:
    scenario = urban_with('\n[[obd.faults]]\nat_s = 1000\nduration_s = 10\nkind = "disconnect"\n')
    now = [MOVING_T]
    link = tmp_path / "obd0"
    pty = PtyPort(link)
    with serving(scenario, pty, lambda: now[0]) as device:
        before = os.readlink(link)
        conn = connect(str(link))
        assert conn.status() == obd.OBDStatus.CAR_CONNECTED
        now[0] = 1001.0
        wait_for(lambda: not os.path.lexists(link), 10.0, "the symlink to go away")
        assert conn.query(obd.commands.RPM).is_null()  # the port is gone under python-OBD
        assert conn.status() == obd.OBDStatus.NOT_CONNECTED
        conn.close()
        assert connect(str(link)).status() == obd.OBDStatus.NOT_CONNECTED  # nothing there
        now[0] = 1011.0
        wait_for(lambda: os.path.lexists(link), 10.0, "the symlink to come back")
        assert os.readlink(link) == pty.path and pty.opened == 2
        again = connect(str(link))
        try:
            assert again.status() == obd.OBDStatus.CAR_CONNECTED
            rpm = again.query(obd.commands.RPM).value.magnitude
            assert rpm == pytest.approx(device.elm.model.state_at(1011.0).rpm, abs=0.25)
        finally:
            again.close()
    assert before.startswith("/dev/pts/")
    assert device.summary.disconnects == 1 and device.summary.faults["disconnect"] >= 1


def test_a_disconnect_closes_the_tcp_port_and_it_listens_again() -> None:
    scenario = urban_with('\n[[obd.faults]]\nat_s = 1000\nduration_s = 10\nkind = "disconnect"\n')
    now = [MOVING_T]
    port = TcpPort("127.0.0.1", 0)
    with serving(scenario, port, lambda: now[0]):
        number = port.port
        client = socket.create_connection(("127.0.0.1", number), timeout=5)
        assert exchange(client, b"ATI\r") == b"ATI\rELM327 v1.5\r\r>"
        now[0] = 1001.0
        assert client.recv(100) == b""  # closed by the adapter
        client.close()

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", number), timeout=5).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, 10.0, "the listener to close")
        now[0] = 1011.0
        wait_for(lambda: not refused(), 10.0, "the listener to come back")
        client = socket.create_connection(("127.0.0.1", number), timeout=5)
        with client:
            assert exchange(client, b"ATI\r") == b"ATI\rELM327 v1.5\r\r>"  # reset: echo on
        assert port.port == number


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    deadline = time.monotonic() + 5
    while not got.endswith(b">"):
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"no prompt (got {got!r})")
        chunk = sock.recv(4096)
        if not chunk:
            pytest.fail(f"closed (got {got!r})")
        got += chunk
    return got


def test_replies_are_not_early(tmp_path: Path) -> None:
    link = tmp_path / "obd0"
    with (
        serving(parse_scenario(SHORT), PtyPort(link), lambda: 5.0),
        serial.Serial(str(link), 38400, timeout=5) as port,
    ):
        port.write(b"ATE0\r")
        assert port.read_until(b">") == b"ATE0\rOK\r\r>"
        port.write(b"ATSP6\r")
        assert port.read_until(b">") == b"OK\r\r>"
        began = time.monotonic()
        port.write(b"010C1\r")
        assert port.read_until(b">") == b"41 0C 0B B8\r\r>"
        assert time.monotonic() - began >= 0.040


# --------------------------------------------------------------------------- CLI


def start_cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "elm327", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def read_line(stream: IO[bytes] | None, timeout: float = 15.0) -> str:
    assert stream is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"child printed no full line in time (got {line!r})")
        byte = stream.read(1)
        if not byte:
            pytest.fail(f"child closed its output (got {line!r})")
        line += byte
    return line.decode().strip()


def finish(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("simulator did not exit")
    return proc.returncode, err.decode()


def test_cli_on_a_pty_with_a_link(tmp_path: Path) -> None:
    link = tmp_path / "obd0"
    proc = start_cli(
        "--scenario", "urban_delivery", "--pty", "--link", str(link), "--start-offset", "720"
    )
    try:
        path = read_line(proc.stdout)
        assert path.startswith("/dev/pts/") and os.readlink(link) == path
        with serial.Serial(str(link), 38400, timeout=5) as port:
            port.write(b"ATE0\r")
            assert port.read_until(b">") == b"ATE0\rOK\r\r>"
            port.write(b"0902\r")
            assert port.read_until(b">").startswith(b"SEARCHING...\r014\r0: 49 02 01 57 44 42\r")
            port.write(b"03\r")
            assert port.read_until(b">") == b"43 01 03 01\r\r>"  # P0301 from t = 560 s
    finally:
        code, err = finish(proc)
    assert code == 0, err
    assert "elm327: urban_delivery: 3 commands (2 OBD requests)" in err
    assert "stopped by SIGTERM" in err and "faults injected: none" in err
    assert not os.path.lexists(link)


def test_cli_over_tcp_prints_the_port() -> None:
    proc = start_cli("--scenario", "parked_drift", "--tcp", "0", "--speed", "10")
    try:
        number = int(read_line(proc.stdout))
        with socket.create_connection(("127.0.0.1", number), timeout=5) as client:
            assert exchange(client, b"ATE0\r") == b"ATE0\rOK\r\r>"
            assert exchange(client, b"ATRV\r") == b"12.4V\r\r>"
    finally:
        code, err = finish(proc, signal.SIGINT)
    assert code == 0, err
    assert "stopped by SIGINT" in err and "1 connections" in err


def test_cli_rejects_a_link_without_a_pty() -> None:
    proc = start_cli("--scenario", "urban_delivery", "--tcp", "0", "--link", "/tmp/x")
    _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 2 and b"--link needs --pty" in err


def test_cli_duration_ends_the_run() -> None:
    proc = start_cli(
        "--scenario", "parked_drift", "--tcp", "0", "--speed", "100", "--duration", "5"
    )
    assert int(read_line(proc.stdout)) > 0
    _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and b"duration reached" in err
