"""Passive OBD decoding and candump replay: real captures give no false readings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import can
import pytest

from agent.obd.candump import (
    CandumpError,
    PassiveObd,
    parse_candump_line,
    replay_candump,
)
from agent.obd.pids import ENGINE_SPEED, VEHICLE_SPEED

# -- real captures ----------------------------------------------------------------------------

# Frames each capture must yield (counted with grep over the data lines).
CAPTURES = {
    "css_electronics/17BD1DB7_00000006_00000170.candump.log": 2010,
    "css_electronics/2F6913DB_00000004_00000001.candump.log": 5588,
    "css_electronics/94C49784_00000005_00000002.candump.log": 9600,
    "css_electronics/94C49784_00000005_00000017-6099D010.candump.log": 84730,
    "css_electronics/FCBF0606_00003482_00000001-60B621D9.candump.log": 1815,
    "gpsd_nmea2000/logfile_20140914_365495765_can.log": 10495,
    "gpsd_nmea2000/logfile_20140914_365495765_can.nocomment.log": 10495,
}


@pytest.mark.shared_data
def test_every_capture_is_listed(shared_data: Path) -> None:
    found = {
        p.relative_to(shared_data / "can").as_posix() for p in (shared_data / "can").rglob("*.log")
    }
    assert found == set(CAPTURES)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_real_captures_replay_without_errors_or_false_readings(
    shared_data: Path, name: str, figures: list[str]
) -> None:
    """UDS 0x62 and KWP on 0x7EC / 0x7BB, J1939, NMEA 2000: none of it is a service 01
    reading.  The counts prove the frames were read, not skipped."""
    report = replay_candump(shared_data / "can" / name)
    figures.append(f"candump {report.summary()}")
    assert report.errors == []
    assert report.readings == []
    assert report.frames == CAPTURES[name]
    assert sum(report.ignored.values()) == report.frames


@pytest.mark.shared_data
def test_uds_answers_on_an_obd_reply_id_are_recognised_as_such(shared_data: Path) -> None:
    """0x7EC is in the OBD reply range; its UDS 0x62 answers are multi-frame, not 0x41."""
    report = replay_candump(
        shared_data / "can" / "css_electronics" / "17BD1DB7_00000006_00000170.candump.log"
    )
    assert report.ignored["not_single_frame"] > 1000
    assert report.ignored["not_obd_id"] > 500  # KWP on 0x7BB


@pytest.mark.shared_data
def test_comment_lines_are_skipped_not_errors(shared_data: Path) -> None:
    folder = shared_data / "can" / "gpsd_nmea2000"
    with_comments = replay_candump(folder / "logfile_20140914_365495765_can.log")
    without = replay_candump(folder / "logfile_20140914_365495765_can.nocomment.log")
    assert with_comments.lines > without.lines
    assert with_comments.frames == without.frames
    assert with_comments.ignored == without.ignored


# -- synthetic logs -----------------------------------------------------------------------------


def test_real_service_01_frames_become_exactly_those_readings(tmp_path: Path) -> None:
    log = tmp_path / "obd.log"
    log.write_text(
        "# a tester polling RPM and speed, with other traffic\n"
        "(1700000000.000000) can0 7DF#02010C5555555555 T\n"
        "(1700000000.010000) can0 7E8#04410C1AF8AAAAAA R\n"
        "(1700000000.011000) can0 0C9#8012345600000000 R\n"
        "(1700000000.020000) can0 7DF#02010D5555555555 T\n"
        "(1700000000.030000) can0 7E9#03410D2A R\n"
        "(1700000000.040000) can0 7E8#037F0112AAAAAAAA R\n"
        "(1700000000.050000) can0 18DAF110#04410C0FA0AAAAAA R\n"
        "(1700000000.060000) can0 7EC#0662F19041424300 R\n"
        "(1700000000.070000) can0 7E8#1014490201574442 R\n"
        "(1700000000.080000) can0 7E8#03410CFF R\n"
        "(1700000000.090000) can0 7E8#0341FF00 R\n"
        "(1700000000.100000) can0 18DAF210#04410C1AF8 R\n"
        "(1700000000.110000) can0 7F0#04410C1AF8 R\n"
    )
    report = replay_candump(log)
    got = [(r.timestamp, r.name, r.value, r.reply_id) for r in report.readings]
    assert got == [
        (1700000000.01, ENGINE_SPEED, 1726.0, 0x7E8),
        (1700000000.03, VEHICLE_SPEED, 42.0, 0x7E9),
        (1700000000.05, ENGINE_SPEED, 1000.0, 0x18DAF110),
    ]
    assert report.errors == []
    assert report.frames == 13
    assert report.ignored == {
        "not_obd_id": 5,  # 7DF x2, 0C9, 18DAF210 (to another tester), 7F0 (outside 7E8-7EF)
        "other_service": 2,  # NRC 7F, UDS 62
        "not_single_frame": 1,
        "short": 1,  # 41 0C with one data byte
        "unknown_pid": 1,
    }


def test_malformed_lines_are_counted_with_their_line_numbers(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    log.write_text(
        "(1700000000.000000) can0 7E8#04410C1AF8 R\n"
        "garbage\n"
        "(1700000000.010000) can0 7E8#04410C1AF R\n"
        "\n"
        "(1700000000.020000) can0 7E8#04410C1AF80000000000 R\n"
        "(1700000000.030000) can0 FFF#00 R\n"
        "(notatime) can0 7E8#00\n"
        "(1700000000.040000) can0 7E8#04410C0FA0\n"
    )
    report = replay_candump(log)
    assert [n for n, _ in report.errors] == [2, 3, 5, 6, 7]
    assert "odd number of hex digits" in report.errors[1][1]
    assert "10 data bytes" in report.errors[2][1]
    assert [r.value for r in report.readings] == [1726.0, 1000.0]
    assert report.lines == 8 and report.frames == 2
    assert "2 OBD readings" in report.summary() and "5 bad lines" in report.summary()


def test_a_binary_file_is_reported_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "noise.log"
    log.write_bytes(bytes(range(256)) * 20)
    report = replay_candump(log)
    assert report.frames == 0 and report.readings == [] and report.errors


@pytest.mark.parametrize(
    ("line", "check"),
    [
        ("(1.5) vcan0 123#R", lambda m: m.is_remote_frame and m.dlc == 0),
        ("(1.5) vcan0 123#R4", lambda m: m.is_remote_frame and m.dlc == 4),
        ("(1.5) vcan0 123##1" + "00" * 12, lambda m: m.is_fd and len(m.data) == 12),
        ("(1.5) vcan0 20000080#0000000000000000", lambda m: m.is_error_frame),
        ("(1.5) vcan0 00000123#11", lambda m: m.is_extended_id and m.arbitration_id == 0x123),
        ("(1.5) vcan0 123#", lambda m: m.dlc == 0 and not m.is_extended_id),
        ("(1.5) can1 7BB#10266201007E5007 T", lambda m: not m.is_rx and m.channel == "can1"),
    ],
)
def test_candump_line_forms(line: str, check: Callable[[can.Message], bool]) -> None:
    msg = parse_candump_line(line)
    assert msg is not None and check(msg)


def test_comment_and_blank_lines_are_not_frames() -> None:
    assert parse_candump_line("# Name: NMEA2000 Bus") is None
    assert parse_candump_line("   \n") is None
    with pytest.raises(CandumpError):
        parse_candump_line("(1.5) vcan0 7E8 04410C1AF8")


def test_passive_decoder_on_live_frames() -> None:
    """The same decoder works on frames from a bus (e.g. another tester's traffic)."""
    passive = PassiveObd()
    frames = [
        can.Message(arbitration_id=0x7E8, is_extended_id=False, data=bytes.fromhex("03410D37")),
        can.Message(arbitration_id=0x7E8, is_extended_id=True, data=bytes.fromhex("03410D37")),
        can.Message(arbitration_id=0x7E8, is_error_frame=True),
    ]
    readings = [passive.feed(m) for m in frames]
    assert [r.value if r else None for r in readings] == [55.0, None, None]
    assert passive.ignored == {"not_obd_id": 1, "not_data_frame": 1}
    assert passive.frames == 3
