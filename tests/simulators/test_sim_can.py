"""The CAN ECU simulator, seen from a bare python-can tester (not the agent's link).

Frames are written and read by hand here, so these tests check the ECU
against ISO 15765-2/-4 directly: ids, padding, Flow Control handling
(block size, STmin, no Flow Control at all), and the faults on cue.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest

from simulators.can_ecu import CanEcu, background_fps, main_can
from simulators.ecu import EcuModel
from simulators.scenario import Dtc, ObdFault, Scenario, load_scenario
from tests.support.waiting import until

REPO = Path(__file__).resolve().parents[2]


@dataclass
class SceneClock:
    t: float

    def __call__(self) -> float:
        return self.t


class Bench:
    """A bare tester on a fresh virtual channel, with ECUs that are stopped at the end."""

    def __init__(self) -> None:
        self.channel = f"sim-{uuid.uuid4().hex[:8]}"
        self.bus = can.Bus(interface="virtual", channel=self.channel)
        self.ecus: list[CanEcu] = []
        self.ecu_buses: list[can.BusABC] = []

    def ecu(self, model: EcuModel, clock: Callable[[], float], **kwargs: Any) -> CanEcu:
        self.ecu_buses.append(can.Bus(interface="virtual", channel=self.channel))
        ecu = CanEcu(self.ecu_buses[-1], model, clock, **kwargs)
        ecu.start()
        self.ecus.append(ecu)
        return ecu

    def send(self, arbitration_id: int, data: str | bytes, extended: bool = False) -> None:
        raw = bytes.fromhex(data) if isinstance(data, str) else data
        self.bus.send(can.Message(arbitration_id=arbitration_id, is_extended_id=extended, data=raw))

    def frames(self, arbitration_id: int, timeout: float = 1.0, count: int = 1) -> list[bytes]:
        """The next ``count`` frames on ``arbitration_id`` (others skipped); fewer on timeout."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and (left := deadline - time.monotonic()) > 0:
            msg = self.bus.recv(left)
            if msg is not None and msg.arbitration_id == arbitration_id:
                out.append(bytes(msg.data))
        return out

    def close(self) -> None:
        for ecu in self.ecus:
            ecu.stop()
        for bus in [*self.ecu_buses, self.bus]:
            bus.shutdown()


@pytest.fixture
def tester() -> Iterator[Bench]:
    t = Bench()
    try:
        yield t
    finally:
        t.close()


@pytest.fixture(scope="module")
def urban() -> Scenario:
    return load_scenario("urban_delivery")


@pytest.fixture(scope="module")
def model(urban: Scenario) -> EcuModel:
    return EcuModel(urban)


def fault(kind: str, at_s: float, duration_s: float = 100.0, **extra: float) -> ObdFault:
    return ObdFault(at_s=at_s, duration_s=duration_s, kind=kind, **extra)  # type: ignore[arg-type]


def single(payload: str) -> str:
    body = bytes.fromhex(payload)
    return (bytes([len(body)]) + body).ljust(8, b"\x55").hex()


# -- answers ----------------------------------------------------------------------------------


def test_functional_and_physical_requests_get_the_models_answer(
    tester: Bench, model: EcuModel
) -> None:
    clock = SceneClock(300.0)
    tester.ecu(model, clock)
    tester.send(0x7DF, single("010C"))
    (frame,) = tester.frames(0x7E8)
    expected = model.respond(b"\x01\x0c", 300.0)
    assert expected is not None
    assert frame == (bytes([len(expected)]) + expected).ljust(8, b"\xaa")  # DLC 8, 0xAA filler
    tester.send(0x7E0, single("010D"))  # physical
    (frame,) = tester.frames(0x7E8)
    assert frame[1:4] == model.respond(b"\x01\x0d", 300.0)


def test_unsupported_pid_silent_to_functional_nrc_to_physical(
    tester: Bench, model: EcuModel
) -> None:
    ecu = tester.ecu(model, SceneClock(300.0))
    pid = next(p for p in range(1, 0x20) if p not in model.supported_pids)
    tester.send(0x7DF, single(f"01{pid:02X}"))
    assert tester.frames(0x7E8, timeout=0.15) == []
    tester.send(0x7E0, single(f"01{pid:02X}"))
    (frame,) = tester.frames(0x7E8)
    assert frame[:4] == bytes([0x03, 0x7F, 0x01, 0x12])
    assert (ecu.stats.unanswered, ecu.stats.negative) == (2, 1)


def test_29_bit_ids(tester: Bench, model: EcuModel) -> None:
    ecu = tester.ecu(model, SceneClock(300.0), extended_ids=True, index=1)
    assert (ecu.reply_id, ecu.physical_id) == (0x18DAF118, 0x18DA18F1)
    tester.send(0x18DB33F1, single("010D"), extended=True)
    (frame,) = tester.frames(0x18DAF118)
    assert frame[1:4] == model.respond(b"\x01\x0d", 300.0)
    tester.send(0x7DF, single("010D"))  # an 11-bit request: not for a 29-bit ECU
    assert tester.frames(0x18DAF118, timeout=0.15) == []


def test_vin_waits_for_flow_control_and_honours_block_size_and_stmin(
    tester: Bench, model: EcuModel
) -> None:
    tester.ecu(model, SceneClock(0.0))
    tester.send(0x7DF, single("0902"))
    (ff,) = tester.frames(0x7E8)
    assert ff[:2] == bytes([0x10, 20]) and ff[2:] == b"\x49\x02\x01" + model.vin.encode()[:3]
    assert tester.frames(0x7E8, timeout=0.2) == []  # nothing before our Flow Control
    tester.send(0x7E0, "3001145555555555")  # block size 1, STmin 20 ms
    (cf1,) = tester.frames(0x7E8)
    assert cf1 == b"\x21" + model.vin.encode()[3:10]
    assert tester.frames(0x7E8, timeout=0.2) == []  # block done: waits for the next FC
    tester.send(0x7E0, "3000325555555555")  # the rest, STmin 50 ms
    (cf2,) = tester.frames(0x7E8)
    assert cf2 == b"\x22" + model.vin.encode()[10:]


def test_stmin_spaces_consecutive_frames(tester: Bench, urban: Scenario) -> None:
    dtcs = tuple(Dtc(code=f"P0{300 + i}", at_s=0.0) for i in range(12))  # 2 + 24 bytes
    model = EcuModel(urban.model_copy(update={"dtcs": dtcs}))
    tester.ecu(model, SceneClock(10.0))
    tester.send(0x7DF, single("03"))
    (ff,) = tester.frames(0x7E8)
    assert ff[:4] == bytes([0x10, 26, 0x43, 12])
    tester.send(0x7E0, "30001E5555555555")  # STmin 30 ms
    stamps = []
    for _ in range(3):
        msg = tester.bus.recv(1.0)
        assert msg is not None and msg.arbitration_id == 0x7E8
        stamps.append(msg.timestamp)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.028


def test_no_flow_control_gives_up_and_keeps_answering(tester: Bench, model: EcuModel) -> None:
    ecu = tester.ecu(model, SceneClock(0.0), fc_timeout_s=0.2)
    tester.send(0x7DF, single("0902"))
    assert len(tester.frames(0x7E8)) == 1  # the First Frame; we never answer it
    until(lambda: ecu.stats.send_failures == 1, "the ECU to give up the VIN")
    tester.send(0x7DF, single("010D"))
    (frame,) = tester.frames(0x7E8)
    assert frame[1:3] == b"\x41\x0d"


def test_dtcs_appear_and_clear_on_cue(tester: Bench, urban: Scenario) -> None:
    dtcs = (Dtc(code="P0301", at_s=100.0, cleared_at_s=200.0),)
    model = EcuModel(urban.model_copy(update={"dtcs": dtcs}))
    clock = SceneClock(50.0)
    tester.ecu(model, clock)
    seen = []
    for t in (50.0, 150.0, 250.0):
        clock.t = t
        tester.send(0x7DF, single("03"))
        seen.append(tester.frames(0x7E8)[0][:4])
    assert seen == [
        bytes.fromhex("024300AA"),
        bytes.fromhex("04430103"),
        bytes.fromhex("024300AA"),
    ]


# -- faults on cue ------------------------------------------------------------------------------


def test_silence_starts_and_ends_on_cue(tester: Bench, model: EcuModel) -> None:
    clock = SceneClock(10.0)
    ecu = tester.ecu(model, clock, faults=[fault("silence", 100.0, 50.0)])
    for t, answered in ((99.0, True), (100.0, False), (149.0, False), (150.0, True)):
        clock.t = t
        tester.send(0x7DF, single("010D"))
        assert bool(tester.frames(0x7E8, timeout=0.15)) is answered, t
    assert ecu.stats.faulted == 2


def test_no_data_fault(tester: Bench, model: EcuModel) -> None:
    tester.ecu(model, SceneClock(20.0), faults=[fault("no_data", 10.0)])
    tester.send(0x7DF, single("010C"))
    assert tester.frames(0x7E8, timeout=0.15) == []  # functional: silent, as J1979 wants
    tester.send(0x7E0, single("010C"))
    (frame,) = tester.frames(0x7E8)
    assert frame[:4] == bytes.fromhex("037F0112")


def test_slow_fault_sends_response_pending_then_the_answer(tester: Bench, model: EcuModel) -> None:
    tester.ecu(model, SceneClock(20.0), faults=[fault("slow", 10.0, delay_ms=300.0)])
    began = time.monotonic()
    tester.send(0x7DF, single("010D"))
    pending, answer = tester.frames(0x7E8, timeout=2.0, count=2)
    assert pending[:4] == bytes.fromhex("037F0178")
    assert answer[1:3] == b"\x41\x0d"
    assert time.monotonic() - began >= 0.29


def test_garbage_fault_sends_frames_that_answer_nothing(tester: Bench, model: EcuModel) -> None:
    ecu = tester.ecu(model, SceneClock(20.0), faults=[fault("garbage", 10.0)], seed=1)
    frames = []
    for _ in range(10):
        tester.send(0x7DF, single("010D"))
        frames += tester.frames(0x7E8, timeout=0.1, count=3)
    assert len(frames) == ecu.stats.garbage_frames >= 10
    for data in frames:
        is_single = data[0] >> 4 == 0
        assert not is_single or not 0x40 <= data[1] <= 0x7F  # never a response service id


def test_disconnect_leaves_the_bus_and_comes_back(tester: Bench, model: EcuModel) -> None:
    clock = SceneClock(20.0)
    buses: list[can.BusABC] = []

    def factory() -> can.BusABC:
        buses.append(can.Bus(interface="virtual", channel=tester.channel))
        return buses[-1]

    ecu = CanEcu(
        factory, model, clock, faults=[fault("disconnect", 30.0, 10.0)], background_fps=500
    )
    ecu.start()
    try:
        until(lambda: ecu.stats.background_frames > 10, "background traffic")
        clock.t = 35.0
        until(lambda: ecu.stats.disconnects == 1, "the disconnect")
        with pytest.raises(can.CanOperationError):  # really off the bus, not just quiet
            buses[0].send(can.Message(arbitration_id=0x123, is_extended_id=False))
        sent = ecu.stats.background_frames
        tester.send(0x7DF, single("010D"))
        assert tester.frames(0x7E8, timeout=0.15) == []
        assert ecu.stats.background_frames == sent  # no traffic at all while unplugged
        clock.t = 45.0
        until(lambda: ecu.stats.reconnects == 1, "the reconnect")
        tester.send(0x7DF, single("010D"))
        assert tester.frames(0x7E8)
        assert len(buses) == 2
    finally:
        ecu.stop()


def test_background_traffic_fills_the_bus(tester: Bench, model: EcuModel) -> None:
    fps = background_fps(40.0, 500000)
    assert fps == pytest.approx(1600)
    ecu = tester.ecu(model, SceneClock(0.0), background_fps=fps)
    began = time.monotonic()
    until(lambda: ecu.stats.background_frames >= 800, "half a second of traffic")
    rate = ecu.stats.background_frames / (time.monotonic() - began)
    assert 800 < rate < 2400
    # A second of traffic (the bus never falls quiet, so read a count, not until idle).
    ids = set()
    deadline = time.monotonic() + 10.0
    for _ in range(1600):
        msg = tester.bus.recv(max(0.0, deadline - time.monotonic()))
        if msg is None:
            break
        ids.add(msg.arbitration_id)
    assert not ids & set(range(0x7E8, 0x7F0))  # nothing on the OBD reply ids
    assert {0x7F0, 0x18DAF210, 0x0CF00400} <= ids


# -- the command ----------------------------------------------------------------------------


def test_cli_prints_ready_and_stops_cleanly_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "simulators.can_ecu", "--scenario", "urban_delivery"),
            *("--interface", "virtual", "--channel", f"cli-{uuid.uuid4().hex[:6]}"),
            *("--speed", "10", "--background", "5"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("ready virtual cli-") and "ECU 7E8 (CAN 11/500)" in ready
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err and "background frames" in err


def test_cli_duration_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main_can(
            [
                "--scenario",
                "urban_delivery",
                "--channel",
                "virtual",
                "--duration",
                "2",
                "--speed",
                "20",
            ]
        )
        == 0
    )
    assert main_can(["--scenario", "no_such_scenario", "--interface", "virtual"]) == 2
    assert (
        main_can(
            ["--scenario", "urban_delivery", "--interface", "socketcan", "--channel", "nosuchcan0"]
        )
        == 1
    )
    out, err = capsys.readouterr()
    assert out.startswith("ready virtual virtual ECU 7E8")
    assert "duration reached" in err
    assert "no_such_scenario" in err
    assert "cannot join socketcan nosuchcan0" in err
