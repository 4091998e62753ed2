"""Issue acceptance: a scripted working day through replay gives the scripted idles and trips.

The urban delivery scenario scripts the engine: idling at the depot and at
drops, off at some drops (the trip splits there), traffic-light stops, a
slow-traffic crawl and a speeding stretch.  Its NMEA (the GPS simulator's
bytes) and OBD log (the simulated ECU polled as the agent polls) go
through ``telematics-agent replay``, the same code as the live agent, and
the events are scored against the scenario's own truth.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.cli import replay
from agent.config import SamplerConfig, TripsConfig
from simulators.nmea_out import iter_epochs
from simulators.obd_log import iter_obd_log
from simulators.route import build_drive, state_at
from simulators.scenario import Scenario, load_scenario
from simulators.truth import engine_periods, idle_periods

THRESHOLD_S = TripsConfig().idle_threshold_s
EXCESSIVE_S = TripsConfig().excessive_idle_s


def record(scenario: Scenario, folder: Path, *, obd: bool = True) -> tuple[Path, Path | None]:
    nmea = folder / f"{scenario.name}.nmea"
    with nmea.open("wb") as fh:
        for epoch in iter_epochs(scenario):
            fh.write(epoch.data)
    if not obd:
        return nmea, None
    log = folder / f"{scenario.name}.obd.jsonl"
    with log.open("w") as fh:
        for ex in iter_obd_log(scenario):
            fh.write(ex.to_json() + "\n")
    return nmea, log


def run_replay(nmea: Path, obd: Path | None) -> str:
    out = io.StringIO()
    replay(
        nmea,
        out,
        device="van-7",
        sampler=SamplerConfig(),
        every_fix=False,
        rollover_floor=None,
        trips=TripsConfig(overspeed_kmh=55.0),
        obd=obd,
    )
    return out.getvalue()


def events(text: str, *types: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        rec = json.loads(line)["payload"]["records"][0]
        if rec["kind"] == "event" and (not types or rec["type"] in types):
            out.append(rec)
    return out


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds(scenario: Scenario, text: str) -> float:
    return (utc(text) - scenario.start_utc).total_seconds()


@pytest.fixture(scope="module")
def workday(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, str]:
    scenario = load_scenario("urban_delivery")
    nmea, obd = record(scenario, tmp_path_factory.mktemp("workday"))
    return scenario, run_replay(nmea, obd)


def test_every_scripted_idle_is_reported_within_2_s(workday: tuple[Scenario, str]) -> None:
    scenario, text = workday
    truth = idle_periods(scenario)
    must = [p for p in truth if p.duration_s >= THRESHOLD_S + 2]
    must_not = [p for p in truth if p.duration_s <= THRESHOLD_S - 2]
    assert len(must) >= 3, "the scenario should script several idles past the threshold"
    ends = events(text, "idle_end")
    reported = [(seconds(scenario, e["data"]["start"]), e["data"]["duration_s"]) for e in ends]
    for period in must:
        match = [d for s, d in reported if abs(s - period.start_s) <= 2.0]
        assert len(match) == 1, (
            f"idle at {period.stop_name} ({period.start_s:.0f} s) not reported once"
        )
        assert abs(match[0] - period.duration_s) <= 2.0, (period, match)
    for period in must_not:
        assert not any(abs(s - period.start_s) <= 2.0 for s, _ in reported), period
    assert len(ends) <= len(truth) - len(must_not)
    assert len(events(text, "idle_start")) == len(ends)
    long_idles = [p for p in truth if p.duration_s >= EXCESSIVE_S + 2]
    assert long_idles, "the scenario should script one excessive idle"
    assert len(events(text, "excessive_idle")) == len(long_idles)


def test_no_idle_while_moving(workday: tuple[Scenario, str]) -> None:
    scenario, text = workday
    drive = build_drive(scenario)
    for e in events(text, "idle_start", "idle_end"):
        start = seconds(scenario, e["data"].get("start", e["ts"]))
        # Two seconds into a reported idle, the van truly stands still.
        assert state_at(drive, start + 2.0).speed_mps == 0.0, e
    # The slow-traffic crawl (walking pace, engine running) is neither a stop nor idling:
    # the longest run of seconds below 10 km/h without standing still.
    slow = [t for t in range(int(drive.duration)) if 0 < state_at(drive, t).speed_mps * 3.6 < 10]
    runs: list[list[int]] = []
    for t in slow:
        if runs and t == runs[-1][-1] + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    crawl = max(runs, key=len)
    assert len(crawl) > 100, "the scenario should script a slow-traffic stretch"
    for e in events(text, "stop_start", "stop_end", "idle_start", "idle_end"):
        assert not crawl[0] <= seconds(scenario, e["ts"]) <= crawl[-1], e
    stops = events(text, "stop_start", "stop_end")
    assert stops and all(e["data"]["engine"] in ("running", "off") for e in stops)


def test_trips_split_where_the_engine_stops(workday: tuple[Scenario, str]) -> None:
    scenario, text = workday
    running = engine_periods(scenario)
    starts = events(text, "trip_start")
    ends = events(text, "trip_end")
    assert len(running) >= 2, "the scenario should switch the engine off at a drop"
    assert len(starts) == len(running)
    for (lo, _hi), start in zip(running, starts, strict=True):
        assert abs(seconds(scenario, start["ts"]) - lo) <= 3.0
        assert start["data"]["reason"] == "engine"
    # Every run but maybe the last ends with the engine; the last one too if the drive ends.
    assert len(ends) == len(running)
    for (_lo, hi), start, end in zip(running, starts, ends, strict=True):
        assert abs(seconds(scenario, end["ts"]) - hi) <= 5.0
        assert end["data"]["reason"] == "engine_off"
        assert end["data"]["distance_m"] > 0
        # The odometer (PID A6, 0.1 km steps, read every 10 s) agrees with GNSS.
        odo_m = end["data"]["odometer_km"] * 1000
        assert abs(odo_m - end["data"]["distance_m"]) <= 250, end["data"]
        # harsh: the harsh events the same replay reported inside the trip, by type.
        inside = [
            e["type"]
            for e in events(text, "harsh_acceleration", "harsh_braking", "harsh_cornering")
            if start["ts"] <= e["ts"] <= end["ts"]
        ]
        assert sum(end["data"]["harsh"].values()) == len(inside)


def test_speeding_stretch_is_one_event(workday: tuple[Scenario, str]) -> None:
    _scenario, text = workday
    over = events(text, "overspeed")
    assert len(over) == 1
    assert over[0]["data"]["max_speed_kmh"] > 60


def test_replaying_twice_gives_identical_events(
    workday: tuple[Scenario, str], tmp_path: Path
) -> None:
    scenario, text = workday
    nmea, obd = record(scenario, tmp_path)
    assert run_replay(nmea, obd) == text


def test_parked_with_drift_makes_no_trip_and_no_idle(tmp_path: Path) -> None:
    # 30 minutes parked, engine off, GNSS wandering up to 15 m; then the
    # driver starts the engine and drives off: one real trip, at the end only.
    scenario = load_scenario("parked_drift")
    nmea, obd = record(scenario, tmp_path)
    (drive_off, _), *more = engine_periods(scenario)
    assert drive_off >= 1790 and not more
    text = run_replay(nmea, obd)
    trips = events(text, "trip_start")
    assert [seconds(scenario, e["ts"]) for e in trips] == [pytest.approx(drive_off, abs=3.0)]
    assert events(text, "idle_start", "idle_end") == []
    stops = events(text, "stop_start")
    assert len(stops) == 1  # one stop for the whole half hour, not one per wander


def test_phone_without_obd_reports_stops_never_idle(tmp_path: Path) -> None:
    scenario = load_scenario("urban_delivery")
    nmea, _ = record(scenario, tmp_path, obd=False)
    text = run_replay(nmea, None)
    stops = events(text, "stop_start")
    assert len(stops) >= 5
    assert all(e["data"]["engine"] == "unknown" for e in events(text, "stop_start", "stop_end"))
    assert events(text, "idle_start", "idle_end", "excessive_idle", "engine_on") == []


def test_scripted_dtc_appears_once_and_clears_once(workday: tuple[Scenario, str]) -> None:
    scenario, text = workday
    (dtc,) = scenario.dtcs
    got = events(text, "dtc")
    assert [(e["data"]["code"], e["data"]["status"]) for e in got] == [
        (dtc.code, "active"),
        (dtc.code, "cleared"),
    ]
    assert got[0]["data"]["description"]
    # DTCs are read every 60 s: each event within one read of the script.
    assert 0 <= seconds(scenario, got[0]["ts"]) - dtc.at_s <= 61
    assert dtc.cleared_at_s is not None
    assert 0 <= seconds(scenario, got[1]["ts"]) - dtc.cleared_at_s <= 61
