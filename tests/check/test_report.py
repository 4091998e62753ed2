"""The check's pure parts: the table, the JSON, the exit rule, and the verdicts from facts."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.buffer.peek import lock_holder
from agent.check import required_groups
from agent.check.broker import login_failure, tls_pass
from agent.check.buffer import DISK_FAIL_BYTES, DISK_WARN_BYTES, disk_row
from agent.check.clock import clock_row
from agent.check.gps import NmeaSniffer, fix_row, nmea_row, wrong_baud_fix
from agent.check.report import Row, exit_status, format_table, to_json
from agent.config import MqttConfig, TlsConfig, parse_config
from simulators.nmea_out import iter_epochs
from simulators.scenario import load_scenario
from tests.check.uart import uart_receive

ROWS = [
    Row("gps.port", "pass", "/dev/ttyACM0 opened at 9600 baud"),
    Row("gps.nmea", "fail", "nothing arrives", "check the cable"),
    Row("imu", "skip", "not configured (imu.source = none)", required=False),
    Row("clock", "warn", "not NTP-synchronised", "enable NTP", required=False),
]


def test_table_is_aligned_with_one_fix_line_per_problem() -> None:
    text = format_table(ROWS)
    lines = text.splitlines()
    assert lines[0] == "CHECK     RESULT  DETAIL"
    assert lines[1] == "gps.port  PASS    /dev/ttyACM0 opened at 9600 baud"
    assert lines[2] == "gps.nmea  FAIL    nothing arrives"
    assert lines[3] == "imu       SKIP    not configured (imu.source = none)"
    assert lines[4] == "clock     WARN    not NTP-synchronised"
    assert lines[5] == ""
    assert lines[6:8] == ["FIX: gps.nmea: check the cable", "FIX: clock: enable NTP"]
    assert lines[-1] == "NOT READY: 1 passed; 1 warning; 1 failed: gps.nmea (exit 1)"
    coloured = format_table(ROWS, colour=True)
    assert "\033[31mFAIL  \033[0m" in coloured


def test_exit_status_counts_required_failures_only() -> None:
    assert exit_status(ROWS) == 1
    assert exit_status([r for r in ROWS if r.check != "gps.nmea"]) == 0
    optional = Row("clock", "fail", "x", required=False)
    assert exit_status([optional]) == 0


def test_json_rows() -> None:
    rows = json.loads(to_json(ROWS))
    assert [r["check"] for r in rows] == ["gps.port", "gps.nmea", "imu", "clock"]
    assert rows[1] == {
        "check": "gps.nmea",
        "ok": False,
        "required": True,
        "result": "fail",
        "detail": "nothing arrives",
        "fix": "check the cable",
        "data": {},
    }
    assert rows[3]["ok"] is True and rows[0]["fix"] is None


def test_required_groups_follow_the_config() -> None:
    base = {"device": {"id": "van-1"}}
    assert required_groups(parse_config(base)) == {"gps", "broker", "buffer"}
    full = parse_config(
        {
            **base,
            "obd": {"source": "elm327"},
            "imu": {"source": "termux"},
            "clock": {"source": "system"},
        }
    )
    assert required_groups(full) == {"gps", "broker", "buffer", "obd", "imu", "clock"}


@pytest.mark.parametrize(
    ("source", "synced", "status"),
    [
        ("auto", True, "pass"),
        ("auto", False, "warn"),
        ("system", True, "pass"),
        ("system", False, "fail"),
        ("gnss", False, "pass"),
    ],
)
def test_clock_row(source: str, synced: bool, status: str) -> None:
    row = clock_row(source, synced, None)  # type: ignore[arg-type]
    assert row.status == status
    if status != "pass":
        assert "timedatectl set-ntp true" in row.fix
    if (source, synced) == ("auto", False):
        assert row.detail == "system clock not NTP-synchronised: UTC will come from the GNSS fix"


def test_clock_row_names_the_gnss_offset() -> None:
    assert clock_row("auto", False, -3 * 3600.0).detail.endswith("; 3.0 h behind GNSS time")
    assert clock_row("auto", True, 0.4).detail.endswith("; agrees with GNSS time (+0.4 s)")


def test_disk_thresholds() -> None:
    total = 8 * 1024**3
    assert disk_row(Path("/x"), DISK_FAIL_BYTES - 1, total).status == "fail"
    assert disk_row(Path("/x"), DISK_WARN_BYTES - 1, total).status == "warn"
    ok = disk_row(Path("/x"), DISK_WARN_BYTES, total)
    assert ok.status == "pass" and ok.detail == "512 MiB free of 8,192 MiB"


def test_lock_holder_reads_proc_locks(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite"
    lock = tmp_path / "outbox.sqlite.lock"
    lock.touch()
    st = lock.stat()
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    locks = (
        f"1: POSIX  ADVISORY  WRITE 99 {ident} 0 EOF\n"
        f"2: FLOCK  ADVISORY  WRITE 4242 {ident} 0 EOF\n"
        f"2: -> FLOCK  ADVISORY  WRITE 5353 {ident} 0 EOF\n"
    )
    assert lock_holder(outbox, locks) == 4242
    assert lock_holder(outbox, "1: FLOCK  ADVISORY  WRITE 7 00:00:1 0 EOF\n") is None
    assert lock_holder(tmp_path / "other.sqlite", locks) is None


def _epochs(n: int) -> list[bytes]:
    epochs = iter_epochs(load_scenario("urban_delivery"))
    return [next(epochs).data for _ in range(n)]


def test_sniffer_lists_sentences_and_fix() -> None:
    sniffer = NmeaSniffer()
    for i, data in enumerate(_epochs(3)):
        sniffer.feed(data, float(i))
    row = nmea_row(sniffer, "/dev/x", 2.0)
    assert row.status == "pass"
    assert row.detail == "24 NMEA sentences in 2.0 s (GP: RMC VTG GGA GSA GSV)"
    fix = fix_row(sniffer.fixes, 2.0)
    assert fix.status == "pass" and fix.data["sats_used"] == 9


def test_sniffer_tells_garbage_from_silence() -> None:
    silent = nmea_row(NmeaSniffer(), "/dev/x", 4.0)
    assert silent.detail == "nothing arrives from /dev/x in 4 s"
    garbled = NmeaSniffer()
    for data in _epochs(3):
        garbled.feed(uart_receive(data, 38400, 9600), 0.0)
    row = nmea_row(garbled, "/dev/x at 9600 baud", 3.0)
    assert row.status == "fail"
    assert row.detail.startswith("bytes arrive from /dev/x at 9600 baud but no valid NMEA (")


def test_uart_model_passes_matching_speeds_and_garbles_others() -> None:
    data = _epochs(1)[0]
    assert uart_receive(data, 9600, 9600) == data
    fast_into_slow = uart_receive(data, 38400, 9600)
    assert len(fast_into_slow) < len(data) / 3 and b"$GP" not in fast_into_slow
    slow_into_fast = uart_receive(data, 4800, 9600)
    assert len(slow_into_fast) > len(data) and b"$GP" not in slow_into_fast
    assert uart_receive(b"\x55", 9600, 19200) != b"\x55"


def test_wrong_baud_advice_without_a_working_rate() -> None:
    fix = wrong_baud_fix(9600, None, [4800, 38400], complete=False)
    assert "nor at the other rates tried (4800, 38400)" in fix
    assert "--timeout" in fix
    assert wrong_baud_fix(9600, 115200, [4800, 38400, 115200], True).endswith(
        "set gps.baud = 115200 in the [gps] section"
    )


def test_tls_pass_warns_near_expiry_and_when_insecure() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    soon = (now + timedelta(days=10)).strftime("%b %d %H:%M:%S %Y GMT")
    cert = {
        "subject": ((("commonName", "broker"),),),
        "issuer": ((("commonName", "fleet-ca"),),),
        "notAfter": soon,
    }
    row = tls_pass("broker", TlsConfig(), "TLSv1.3", cert, now)
    assert row.status == "warn" and row.detail.endswith("expires in 10 days")
    insecure = tls_pass("broker", TlsConfig(insecure=True), "TLSv1.3", cert, now)
    assert insecure.status == "warn" and "NOT checked" in insecure.detail


def test_login_refusals_in_words_never_the_password() -> None:
    cfg = MqttConfig(host="127.0.0.1", username="van-1", password=SecretStr("hunter2-secret"))
    for code in (0x84, 0x85, 0x86, 0x87, 0x8A, 0x88):
        row = login_failure(cfg, code, "reason")
        assert row.status == "fail" and row.fix
        assert "hunter2-secret" not in row.detail + row.fix + json.dumps(dict(row.data))
    assert 'mqtt.protocol = "3.1.1"' in login_failure(cfg, 0x84, "x").fix
    anonymous = login_failure(MqttConfig(host="127.0.0.1"), 0x87, "Not authorized")
    assert anonymous.detail == "login refused: not authorised (no user name)"
