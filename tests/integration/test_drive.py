"""Acceptance: a simulated drive through a real pty, agent, mosquitto and bridge.

Every piece is the real program in its own process.  The agent's outbox
high-water mark is the number of records it produced (seq is gap-free by
construction); the bridge must hold exactly 1..N, each once, and each stream
must have arrived oldest first.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import wait_for
from simulators.stack import Stack

pytestmark = pytest.mark.slow

DRIVE_S = 600  # a 10-minute drive ...
SPEED = 10.0  # ... at 10x: about 60 s of wall time


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack", scenario="urban_delivery", speed=SPEED, duration_s=DRIVE_S)
    try:
        yield s
    finally:
        s.stop()
        for name in ("agent.log", "bridge.log", "sim.log"):
            log = s.workdir / name
            if log.exists():
                print(f"--- tail of {name}:\n" + "\n".join(log.read_text().splitlines()[-15:]))


def assert_exactly_once_in_order(stack: Stack) -> tuple[int, list[tuple[str, int]]]:
    produced = stack.outbox_high_water()
    arrived = stack.bridge_seqs()
    seqs = [q for _, q in arrived]
    assert sorted(seqs) == list(range(1, produced + 1)), "missing or extra seq at the bridge"
    assert len(seqs) == len(set(seqs)) == produced
    for stream in ("telemetry", "events"):
        in_stream = [q for s, q in arrived if s == stream]
        assert in_stream == sorted(in_stream), f"{stream} arrived out of order"
    return produced, arrived


def test_ten_minute_drive_all_positions_arrive(stack: Stack, figures: list[str]) -> None:
    stack.start()
    stack.wait_sim_done(DRIVE_S / SPEED + 60)
    stack.wait_delivered(60)
    produced, arrived = assert_exactly_once_in_order(stack)
    positions = [q for s, q in arrived if s == "telemetry"]
    # One position per second of drive while moving, fewer when parked at a
    # stop; the agent misses only what the simulator wrote before it started.
    assert len(positions) > 0.5 * DRIVE_S
    summary = stack.summary()
    assert summary["events"].get("agent_started") == 1
    assert summary["rejected"] == {}
    # The live geofence path: the first 10 minutes hold drops 1 and 2 whole.
    for kind in ("geofence_enter", "geofence_dwell", "geofence_exit"):
        assert summary["events"].get(kind) == 2, summary["events"]
    figures.append(
        f"10-min drive at {SPEED:g}x: {produced} records produced, {len(positions)} positions, "
        "all at the bridge exactly once, in order"
    )


def test_broker_outage_and_two_agent_kills_lose_nothing(stack: Stack, figures: list[str]) -> None:
    wall = DRIVE_S / SPEED
    stack.start()
    t0 = time.monotonic()

    def at(fraction: float) -> None:
        wait_for(lambda: time.monotonic() - t0 >= fraction * wall, wall, f"{fraction:.0%} of drive")

    def kill_and_restart_agent() -> None:
        assert stack.agent is not None
        before = stack.outbox_high_water()
        stack.agent.stop(signal.SIGKILL)
        stack.start_agent()
        # The restarted agent continues the sequence; it never goes backwards.
        wait_for(lambda: stack.outbox_high_water() > before, 30, "restarted agent producing")

    at(0.15)
    kill_and_restart_agent()
    at(0.30)
    stack.broker.kill(signal.SIGKILL)
    outage_start = time.monotonic()
    at(0.45)
    kill_and_restart_agent()  # killed while offline, with a backlog in its outbox
    assert stack.outbox_depth() > 0
    wait_for(lambda: time.monotonic() - outage_start >= 30, 60, "30 s of broker outage")
    stack.broker.start()
    stack.wait_sim_done(wall + 60)
    stack.wait_delivered(90)
    produced, _ = assert_exactly_once_in_order(stack)
    assert stack.summary()["events"].get("agent_started") == 3
    figures.append(
        f"outage drive (broker down 30 s, agent SIGKILLed twice): {produced} records, "
        "all at the bridge exactly once, in order"
    )
