"""``telematics-agent replay``: the live pipeline on a recording, no network."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from agent.messages import Batch, Position
from simulators.stack import command


def replay(*args: str) -> list[dict]:  # type: ignore[type-arg]
    proc = subprocess.run(
        [command("telematics-agent"), "replay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_replay_of_a_real_receiver(shared_data: Path) -> None:
    log = shared_data / "gpsd" / "logs" / "ublox-zed-f9p-nmea.log"
    every = replay("--nmea", str(log), "--every-fix")
    expected = [
        json.loads(line)
        for line in (
            shared_data / "gpsd" / "expected" / "ublox-zed-f9p-nmea.log.epochs.jsonl"
        ).open()
    ]
    fixes = [e for e in expected if e.get("time") and e.get("mode", 0) >= 2]
    assert len(every) == len(fixes)
    batches = [Batch.model_validate(line["payload"]) for line in every]
    first = batches[0].records[0]
    assert isinstance(first, Position)
    assert first.ts.isoformat() == "2019-04-12T00:39:56+00:00"
    assert abs(first.lat - fixes[0]["lat"]) < 1e-7 and abs(first.lon - fixes[0]["lon"]) < 1e-7
    assert [b.records[0].seq for b in batches] == list(range(1, len(batches) + 1))
    assert {line["topic"] for line in every} == {"fleet/replay/telemetry"}
    # The stationary receiver: the sampler keeps only the first point of 29 s.
    sampled = replay("--nmea", str(log))
    assert [r["payload"]["records"][0]["reason"] for r in sampled] == ["first"]


def test_replay_of_a_simulated_drive_is_deterministic(tmp_path: Path) -> None:
    nmea = tmp_path / "drive.nmea"
    subprocess.run(
        [
            command("telematics-sim"),
            "gps",
            "--scenario",
            "urban_delivery",
            "--duration",
            "300",
            "--out",
            str(nmea),
        ],
        check=True,
        timeout=120,
    )
    one = replay("--nmea", str(nmea))
    two = replay("--nmea", str(nmea))
    assert one == two
    positions = [r for line in one for r in line["payload"]["records"] if r["kind"] == "position"]
    reasons = [p["reason"] for p in positions]
    assert reasons[0] == "first"
    assert reasons.count("periodic") > 100
    times = [p["ts"] for p in positions]
    assert times == sorted(times)


def test_replay_reports_stops_and_never_invents_idle(tmp_path: Path) -> None:
    """Phone-style: GNSS only, no engine data. The round's five drops are
    stops of about their scripted dwell; no idle event without an engine."""
    nmea = tmp_path / "round.nmea"
    subprocess.run(
        [command("telematics-sim"), "gps", "--scenario", "urban_delivery", "--out", str(nmea)],
        check=True,
        timeout=120,
    )
    events = [
        r
        for line in replay("--nmea", str(nmea))
        for r in line["payload"]["records"]
        if r["kind"] == "event"
    ]
    kinds = [e["type"] for e in events]
    assert not [k for k in kinds if "idle" in k]
    ends = [e["data"]["duration_s"] for e in events if e["type"] == "stop_end"]
    drops = [120, 90, 150, 60, 180]  # scripted dwell at each drop (simulators/scenarios)
    assert len(ends) >= len(drops)
    for dwell in drops:  # every drop shows up as a stop of about its dwell
        assert any(dwell <= d <= dwell + 5 for d in ends), (dwell, ends)
    assert kinds.count("trip_start") == 1
