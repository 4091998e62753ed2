"""``telematics-agent replay --obd`` and ``--candump`` as an installer or tester runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.obd_log import iter_obd_log
from simulators.scenario import load_scenario


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.shared_data
def test_candump_of_a_real_uds_capture_reads_no_obd_value(shared_data: Path) -> None:
    log = shared_data / "can" / "css_electronics" / "17BD1DB7_00000006_00000170.candump.log"
    proc = agent("replay", "--candump", str(log))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # UDS 0x62 answers on 0x7EC are not OBD readings
    lines = sum(1 for _ in log.open())
    assert f"{lines} lines, {lines} frames, 0 OBD readings" in proc.stderr
    # The 0x7EC frames are a UDS multi-frame answer: none is a single frame.
    assert "not_single_frame" in proc.stderr and "0 bad lines" in proc.stderr


def test_candump_with_obd_frames_and_a_bad_line(tmp_path: Path) -> None:
    log = tmp_path / "bus.log"
    log.write_text(
        "(1700000000.000000) can0 7DF#02010C5555555555 T\n"
        "(1700000000.010000) can0 7E8#04410C1AF8555555 R\n"
        "(1700000000.020000) can0 7E8#03410D32555555 R\n"
        "this is not a frame\n"
        "(1700000000.030000) can0 18FEF100#FFFFFFFFFFFFFFFF R\n"
    )
    proc = agent("replay", "--candump", str(log))
    assert proc.returncode == 0, proc.stderr
    readings = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["name"], r["value"], r["id"]) for r in readings] == [
        ("Vehicle.Powertrain.CombustionEngine.Speed", 1726.0, "7E8"),
        ("Vehicle.Speed", 50.0, "7E8"),
    ]
    assert f"{log}:4:" in proc.stderr and "1 bad lines" in proc.stderr


def test_obd_log_replay_alone_and_its_bad_lines(tmp_path: Path) -> None:
    scenario = load_scenario("urban_delivery")
    log = tmp_path / "drive.obd.jsonl"
    lines = [ex.to_json() for ex in iter_obd_log(scenario, duration_s=120)]
    lines.insert(10, '{"ts":"2024-05-14T07:30:02Z","req":"010C"}')  # no outcome
    lines.insert(20, "garbage")
    log.write_text("\n".join(lines) + "\n")
    first = agent("replay", "--obd", str(log))
    assert first.returncode == 0, first.stderr
    assert f"{log}:11: rejected: a request needs exactly one of" in first.stderr
    assert f"{log}:21: rejected: not JSON" in first.stderr
    records = [json.loads(line)["payload"]["records"][0] for line in first.stdout.splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"event", "obd"}
    types = [r["type"] for r in records if r["kind"] == "event"]
    assert types[:2] == ["vehicle_identified", "engine_on"]
    snaps = [r for r in records if r["kind"] == "obd"]
    assert len(snaps) >= 10 and "Vehicle.Speed" in snaps[-1]["signals"]
    assert agent("replay", "--obd", str(log)).stdout == first.stdout  # deterministic


def test_replay_needs_an_input() -> None:
    proc = agent("replay")
    assert proc.returncode == 2
    assert "replay needs --nmea, --obd" in proc.stderr
