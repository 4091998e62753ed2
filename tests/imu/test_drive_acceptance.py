"""Acceptance: a simulated drive in a rotated mounting, through the agent's replay.

The urban delivery scenario scripts hard braking and acceleration (real
motion, seen by the GPS too), harsh cornering and an impact (IMU only), and
mounts the IMU at an odd angle.  Its NMEA and its IMU CSV (the
simulators' bytes) go through ``telematics-agent replay``, the live code
path; the harsh events must be exactly the scenario's true episodes once
the mounting is calibrated, and without the IMU the longitudinal ones must
still come from the GNSS speed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import replay
from agent.config import SamplerConfig
from simulators.imu_out import csv_lines, iter_imu, truth_harsh, truth_impacts
from simulators.nmea_out import iter_epochs
from simulators.scenario import Scenario, load_scenario

HARSH = ("harsh_acceleration", "harsh_braking", "harsh_cornering")


def record(scenario: Scenario, folder: Path) -> tuple[Path, Path]:
    nmea = folder / "drive.nmea"
    with nmea.open("wb") as fh:
        for epoch in iter_epochs(scenario):
            fh.write(epoch.data)
    imu = folder / "drive.imu.csv"
    with imu.open("w") as fh:
        fh.writelines(line + "\n" for line in csv_lines(iter_imu(scenario)))
    return nmea, imu


def run(nmea: Path, imu: Path | None) -> list[dict[str, Any]]:
    out = io.StringIO()
    replay(
        nmea,
        out,
        device="van-7",
        sampler=SamplerConfig(),
        every_fix=False,
        rollover_floor=None,
        imu=imu,
    )
    records = [json.loads(line)["payload"]["records"][0] for line in out.getvalue().splitlines()]
    return [r for r in records if r["kind"] == "event"]


def seconds(scenario: Scenario, ts: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(ts.replace("Z", "+00:00")) - scenario.start_utc).total_seconds()


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, Path, Path]:
    scenario = load_scenario("urban_delivery")
    nmea, imu = record(scenario, tmp_path_factory.mktemp("imu-drive"))
    return scenario, nmea, imu


def matches(
    scenario: Scenario, got: list[dict[str, Any]], truth: list[Any], slack_s: float
) -> list[tuple[Any, dict[str, Any]]]:
    pairs = []
    for episode in truth:
        near = [
            e
            for e in got
            if e["type"] == episode.kind
            and e["data"].get("direction") == episode.direction
            and episode.t_start - slack_s <= seconds(scenario, e["ts"]) <= episode.t_end + slack_s
        ]
        assert len(near) == 1, f"{episode}: {len(near)} matching events"
        pairs.append((episode, near[0]))
    return pairs


def test_rotated_mounting_every_scripted_event_and_nothing_else(
    drive: tuple[Scenario, Path, Path], figures: list[str]
) -> None:
    scenario, nmea, imu = drive
    events = run(nmea, imu)
    truth = truth_harsh(scenario)
    kinds = {(t.kind, t.direction) for t in truth}
    assert {("harsh_braking", None), ("harsh_acceleration", None)} <= kinds
    assert {("harsh_cornering", "left"), ("harsh_cornering", "right")} <= kinds
    harsh = [e for e in events if e["type"] in HARSH]
    pairs = matches(scenario, harsh, truth, slack_s=1.0)
    assert len(harsh) == len(truth), [(e["type"], e["ts"]) for e in harsh]
    from agent.gps.geo import haversine_m
    from simulators.route import build_drive, state_at

    route = build_drive(scenario)
    for episode, event in pairs:
        # Placed where it started (the last fix before), not where it ended.
        start = state_at(route, episode.t_start)
        assert haversine_m(start.lat, start.lon, event["lat"], event["lon"]) < 25.0
        assert event["data"]["source"] == "imu"
        assert event["data"]["confidence"] == "high"
        assert event["data"]["speed_start_kmh"] is not None
        assert event["lat"] is not None and event["data"]["heading_deg"] is not None
    impacts = [e for e in events if e["type"] == "impact"]
    true_impacts = truth_impacts(scenario)
    assert len(impacts) == len(true_impacts) >= 1
    for event, true in zip(impacts, true_impacts, strict=True):
        assert abs(seconds(scenario, event["ts"]) - true.t_peak) <= 0.2
        assert event["data"]["peak_g"] >= 2.5
    traces = [e for e in events if e["type"] == "imu_trace"]
    assert len(traces) == len(impacts)
    figures.append(
        f"IMU drive, rotated mounting: {len(truth)} scripted harsh episodes -> "
        f"{len(pairs)} detected with the right class and side, 0 others; {len(impacts)} impact"
    )


def test_without_imu_the_longitudinal_ones_come_from_speed(
    drive: tuple[Scenario, Path, Path],
) -> None:
    scenario, nmea, _ = drive
    events = run(nmea, None)
    truth = [t for t in truth_harsh(scenario) if t.kind != "harsh_cornering"]
    harsh = [e for e in events if e["type"] in HARSH]
    pairs = matches(scenario, harsh, truth, slack_s=2.0)
    assert len(harsh) == len(truth)
    assert all(e["data"]["source"] == "gnss" and e["data"]["confidence"] == "low" for _, e in pairs)
    assert [e for e in events if e["type"] == "impact"] == []


def test_a_garbled_fix_never_places_an_impact() -> None:
    from datetime import UTC, datetime, timedelta

    from agent.gps.fix import Fix, FixMode
    from agent.imu.processor import ImuProcessor
    from agent.imu.sample import GRAVITY, ImuSample
    from agent.pipeline import ImuClock, Pipeline

    t0 = datetime(2024, 5, 14, 7, 30, tzinfo=UTC)
    pipe = Pipeline(
        imu=ImuProcessor(),
        imu_clock=ImuClock(
            of_fix=lambda f: f.mono,
            utc=lambda t: t0 + timedelta(seconds=t),
            of_utc=lambda ts: (ts - t0).total_seconds(),
        ),
    )
    good = Fix(time=t0, mono=0.0, mode=FixMode.FIX_3D, lat=52.1, lon=5.07, speed=0.0)
    bad = Fix(time=t0 + timedelta(seconds=1), mono=1.0, mode=FixMode.FIX_3D, lat=95.0, lon=5.07)
    pipe.feed_fix(good)
    assert pipe.feed_fix(bad) == [] and pipe.rejected == 1
    out = []
    for k in range(300):
        t = 1.0 + k / 100
        out += pipe.feed_imu(ImuSample(t, 4 * GRAVITY if k == 150 else 0.0, 0.0, GRAVITY))
    impacts = [r for _s, r in out if getattr(r, "type", "") == "impact"]
    assert len(impacts) == 1
    assert (impacts[0].lat, impacts[0].lon) == (52.1, 5.07)  # the last valid fix


@pytest.mark.shared_data
def test_replay_cli_reads_a_real_android_drive(shared_data: Path) -> None:
    import subprocess
    import sys

    trip = shared_data / "driving" / "driverBehaviorDataset" / "data" / "17"
    args = [sys.executable, "-m", "agent.cli", "replay", "--imu", str(trip), "--earth-frame"]
    args += ["--imu-start", "2016-05-14T14:17:08.871Z"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line)["payload"]["records"][0] for line in first.stdout.splitlines()]
    kinds = {r["type"] for r in records}
    assert {"harsh_braking", "harsh_acceleration"} <= kinds
    assert all(r["ts"].startswith("2016-05-14T14:") for r in records)
    assert all(r["data"]["confidence"] == "medium" for r in records)  # no speed known
    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.stdout == first.stdout


def test_gnss_fallback_uses_receiver_time_not_arrival_time(
    drive: tuple[Scenario, Path, Path],
) -> None:
    # Live, fixes are placed on the IMU clock by when they arrived; a replayed
    # or sped-up receiver delivers them faster than its own time runs.  The
    # speed derivative must come from the receiver's time, or every gentle
    # stop would look harsh.
    from datetime import timedelta

    from agent.gps.nmea import iter_file_fixes
    from agent.imu.processor import ImuProcessor
    from agent.pipeline import ImuClock, Pipeline

    scenario, nmea, _ = drive
    start = scenario.start_utc
    pipe = Pipeline(
        imu=ImuProcessor(),
        imu_clock=ImuClock(
            of_fix=lambda f: f.mono / 200,  # arrival: 10x faster than receiver time
            utc=lambda t: start + timedelta(seconds=t),
            of_utc=lambda ts: (ts - start).total_seconds() / 10,
        ),
    )
    out = []
    for fix in iter_file_fixes(nmea):  # mono = line number, about 20 lines per epoch
        out += pipe.feed_fix(fix)
    harsh = [r for _s, r in out if getattr(r, "type", "").startswith("harsh_")]
    truth = [t for t in truth_harsh(scenario) if t.kind != "harsh_cornering"]
    assert sorted(e.type for e in harsh) == sorted(t.kind for t in truth)
    for event, episode in zip(sorted(harsh, key=lambda e: e.ts), truth, strict=True):
        assert abs(seconds(scenario, event.ts.isoformat()) - episode.t_start) <= 2.0
