"""Acceptance: the ELM327 adapter unplugged mid-drive and plugged back, live.

Real processes: mosquitto, the bridge, the GPS simulator on one pty, the
ELM327 simulator on another behind a stable symlink (as udev's /dev/obd0),
and the agent reading both through python-OBD.  The scenario unplugs the
adapter for 8 s (the simulator closes its pty; the symlink goes away) and
scripts a DTC that appears and clears.  At real time (speed 1), so OBD and
GNSS times agree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from simulators.broker import wait_for
from simulators.scenario import load_scenario
from simulators.stack import Stack

pytestmark = pytest.mark.slow

UNPLUG_AT_S, UNPLUG_FOR_S = 25.0, 8.0
EXTRA = f"""
[[obd.faults]]
at_s = {UNPLUG_AT_S}
duration_s = {UNPLUG_FOR_S}
kind = "disconnect"

[[dtcs]]
code = "P0420"
at_s = 8
cleared_at_s = 40
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    bundled = Path(__file__).parents[2] / "simulators" / "scenarios" / "urban_delivery.toml"
    scenario = tmp_path / "unplugged.toml"
    scenario.write_text(bundled.read_text() + EXTRA)
    s = Stack(
        tmp_path / "stack",
        scenario=str(scenario),
        speed=1.0,
        duration_s=60,
        obd=True,
        status_interval_s=2.0,
        # Positions every second even while parked, to see GPS flow through the unplug.
        agent_extra='[obd.poll]\ndtc = 4\n"0D" = 1.0\n\n[sampler]\nheartbeat_s = 1.0\n',
    )
    try:
        yield s
    finally:
        s.stop()
        for name in ("agent.log", "elm.log", "sim.log"):
            log = s.workdir / name
            if log.exists():
                print(f"--- tail of {name}:\n" + "\n".join(log.read_text().splitlines()[-20:]))


def link_events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        if '"link"' in line:
            out.append(json.loads(line))
    return out


def bridge_events(stack: Stack, kind: str) -> list[dict[str, Any]]:
    rows = stack._query(
        stack.bridge_db,
        f"SELECT data FROM events WHERE device = '{stack.device}' AND type = '{kind}' ORDER BY seq",
    )
    return [{"type": kind, "data": json.loads(r[0])} for r in rows]


def test_unplug_and_replug_reconnects_within_5_s(stack: Stack, figures: list[str]) -> None:
    stack.start()
    wait_for(lambda: any(e["link"] == "up" for e in link_events(stack.obd_log)), 30, "OBD up")
    # Unplugged: the symlink goes with the pty.
    wait_for(lambda: not stack.obd_port.exists(), UNPLUG_AT_S + 15, "adapter unplugged")
    wait_for(lambda: stack.obd_port.exists(), UNPLUG_FOR_S + 10, "adapter back")
    back = time.monotonic()
    ups = len([e for e in link_events(stack.obd_log) if e["link"] == "up"])
    wait_for(
        lambda: len([e for e in link_events(stack.obd_log) if e["link"] == "up"]) > ups,
        15,
        "agent reconnected",
        poll=0.02,
    )
    latency = time.monotonic() - back
    assert latency <= 5.0, f"reconnected {latency:.1f} s after the adapter returned"
    links = [e["link"] for e in link_events(stack.obd_log)]
    assert links[:3] == ["up", "lost", "up"], links
    stack.wait_sim_done(120)
    stack.wait_delivered(60)
    assert stack.agent is not None and stack.agent.alive(), "the agent died"

    # The backend saw it: disconnected, connected again, and the DTC come and go.
    assert len(bridge_events(stack, "obd_disconnected")) == 1
    assert len(bridge_events(stack, "obd_connected")) == 2
    dtc = [(e["data"]["code"], e["data"]["status"]) for e in bridge_events(stack, "dtc")]
    assert dtc == [("P0420", "active"), ("P0420", "cleared")]
    snapshots = [
        {"signals": json.loads(r[0])}
        for r in stack._query(stack.bridge_db, "SELECT signals FROM obd ORDER BY seq")
    ]
    assert snapshots and all("Vehicle.Speed" in s["signals"] for s in snapshots[:2])

    # GPS kept flowing while the adapter was away.
    start = load_scenario(str(stack.scenario)).start_utc
    lo, hi = (
        start + timedelta(seconds=UNPLUG_AT_S),
        start + timedelta(seconds=UNPLUG_AT_S + UNPLUG_FOR_S),
    )
    positions = [
        datetime.fromisoformat(r[0])
        for r in stack._query(stack.bridge_db, "SELECT ts FROM positions")
    ]
    assert sum(lo <= p <= hi for p in positions) >= UNPLUG_FOR_S - 2

    # Status shows the gap.
    rows = stack._query(
        stack.bridge_db, f"SELECT status FROM devices WHERE device = '{stack.device}'"
    )
    health = json.loads(rows[-1][0])["health"]["obd"]
    assert health["reconnects"] >= 1
    assert health["gaps_s"] and UNPLUG_FOR_S - 1 <= health["gaps_s"][0] <= UNPLUG_FOR_S + 6
    assert health["state"] == "connected"
    assert "crashes" not in health
    assert "Traceback" not in (stack.workdir / "agent.log").read_text()
    figures.append(
        f"ELM327 unplugged {UNPLUG_FOR_S:g} s mid-drive: agent reconnected {latency:.1f} s "
        f"after the adapter returned (gap in status {health['gaps_s'][0]} s)"
    )
