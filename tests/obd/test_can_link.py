"""The native CAN link against the CAN ECU simulator on python-can's virtual bus.

Real threads, real python-can buses (``virtual``: every bus on a channel
name sees the others' frames, in this process), a unique channel per test.
The ECU's multi-frame sender is can-isotp, not our code, so the link's
reassembler is checked against an independent implementation.  Waits are
on conditions with deadlines, never a sleep that hopes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import pytest

from agent.obd.can_link import (
    FUNCTIONAL_ID_11,
    CanLink,
    IsoTpError,
    Reassembler,
    flow_control,
    physical_request_id,
    single_frame,
)
from agent.obd.candump import CandumpReport, iter_candump
from agent.obd.link import LinkLost, ObdError
from agent.obd.pids import decode, supported_in
from simulators.can_ecu import CanEcu
from simulators.ecu import EcuModel, decode_dtc
from simulators.scenario import Dtc, ObdFault, Scenario, load_scenario
from tests.support.waiting import until

# -- helpers ------------------------------------------------------------------------------


@dataclass
class SceneClock:
    """Scenario seconds that only move when the test moves them."""

    t: float

    def __call__(self) -> float:
        return self.t


@dataclass
class Bench:
    """A virtual channel with the buses and ECUs of one test; all shut down at the end."""

    channel: str = field(default_factory=lambda: f"obd-{uuid.uuid4().hex[:8]}")
    buses: list[can.BusABC] = field(default_factory=list)
    ecus: list[CanEcu] = field(default_factory=list)

    def bus(self) -> can.BusABC:
        bus = can.Bus(interface="virtual", channel=self.channel)
        self.buses.append(bus)
        return bus

    def ecu(self, model: EcuModel, clock: Callable[[], float], **kwargs: Any) -> CanEcu:
        ecu = CanEcu(self.bus(), model, clock, **kwargs)
        ecu.start()
        self.ecus.append(ecu)
        return ecu

    def link(self, **kwargs: Any) -> CanLink:
        return CanLink(bus=self.bus(), **kwargs)

    def close(self) -> None:
        for ecu in self.ecus:
            ecu.stop()
        for bus in self.buses:
            bus.shutdown()


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def urban() -> Scenario:
    return load_scenario("urban_delivery")


@pytest.fixture(scope="module")
def model(urban: Scenario) -> EcuModel:
    return EcuModel(urban)


@pytest.fixture(scope="module")
def moving_t(model: EcuModel) -> float:
    """A moment of the drive when the van moves briskly (engine well above idle)."""
    t = next(float(t) for t in range(0, 4000) if model.state_at(t).speed_kmh > 25)
    return t + 3.0


def model_with_dtcs(urban: Scenario, codes: list[str], pending: list[str]) -> EcuModel:
    dtcs = tuple(Dtc(code=c, at_s=0.0) for c in codes)
    dtcs += tuple(Dtc(code=c, at_s=0.0, pending=True) for c in pending)
    return EcuModel(urban.model_copy(update={"dtcs": dtcs}))


# -- the reassembler, frame by frame --------------------------------------------------------


def test_reassembler_single_first_and_consecutive_frames() -> None:
    rx = Reassembler()
    assert rx.feed(bytes.fromhex("04410C1AF8555555")).message == bytes.fromhex("410C1AF8")
    step = rx.feed(bytes.fromhex("1014490201574442"))
    assert step.flow_control and step.message is None and rx.active
    assert rx.feed(bytes.fromhex("2139303636333331")).message is None
    done = rx.feed(bytes.fromhex("2253313233343536"))
    assert done.message == bytes.fromhex("490201") + b"WDB9066331S123456"
    assert not rx.active
    assert rx.feed(bytes.fromhex("2300000000000000")).message is None  # stray: counted only
    assert rx.stray == 1


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        (["0041"], "Single Frame says 0 bytes"),
        (["07410C"], "Single Frame says 7 bytes in a 3-byte frame"),
        (["1005410C1AF80000"], "announces 5 bytes"),
        (["1014490201"], "First Frame of 5 bytes"),
        (["1014490201574442", "2239303636333331"], "Consecutive Frame 2 where 1 was due"),
        (["F000000000000000"], "PCI type F"),
        ([""], "empty frame"),
    ],
)
def test_reassembler_refuses_broken_frames(frames: list[str], error: str) -> None:
    rx = Reassembler()
    *first, last = [bytes.fromhex(f) for f in frames]
    for data in first:
        rx.feed(data)
    with pytest.raises(IsoTpError, match=error):
        rx.feed(last)
    assert not rx.active


def test_sequence_numbers_wrap_after_15() -> None:
    rx = Reassembler()
    message = bytes(range(200))
    rx.feed(bytes([0x10, len(message)]) + message[:6])
    rest, seq, out = message[6:], 1, None
    while rest:
        out = rx.feed(bytes([0x20 | seq]) + rest[:7]).message
        rest, seq = rest[7:], (seq + 1) & 0x0F
    assert out == message


def test_ids_and_padding() -> None:
    assert physical_request_id(0x7E8, False) == 0x7E0
    assert physical_request_id(0x7EF, False) == 0x7E7
    assert physical_request_id(0x18DAF110, True) == 0x18DA10F1
    assert single_frame(b"\x01\x0c") == bytes.fromhex("02010C5555555555")
    assert flow_control() == bytes.fromhex("3000005555555555")


# -- against the simulated ECU ----------------------------------------------------------------


@pytest.mark.parametrize("extended", [False, True], ids=["11bit", "29bit"])
def test_discovery_rpm_speed_and_vin(
    bench: Bench, model: EcuModel, moving_t: float, extended: bool
) -> None:
    ecu = bench.ecu(model, SceneClock(moving_t), extended_ids=extended)
    sniffer = bench.bus()
    link = bench.link(extended_ids=extended)
    info = link.open()
    assert info.protocol == f"ISO 15765-4 (CAN {29 if extended else 11}/500)"

    (bitmap,) = link.request(0x01, 0x00).values()
    assert supported_in(bitmap) == {p for p in model.supported_pids if 0 < p <= 0x20}

    state = model.state_at(moving_t)
    assert state.speed_kmh > 20 and state.rpm > 1000  # a moving moment, not idle
    rpm = decode(0x0C, link.request(0x01, 0x0C)[ecu.reply_id])[1]
    speed = decode(0x0D, link.request(0x01, 0x0D)[ecu.reply_id])[1]
    assert rpm == round(state.rpm * 4) / 4
    assert speed == round(state.speed_kmh)

    while sniffer.recv(0) is not None:  # what the requests above put on the wire
        pass
    vin = link.request(0x09, 0x02)
    assert list(vin) == [ecu.reply_id]
    assert vin[ecu.reply_id] == b"\x49\x02\x01" + model.vin.encode()
    assert model.vin == "WDB9066331S123456"
    # On the wire: our single-frame request, the ECU's First Frame, our Flow Control to
    # its physical id, then two Consecutive Frames (3 + 17 = 20 bytes).
    wire = []
    while (msg := sniffer.recv(0)) is not None:
        wire.append((msg.arbitration_id, bytes(msg.data)))
    functional = 0x18DB33F1 if extended else FUNCTIONAL_ID_11
    assert wire[0] == (functional, bytes.fromhex("0209025555555555"))
    assert wire[1][0] == ecu.reply_id and wire[1][1][:5] == bytes.fromhex("1014490201")
    assert wire[2] == (ecu.physical_id, bytes.fromhex("3000005555555555"))
    assert [(i, d[0]) for i, d in wire[3:]] == [(ecu.reply_id, 0x21), (ecu.reply_id, 0x22)]
    assert link.stats.flow_controls == 1
    link.close()


def test_dtc_lists_span_several_frames_and_follow_the_model(bench: Bench, urban: Scenario) -> None:
    stored, pending = ["P0301", "P0420", "C0035", "U0100"], ["P0171", "B1234", "P0456"]
    model = model_with_dtcs(urban, stored, pending)
    bench.ecu(model, SceneClock(30.0))
    link = bench.link()
    link.open()
    reply = link.request(0x03)[0x7E8]
    assert len(reply) == 2 + 2 * len(stored) > 7  # a First Frame and Consecutive Frames
    assert reply[:2] == bytes([0x43, len(stored)])
    assert [decode_dtc(reply[i : i + 2]) for i in range(2, len(reply), 2)] == stored
    reply7 = link.request(0x07)[0x7E8]
    assert [decode_dtc(reply7[i : i + 2]) for i in range(2, len(reply7), 2)] == pending
    assert link.stats.flow_controls == 2


def test_a_dtc_appears_and_clears(bench: Bench, urban: Scenario) -> None:
    dtc = Dtc(code="P0301", at_s=100.0, cleared_at_s=200.0)
    model = EcuModel(urban.model_copy(update={"dtcs": (dtc,)}))
    clock = SceneClock(50.0)
    bench.ecu(model, clock)
    link = bench.link()
    link.open()
    seen = []
    for t in (50.0, 150.0, 250.0):
        clock.t = t
        seen.append(link.request(0x03)[0x7E8])
    assert seen == [b"\x43\x00", b"\x43\x01\x03\x01", b"\x43\x00"]


def test_two_ecus_answer_one_functional_request(
    bench: Bench, model: EcuModel, moving_t: float
) -> None:
    clock = SceneClock(moving_t)
    bench.ecu(model, clock, index=0)
    bench.ecu(model, clock, index=1)
    link = bench.link()
    link.open()
    assert sorted(link.request(0x01, 0x00)) == [0x7E8, 0x7E9]
    vins = link.request(0x09, 0x02)  # two segmented answers at once: two Flow Controls
    assert vins == {e: b"\x49\x02\x01" + model.vin.encode() for e in (0x7E8, 0x7E9)}
    assert link.stats.flow_controls == 2
    # Both ECUs said they support 0C, so the link waits for both, not for the full P2.
    assert sorted(link.request(0x01, 0x0C)) == [0x7E8, 0x7E9]


def test_unsupported_pid_is_no_data_within_p2(
    bench: Bench, model: EcuModel, moving_t: float
) -> None:
    bench.ecu(model, SceneClock(moving_t))
    link = bench.link(p2_s=0.08)
    link.open()
    pid = next(p for p in range(1, 0x20) if p not in model.supported_pids)
    began = time.monotonic()
    with pytest.raises(ObdError) as err:
        link.request(0x01, pid)
    elapsed = time.monotonic() - began
    assert err.value.kind == "no_data" and "within 80 ms" in err.value.detail
    assert 0.08 <= elapsed < 0.5


def test_auto_detects_29_bit_ids(bench: Bench, model: EcuModel, moving_t: float) -> None:
    bench.ecu(model, SceneClock(moving_t), extended_ids=True)
    link = bench.link(extended_ids=None)
    assert link.open().protocol == "ISO 15765-4 (CAN 29/500)"
    assert list(link.request(0x01, 0x0D)) == [0x18DAF110]


# -- faults ---------------------------------------------------------------------------------


def fault(kind: str, at_s: float, duration_s: float = 100.0, **extra: float) -> ObdFault:
    return ObdFault(at_s=at_s, duration_s=duration_s, kind=kind, **extra)  # type: ignore[arg-type]


def test_silence_fault_fails_within_the_timeout_and_recovers(
    bench: Bench, model: EcuModel, moving_t: float
) -> None:
    clock = SceneClock(moving_t)
    bench.ecu(model, clock, faults=[fault("silence", moving_t + 10)])
    link = bench.link(p2_s=0.1)
    link.open()
    clock.t = moving_t + 20
    for pid in (0x0C, 0x0D):
        began = time.monotonic()
        with pytest.raises(ObdError) as err:
            link.request(0x01, pid)
        assert err.value.kind == "no_data"
        assert time.monotonic() - began < 0.5
    with pytest.raises(ObdError) as err:
        bench.link(p2_s=0.1).open()  # nobody there: the vehicle is off, not the adapter
    assert err.value.kind == "unable_to_connect"
    clock.t = moving_t + 200
    assert decode(0x0D, link.request(0x01, 0x0D)[0x7E8])[1] == round(
        model.state_at(clock.t).speed_kmh
    )


def test_garbage_fault_is_reported_as_garbage_never_as_a_reading(
    bench: Bench, model: EcuModel, moving_t: float
) -> None:
    clock = SceneClock(moving_t)
    ecu = bench.ecu(model, clock, faults=[fault("garbage", moving_t + 10)], seed=3)
    link = bench.link(p2_s=0.1)
    link.open()
    clock.t = moving_t + 20
    kinds = []
    for _ in range(12):
        began = time.monotonic()
        with pytest.raises(ObdError) as err:
            link.request(0x01, 0x0C)
        assert time.monotonic() - began < 0.1 + 0.15 + 0.3  # P2, then at most one N_Cr
        kinds.append(err.value.kind)
    assert set(kinds) == {"garbage"}
    assert ecu.stats.garbage_frames >= 12
    clock.t = moving_t + 200  # the fault is over: answers again, nothing left over
    assert list(link.request(0x01, 0x0C)) == [0x7E8]


@pytest.mark.parametrize("delay_ms", [30.0, 400.0])
def test_slow_ecu_is_waited_for(
    bench: Bench, model: EcuModel, moving_t: float, delay_ms: float
) -> None:
    """Within P2 the answer is just late; beyond it the ECU sends NRC 0x78 (response
    pending) and the link waits up to P2* for the answer."""
    clock = SceneClock(moving_t)
    bench.ecu(model, clock, faults=[fault("slow", moving_t + 10, delay_ms=delay_ms)])
    link = bench.link(p2_s=0.1)
    link.open()
    clock.t = moving_t + 20
    began = time.monotonic()
    reply = link.request(0x01, 0x0D)
    assert time.monotonic() - began >= delay_ms / 1000 * 0.9
    assert decode(0x0D, reply[0x7E8])[1] == round(model.state_at(clock.t).speed_kmh)
    assert link.stats.nrcs == {}  # 0x78 is not a refusal


def test_disconnect_fault_leaves_and_rejoins_the_bus(
    bench: Bench, model: EcuModel, moving_t: float
) -> None:
    clock = SceneClock(moving_t)

    def factory() -> can.BusABC:
        return can.Bus(interface="virtual", channel=bench.channel)

    ecu = CanEcu(factory, model, clock, faults=[fault("disconnect", moving_t + 10)])
    ecu.start()
    bench.ecus.append(ecu)
    link = bench.link(p2_s=0.1)
    link.open()
    clock.t = moving_t + 20
    until(lambda: ecu.stats.disconnects == 1, "the ECU to leave the bus")
    with pytest.raises(ObdError) as err:
        link.request(0x01, 0x0C)
    assert err.value.kind == "no_data"
    clock.t = moving_t + 200
    until(lambda: ecu.stats.reconnects == 1, "the ECU to rejoin the bus")
    assert list(link.request(0x01, 0x0C)) == [0x7E8]


def test_a_segmented_answer_that_stops_is_silence(bench: Bench) -> None:
    """A scripted ECU sends a First Frame and never the rest."""
    ecu_bus, link = bench.bus(), bench.link(p2_s=0.1, cf_timeout_s=0.1)

    def ecu() -> None:
        while (msg := ecu_bus.recv(2.0)) is not None:
            if msg.arbitration_id == FUNCTIONAL_ID_11 and msg.data[1] == 0x01:
                answer = bytes.fromhex("064100BE1FA81300")
            elif msg.arbitration_id == FUNCTIONAL_ID_11:
                answer = bytes.fromhex("1014490201574442")
            else:
                continue  # our Flow Control: ignored, the rest never comes
            ecu_bus.send(can.Message(arbitration_id=0x7E8, is_extended_id=False, data=answer))

    thread = threading.Thread(target=ecu, daemon=True)
    thread.start()
    link.open()
    began = time.monotonic()
    with pytest.raises(ObdError) as err:
        link.request(0x09, 0x02)
    assert err.value.kind == "silence" and "7E8 stopped after 6 of 20 bytes" in err.value.detail
    assert time.monotonic() - began < 0.6


def test_busy_bus_is_ignored(bench: Bench, model: EcuModel, moving_t: float) -> None:
    """Thousands of unrelated frames (J1939, UDS, NMEA 2000, ids next to the OBD ones)."""
    ecu = bench.ecu(model, SceneClock(moving_t), background_fps=3000)
    filtered = bench.link()
    unfiltered = bench.link(set_filters=False)
    filtered.open()
    unfiltered.open()
    until(lambda: ecu.stats.background_frames > 2000, "background traffic", timeout=10)
    state = model.state_at(moving_t)
    for _ in range(20):
        for link in (filtered, unfiltered):
            rpm = decode(0x0C, link.request(0x01, 0x0C)[0x7E8])[1]
            assert rpm == round(state.rpm * 4) / 4
            assert link.request(0x09, 0x02)[0x7E8][3:].decode() == model.vin
    assert filtered.stats.foreign == 0  # dropped by the bus filter before the link
    assert unfiltered.stats.foreign + unfiltered.stats.stray > 1000  # seen and ignored
    assert ecu.stats.background_frames > 2000


# -- the link itself ------------------------------------------------------------------------


def test_lost_bus_and_missing_interface_are_link_lost(bench: Bench, model: EcuModel) -> None:
    with pytest.raises(LinkLost):
        CanLink(interface="socketcan", channel="nosuchcan0").open()
    bus = bench.bus()
    link = CanLink(bus=bus)
    with pytest.raises(LinkLost):
        link.request(0x01, 0x0C)  # not open
    bench.ecu(model, SceneClock(0.0))
    link.open()
    bus.shutdown()
    with pytest.raises(LinkLost):
        link.request(0x01, 0x0C)
    link.close()
    link.close()
    assert link.voltage() is None


def test_bus_off_is_link_lost(bench: Bench, model: EcuModel) -> None:
    """SocketCAN reports bus-off as an error frame (error filters bypass id filters)."""
    bench.ecu(model, SceneClock(0.0))
    link = bench.link(set_filters=False)
    link.open()
    bench.bus().send(can.Message(is_error_frame=True, arbitration_id=0x40))
    with pytest.raises(LinkLost, match="bus-off"):
        link.request(0x01, 0x0C)


def test_link_owns_the_bus_it_creates(bench: Bench, model: EcuModel) -> None:
    bench.ecu(model, SceneClock(0.0))
    link = CanLink(interface="virtual", channel=bench.channel)
    info = link.open()
    assert (info.adapter, info.port) == (f"virtual {bench.channel}", bench.channel)
    assert list(link.request(0x01, 0x00)) == [0x7E8]
    link.close()
    with pytest.raises(LinkLost):
        link.request(0x01, 0x00)


def test_a_stale_answer_queued_behind_other_traffic_is_not_taken(
    bench: Bench, model: EcuModel, moving_t: float
) -> None:
    """python-can's software filter makes ``recv(0)`` stop at the first dropped frame;
    the link must still discard a late answer queued behind it before asking again."""
    bench.ecu(model, SceneClock(moving_t))
    other = bench.bus()
    link = bench.link()
    link.open()
    for arbitration_id, data in ((0x123, "0011"), (0x7E8, "04410CFFFF"), (0x3E9, "00")):
        other.send(
            can.Message(
                arbitration_id=arbitration_id, is_extended_id=False, data=bytes.fromhex(data)
            )
        )
    rpm = decode(0x0C, link.request(0x01, 0x0C)[0x7E8])[1]
    assert rpm == round(model.state_at(moving_t).rpm * 4) / 4
    assert link.stats.stray == 1


def test_another_testers_uds_session_gets_no_flow_control_from_us(bench: Bench) -> None:
    """A UDS 0x62 First Frame on 0x7E8 while we wait for 49 02: not ours, no FC."""
    ecu_bus, link = bench.bus(), bench.link(p2_s=0.1)
    fcs: list[bytes] = []

    def ecu() -> None:
        while (msg := ecu_bus.recv(2.0)) is not None:
            if msg.arbitration_id == 0x7E0:
                fcs.append(bytes(msg.data))
                continue
            if msg.data[1] == 0x01:
                answers = ["064100BE1FA81300"]
            else:  # someone's UDS answer, then a late CF of it, then nothing for us
                answers = ["103E620101FFF7E7", "21FF640000000083"]
            for data in answers:
                ecu_bus.send(
                    can.Message(
                        arbitration_id=0x7E8, is_extended_id=False, data=bytes.fromhex(data)
                    )
                )

    thread = threading.Thread(target=ecu, daemon=True)
    thread.start()
    link.open()
    with pytest.raises(ObdError) as err:
        link.request(0x09, 0x02)
    assert err.value.kind == "no_data"
    assert fcs == [] and link.stats.flow_controls == 0 and link.stats.stray == 2


REAL_BUSES = [
    # UDS 0x62 multi-frame answers on 0x7EC (an OBD reply id) and KWP on 0x7BB.
    ("css_electronics/17BD1DB7_00000006_00000170.candump.log", False),
    # J1939 on 29-bit ids, on the bus of a 29-bit OBD link.
    ("css_electronics/FCBF0606_00003482_00000001-60B621D9.candump.log", True),
]


@pytest.mark.shared_data
@pytest.mark.parametrize(("capture", "extended"), REAL_BUSES, ids=["uds-kwp-11bit", "j1939-29bit"])
def test_real_capture_traffic_on_the_bus_gives_no_false_reading(
    bench: Bench,
    model: EcuModel,
    moving_t: float,
    shared_data: Path,
    capture: str,
    extended: bool,
) -> None:
    """The capture is played onto the bus (looped, 3000 frames/s) while the link works."""
    path = shared_data / "can" / capture
    frames = [
        can.Message(arbitration_id=m.arbitration_id, is_extended_id=m.is_extended_id, data=m.data)
        for m in iter_candump(path, CandumpReport(path))
    ]
    player, stop, played = bench.bus(), threading.Event(), [0]

    def play() -> None:
        start = time.monotonic()
        while not stop.wait(0.002):
            due = int((time.monotonic() - start) * 3000)
            while played[0] < due:
                player.send(frames[played[0] % len(frames)])
                played[0] += 1

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    try:
        until(lambda: played[0] > 300, "the capture to play")
        link = bench.link(extended_ids=extended)
        for _ in range(5):  # no ECU: nothing in the capture answers 01 00
            with pytest.raises(ObdError) as err:
                link.open()
            assert err.value.kind == "unable_to_connect"
        assert link.stats.flow_controls == 0
        ecu = bench.ecu(model, SceneClock(moving_t), extended_ids=extended)
        link.open()
        state = model.state_at(moving_t)
        for _ in range(10):
            assert (
                decode(0x0C, link.request(0x01, 0x0C)[ecu.reply_id])[1] == round(state.rpm * 4) / 4
            )
            assert link.request(0x09, 0x02) == {ecu.reply_id: b"\x49\x02\x01" + model.vin.encode()}
        assert link.stats.flow_controls == 10
        until(lambda: played[0] > len(frames), "the whole capture to go over the bus", 10)
    finally:
        stop.set()
        thread.join(5)


def test_the_obd_reader_runs_on_the_can_link(
    bench: Bench, model: EcuModel, moving_t: float
) -> None:
    """The reader written against ObdLink drives this link unchanged: discovery, VIN, polls."""
    from agent.obd.reader import ObdReader, Stamped

    bench.ecu(model, SceneClock(moving_t))
    seen: list[Stamped] = []
    reader = ObdReader(bench.link(), seen.append)
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        until(
            lambda: any(s.exchange.req == "010C" and s.exchange.replies for s in seen),
            "an RPM poll",
        )
    finally:
        stop.set()
        thread.join(5)
    ex = [s.exchange for s in seen]
    assert ex[0].link == "up" and ex[0].info["protocol"] == "ISO 15765-4 (CAN 11/500)"
    (vin,) = [e for e in ex if e.req == "0902"]
    assert vin.replies == {0x7E8: b"\x49\x02\x01" + model.vin.encode()}
    rpm = next(e for e in ex if e.req == "010C" and e.replies)
    assert rpm.replies is not None
    assert decode(0x0C, rpm.replies[0x7E8])[1] == round(model.state_at(moving_t).rpm * 4) / 4
    assert reader.status.supported == len(model.supported_pids - {0x00})
