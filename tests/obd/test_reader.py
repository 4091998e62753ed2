"""The OBD reader's supervision, on a real python-can virtual bus with the simulated ECU."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import can
import pytest

from agent.obd.can_link import CanLink
from agent.obd.pids import decode
from agent.obd.reader import ObdReader, Stamped
from simulators.can_ecu import CanEcu
from simulators.ecu import EcuModel, supported_set
from simulators.scenario import load_scenario
from tests.support.waiting import until


@dataclass
class Frozen:
    t: float

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    reader: ObdReader
    ecu: CanEcu
    model: EcuModel
    clock: Frozen
    seen: list[Stamped]
    bus: Callable[[], can.BusABC]

    def requests(self, req: str) -> list[Stamped]:
        return [s for s in list(self.seen) if s.exchange.req == req]


@pytest.fixture
def rig() -> Iterator[Rig]:
    channel = f"reader-{uuid.uuid4().hex[:8]}"
    scenario = load_scenario("urban_delivery")
    model = EcuModel(scenario)
    # A moment when the van is driving (not at a stop) with the engine running.
    t = next(x / 2 for x in range(400, 4000) if model.state_at(x / 2).speed_kmh > 20)
    clock = Frozen(t)

    def bus() -> can.BusABC:
        return can.Bus(interface="virtual", channel=channel)

    ecu = CanEcu(bus, model, clock)
    ecu.start()
    seen: list[Stamped] = []
    link = CanLink(interface="virtual", channel=channel, bitrate=None)
    reader = ObdReader(link, seen.append, reconnect_max_s=0.5, quiet_after=4, vehicle_retry_s=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        rig = Rig(reader, ecu, model, clock, seen, bus)
        yield rig
    finally:
        stop.set()
        thread.join(10)
        rig.ecu.stop()
    assert not thread.is_alive()
    assert reader.status.state == "stopped"


def test_discovers_then_polls_what_the_ecu_supports(rig: Rig) -> None:
    until(lambda: len(rig.requests("010C")) >= 3 and rig.requests("010D"), "RPM and speed polls")
    st = rig.model.state_at(rig.clock.t)
    rpm = rig.requests("010C")[-1].exchange.replies
    assert rpm is not None
    assert decode(0x0C, rpm[0x7E8])[1] == pytest.approx(st.rpm, abs=0.25)
    speed = rig.requests("010D")[-1].exchange.replies
    assert speed is not None and decode(0x0D, speed[0x7E8])[1] == round(st.speed_kmh)
    vin = rig.requests("0902")[0].exchange.replies
    assert vin is not None and vin[0x7E8][3:].decode() == rig.model.vin
    assert rig.reader.status.state == "connected"
    # Every PID the bitmaps mark, the next-range discovery PIDs included.
    assert rig.reader.status.supported == len(supported_set(rig.model.supported_pids) - {0})
    polled = {s.exchange.req for s in rig.seen if s.exchange.req.startswith("01")}
    unsupported = {f"01{p:02X}" for p in (0x5E, 0x0F) if p not in rig.model.supported_pids}
    assert not polled & unsupported
    # Every exchange is stamped with the reader's monotonic clock, in order.
    monos = [s.mono for s in rig.seen]
    assert monos == sorted(monos)


def test_ecu_gone_quiet_and_back(rig: Rig) -> None:
    until(lambda: rig.reader.status.state == "connected" and rig.requests("010C"), "connected")
    rig.ecu.stop()  # the ECU leaves the bus: requests go unanswered
    until(lambda: rig.reader.status.state == "quiet", "quiet state", timeout=20)
    assert any(s.exchange.link == "vehicle_off" for s in rig.seen)
    # Plugged back: a fresh ECU on the same bus.
    rig.ecu = CanEcu(rig.bus, rig.model, rig.clock)
    rig.ecu.start()
    until(lambda: rig.reader.status.state == "connected", "back to connected", timeout=20)
    n = len(rig.requests("010C"))
    until(lambda: len(rig.requests("010C")) > n + 2, "polling again")
    assert rig.reader.status.errors["no_data"] >= 4
