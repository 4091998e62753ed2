"""The runtime's IMU path: an impact is stamped from the trusted clock and queued first."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.clock import Clock
from agent.config import parse_config
from agent.gps.fix import Fix, FixMode
from agent.gps.termux_source import TermuxLocationSource
from agent.imu.sample import GRAVITY, ImuSample
from agent.imu.termux import TermuxSensorSource
from agent.power import BatteryState, PowerPolicy
from agent.runtime import Agent, gps_source

GNSS = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class Mono:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_impact_goes_to_the_priority_lane_with_gnss_time(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "device": {"id": "van-1"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {"path": str(tmp_path / "o.sqlite"), "commit_interval_s": 0},
            "clock": {"source": "gnss"},
        },
        {},
    )
    mono = Mono()
    clock = Clock("gnss", mono=mono, wall=lambda: 0.0, synced=lambda: False)
    agent = Agent(cfg, gps_source(cfg.gps), clock=clock, mono=mono)
    try:
        for i in range(20):  # parked, 1 Hz fixes: GNSS time anchors the clock
            mono.t = 1000.0 + i
            fix = Fix(
                time=GNSS + timedelta(seconds=i),
                mono=mono.t,
                mode=FixMode.FIX_3D,
                lat=52.0,
                lon=4.0,
                speed=0.0,
                course=90.0,
            )
            agent.handle_fix(fix)
            # 100 Hz of a sensor lying flat, with a 4 g shove sideways at 1015.5
            batch = [
                ImuSample(
                    mono.t + k / 100,
                    (4 * GRAVITY if abs(mono.t + k / 100 - 1015.5) < 0.006 else 0.0),
                    0.0,
                    GRAVITY,
                )
                for k in range(100)
            ]
            agent.handle_imu(batch)
        agent.outbox.commit()
        rows = agent.outbox.next_batch("events", 0, 100, 10**6, priority=True)
        assert len(rows) == 1
        impact = json.loads(rows[0][1])
        assert impact["type"] == "impact"
        assert impact["ts"] == "2026-03-02T08:00:15.500000Z"  # GNSS time of the spike
        assert impact["data"]["peak_g"] >= 3.9 and impact["lat"] == 52.0
        others = [
            json.loads(b)["type"] for _, b in agent.outbox.next_batch("events", 0, 100, 10**6)
        ]
        assert "impact" not in others and "imu_trace" in others
        assert agent.health()["imu"]["impacts"] == 1
    finally:
        agent.outbox.close()


def test_a_phones_power_plan_drives_its_imu(tmp_path: Path) -> None:
    """gps = termux and imu = termux: the GPS source's plan turns the sensors off and on."""
    cfg = parse_config(
        {
            "device": {"id": "phone-1"},
            "gps": {"source": "termux"},
            "imu": {"source": "termux"},
            "buffer": {"path": str(tmp_path / "o.sqlite")},
            "clock": {"source": "system"},
        },
        {},
    )
    agent = Agent(cfg, gps_source(cfg.gps))
    try:
        gps, imu = agent.source, agent.imu_source
        assert isinstance(gps, TermuxLocationSource) and isinstance(imu, TermuxSensorSource)
        assert gps.on_plan is not None
        policy = PowerPolicy()
        parked = policy.plan(BatteryState(percent=60, powered=False), "parked")
        assert not parked.imu_on
        gps.on_plan(parked)
        assert imu.paused == parked.reason and imu.status()["paused"] == parked.reason
        low = policy.plan(BatteryState(percent=15, powered=False), "moving")
        assert low.imu_on
        gps.on_plan(low)
        assert imu.paused is None and imu.delay_ms == low.imu_delay_ms
    finally:
        agent.outbox.close()


def test_a_phones_plan_keeps_the_configured_imu_rate(tmp_path: Path) -> None:
    """imu.rate_hz = 50 (-d 20): a plan change scales 20 ms, never the policy's default 10."""
    cfg = parse_config(
        {
            "device": {"id": "phone-1"},
            "gps": {"source": "termux"},
            "imu": {"source": "termux", "rate_hz": 50},
            "buffer": {"path": str(tmp_path / "o.sqlite")},
            "clock": {"source": "system"},
        },
        {},
    )
    agent = Agent(cfg, gps_source(cfg.gps))
    try:
        gps, imu = agent.source, agent.imu_source
        assert isinstance(gps, TermuxLocationSource) and isinstance(imu, TermuxSensorSource)
        assert gps.on_plan is not None and imu.delay_ms == 20
        low = gps.options.policy.plan(BatteryState(percent=15, powered=False), "moving")
        gps.on_plan(low)
        assert imu.delay_ms == 60  # 20 ms x 3 on a low battery
    finally:
        agent.outbox.close()
