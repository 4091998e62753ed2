"""The ``telematics-sim`` command line: list, info, --out, and its error handling."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pynmea2
import pytest

from simulators.cli import main
from simulators.nmea_out import iter_epochs
from simulators.scenario import load_scenario, with_gnss
from simulators.truth import idle_periods

REPO = Path(__file__).resolve().parents[2]


def test_list_names_the_bundled_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["highway", "parked_drift", "urban_20_stops", "urban_delivery"]
    assert "km" in out and "7 stops" in out  # urban_delivery: 5 drops, 2 lights


def test_info_gives_the_stop_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "urban_delivery"]) == 0
    out = capsys.readouterr().out
    assert "Drop 1 Zuilen" in out and "dwell   120s" in out and "driving 0:15:" in out


def test_out_file_is_the_whole_drive_as_the_renderer_makes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "drive.nmea"
    argv = ["gps", "--scenario", "urban_delivery", "--out", str(target), "--rate", "5"]
    assert main([*argv, "--talker", "GN", "--duration", "300"]) == 0
    expected = with_gnss(load_scenario("urban_delivery"), rate_hz=5, talker="GN")
    data = target.read_bytes()
    assert data == b"".join(e.data for e in iter_epochs(expected, duration_s=300))
    lines = data.decode("ascii").split("\r\n")[:-1]
    assert sum(1 for x in lines if x.startswith("$GNRMC")) == 1501
    for line in lines[:200]:
        pynmea2.parse(line, check=True)
    err = capsys.readouterr().err
    assert "1501 epochs" in err and "duration reached" in err


def test_out_with_loop_makes_a_long_drive(tmp_path: Path) -> None:
    target = tmp_path / "long.nmea"
    argv = ["gps", "--scenario", "urban_delivery", "--out", str(target)]
    assert main([*argv, "--loop", "--duration", "4000"]) == 0
    rmc = [x for x in target.read_bytes().split(b"\r\n") if x.startswith(b"$GPRMC")]
    assert len(rmc) == 4001
    last = pynmea2.parse(rmc[-1].decode())
    assert last.timestamp.hour == 8 and last.timestamp.minute == 36  # 07:30 + 4000 s


def test_out_to_stdout_survives_a_closed_pipe() -> None:
    cmd = [sys.executable, "-m", "simulators.cli", "gps", "--scenario", "highway", "--out", "-"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    _out, err = proc.communicate(timeout=30)
    assert first.startswith(b"$GNRMC")
    assert proc.returncode == 0, err
    assert b"reader closed the output" in err and b"Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gps", "--scenario", "urban_delivery"], "needs an output"),
        (["gps", "--scenario", "urban_delivery", "--out", "x", "--pty"], "cannot be combined"),
        (["gps", "--scenario", "urban_delivery", "--out", "x", "--loop"], "needs --duration"),
        (["gps", "--scenario", "urban_delivery", "--out", "x", "--speed", "5"], "--speed"),
        (["gps", "--scenario", "urban_delivery", "--pty", "--speed", "0"], "positive"),
        (["gps", "--scenario", "urban_delivery", "--tcp", "70000"], "0..65535"),
    ],
)
def test_bad_command_lines_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_scenarios_and_overrides_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("start_utc = 2024-05-14T07:30:00Z\n[route]\nwaypoints = [{lat=1, lon=2}]\n")
    assert main(["gps", "--scenario", str(bad), "--out", "-"]) == 2
    assert "route.waypoints: needs at least 2 waypoints" in capsys.readouterr().err
    assert main(["gps", "--scenario", "urban_delivery", "--pty", "--rate", "20"]) == 2
    assert "gnss.rate_hz:" in capsys.readouterr().err
    assert main(["info", "nowhere"]) == 2
    assert "not a bundled scenario" in capsys.readouterr().err


def test_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["gps", "--scenario", "urban_delivery", "--tcp", str(port)]) == 1
    assert "cannot start the device" in capsys.readouterr().err


def test_truth_kinds_idle_and_engine(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = load_scenario("urban_delivery")
    assert main(["truth", "--scenario", "urban_delivery", "--kind", "idle"]) == 0
    idles = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert idles == [p.to_json() for p in idle_periods(scenario)]
    assert (
        idles[0]["stop"] == "Depot Lage Weide" and idles[0]["start"] == "2024-05-14T07:30:00.000Z"
    )
    assert main(["truth", "--scenario", "parked_drift", "--kind", "engine"]) == 0
    runs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["start_s"] for r in runs] == [1792.0]
    assert main(["truth", "--scenario", "urban_delivery", "--kind", "zones"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5  # the five drop zones
    with pytest.raises(SystemExit):
        main(["truth", "--scenario", "urban_delivery", "--kind", "idle", "--duration", "60"])
    assert "covers the route once" in capsys.readouterr().err
