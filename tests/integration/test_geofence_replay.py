"""Acceptance (geofences), through the real commands: a rendered drive, its
zones and its ground truth from the simulator, events from `replay --zones`."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from simulators.stack import command


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=300).stdout


def events_for(scenario: str, tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nmea = tmp_path / f"{scenario}.nmea"
    zones = tmp_path / f"{scenario}.geojson"
    run(command("telematics-sim"), "gps", "--scenario", scenario, "--out", str(nmea))
    zones.write_text(
        run(command("telematics-sim"), "zones", "--scenario", scenario, "--format", "geojson")
    )
    truth = [
        json.loads(line)
        for line in run(command("telematics-sim"), "truth", "--scenario", scenario).splitlines()
    ]
    lines = run(command("telematics-agent"), "replay", "--nmea", str(nmea), "--zones", str(zones))
    records = [r for line in lines.splitlines() for r in json.loads(line)["payload"]["records"]]
    events = [r for r in records if r["kind"] == "event" and r["type"].startswith("geofence_")]
    return events, truth


def t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_twenty_stops_each_enter_dwell_exit_once_within_2s(
    tmp_path: Path, figures: list[str]
) -> None:
    events, truth = events_for("urban_20_stops", tmp_path)
    assert len(truth) == 20
    by_zone: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        by_zone[e["data"]["zone_id"]][e["type"]].append(e)
    worst = 0.0
    for visit in truth:
        got = by_zone[visit["zone_id"]]
        for kind in ("geofence_enter", "geofence_dwell", "geofence_exit"):
            assert len(got[kind]) == 1, f"{visit['zone_id']}: {len(got[kind])} x {kind}"
        entered = t(got["geofence_enter"][0]["data"]["entered_at"])
        exited = t(got["geofence_exit"][0]["data"]["exited_at"])
        err_in = abs((entered - t(visit["entered"])).total_seconds())
        err_out = abs((exited - t(visit["exited"])).total_seconds())
        assert err_in <= 2.0 and err_out <= 2.0, (visit, entered, exited)
        worst = max(worst, err_in, err_out)
    assert set(by_zone) == {v["zone_id"] for v in truth}  # nothing at zones never visited
    figures.append(
        f"geofences, 20-stop round: 20 x enter/dwell/exit exactly once; worst time error {worst:.2f} s"
    )


def test_parked_on_a_border_with_drift_gives_no_enter_or_exit(
    tmp_path: Path, figures: list[str]
) -> None:
    events, truth = events_for("parked_drift", tmp_path)
    assert truth == []
    spurious = [
        e for e in events if e["type"] in ("geofence_enter", "geofence_exit", "geofence_dwell")
    ]
    assert spurious == []
    figures.append("geofences, 30 min parked 10 m outside a border with 15 m drift: 0 enter/exit")
