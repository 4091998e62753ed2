"""Every adapter misbehaviour the issue names, through our ELM327 link and reader.

The ELM327 simulator runs on a real pty with a stepped scenario clock; the
reader (python-OBD underneath) runs in its thread as in the agent.  For
each fault the clock is moved into its window: the reader must count that
kind in status, keep running, and read values again once the clock leaves
the window.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.obd.elm_link import ElmLink, classify
from agent.obd.reader import ObdReader, Stamped
from simulators.ecu import EcuModel
from simulators.elm327 import Elm327, Elm327Device, PtyPort
from simulators.scenario import parse_scenario
from tests.support.waiting import until

FAULTS = {
    # scenario fault kind -> the error kind the reader must count
    "no_data": "no_data",
    "can_error": "can_error",
    "bus_init_error": "bus_init",
    "stopped": "stopped",
    "buffer_full": "buffer_full",
    "garbage": "garbage",
    "silence": "silence",
    "unable_to_connect": "unable_to_connect",
}


def scenario_with_faults() -> str:
    from importlib import resources

    text = (resources.files("simulators") / "scenarios" / "urban_delivery.toml").read_text()
    for i, kind in enumerate(FAULTS):
        text += f'\n[[obd.faults]]\nat_s = {1000 + 100 * i}\nduration_s = 50\nkind = "{kind}"\n'
    return text


@dataclass
class Clock:
    t: float = 600.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    reader: ObdReader
    clock: Clock
    seen: list[Stamped]

    def answered(self) -> int:
        return sum(1 for s in list(self.seen) if s.exchange.req == "010C" and s.exchange.replies)


@pytest.fixture
def rig(tmp_path: object) -> Iterator[Rig]:
    scenario = parse_scenario(scenario_with_faults())
    clock = Clock()
    link_path = f"{tmp_path}/obd0"
    device = Elm327Device(Elm327(EcuModel(scenario)), PtyPort(link_path), clock=clock)
    device.open()
    dev_thread = threading.Thread(target=device.run, daemon=True)
    dev_thread.start()
    seen: list[Stamped] = []
    reader = ObdReader(
        ElmLink(link_path, baudrate=38400, read_timeout_s=0.5),
        seen.append,
        reconnect_max_s=0.5,
        vehicle_retry_s=1.0,
    )
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield Rig(reader, clock, seen)
    finally:
        stop.set()
        thread.join(20)
        device.request_stop()
        dev_thread.join(10)
        device.close()
    assert not thread.is_alive(), "the reader did not stop"


@pytest.mark.slow
def test_each_fault_is_counted_and_survived(rig: Rig) -> None:
    until(lambda: rig.answered() >= 2, "first RPM answers", timeout=20.0)
    for i, (fault, kind) in enumerate(FAULTS.items()):
        rig.clock.t = 1000 + 100 * i + 1  # inside the fault's window
        until(
            lambda k=kind: rig.reader.status.errors[k] >= 1,
            f"{fault} counted as {kind}",
            timeout=20.0,
        )
        rig.clock.t = 1000 + 100 * i + 60  # after it
        n = rig.answered()
        until(lambda n=n: rig.answered() > n + 1, f"answers again after {fault}", timeout=20.0)
    status = rig.reader.status
    assert status.state == "connected"
    assert set(FAULTS.values()) <= set(status.errors)
    assert status.answers > status.requests / 2  # faults were the exception, not the rule


@pytest.mark.parametrize(
    ("lines", "kind"),
    [
        (["NO DATA"], "no_data"),
        (["SEARCHING...", "UNABLE TO CONNECT"], "unable_to_connect"),
        (["BUS INIT: ...ERROR"], "bus_init"),
        (["CAN ERROR"], "can_error"),
        (["STOPPED"], "stopped"),
        (["?"], "unknown_command"),
        (["BUFFER FULL"], "buffer_full"),
        (["<RX ERROR"], "garbage"),
        (["#$%&"], "garbage"),
    ],
)
def test_classify_adapter_text(lines: list[str], kind: str) -> None:
    error = classify(lines)
    assert error is not None and error.kind == kind


def test_classify_benign_lines() -> None:
    assert classify(["SEARCHING...", "OK", ""]) is None
