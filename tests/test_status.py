"""agent.status: the status file's content, the verdict and exit status, the table.

The judging and formatting are pure and tested on built documents; the file
writing, the outbox counting and the liveness test on real files (a real
outbox, a real process that has exited).  The real agent end to end is
tests/integration/test_status_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.buffer.outbox import Outbox
from agent.buffer.peek import backlog
from agent.clock import Clock
from agent.config import parse_config
from agent.gps.file_source import FileSource
from agent.gps.fix import Fix, FixMode
from agent.runtime import Agent, gps_source
from agent.status import (
    EXIT_DEGRADED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_UNKNOWN,
    STALE_AFTER_S,
    Limits,
    Seen,
    StatusFile,
    agent_doc,
    assess,
    fix_summary,
    observe,
    problems_of,
    render,
    source_states,
    status_path,
    to_json,
)
from simulators.broker import free_port

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LIMITS = Limits()


def gps_health(connected: bool = True, error: str | None = None) -> dict[str, Any]:
    return {
        "name": "gps-serial",
        "kind": "serial",
        "target": "/dev/gps0",
        "connected": connected,
        "reconnects": 2,
        "last_error": error,
    }


def health(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "clock": "gnss",
        "waiting_for_time": 0,
        "gps": gps_health(),
        "imu": {"detection": "gnss (lower confidence)"},
        "outbox": {"uncommitted": 3, "dropped": 0, "used_mb": 1.25, "expired": 0, "thinned": 40},
        "outbox_error": None,
        "uplink": {
            "connected": True,
            "broker": "mqtt.example:8883",
            "reconnects": 1,
            "down_s": None,
            "last_ack_s": 1.5,
            "last_acked_seq": 812,
            "last_error": None,
        },
    }
    base.update(over)
    return base


def doc(
    *,
    fix_age: float | None = 0.4,
    uptime: float = 300.0,
    state: str = "running",
    backlog_: dict[str, Any] | None = None,
    **over: Any,
) -> dict[str, Any]:
    h = health(**over)
    last_fix = None if fix_age is None else fix_summary(T0, 52.3676, 4.90414, fix_age, sats=9)
    d = agent_doc(
        state=state,
        pid=4242,
        boot_id="boot-1",
        device="van-7",
        version="0.1.0",
        config_hash="abc123def456",
        epoch="e" * 32,
        outbox=Path("/var/lib/telematics/outbox.sqlite"),
        started_wall=T0.timestamp() - uptime,
        uptime_s=uptime,
        wall=T0.timestamp(),
        mono=5000.0,
        utc_now=T0,
        health=h,
        last_fix=last_fix,
    )
    d["outbox"].update(
        backlog_ or {"waiting": {"telemetry": 17, "events": 1}, "total": 18, "oldest_age_s": 21.0}
    )
    return d


def running(d: dict[str, Any], age: float = 0.5) -> Seen:
    return Seen(Path("/s.json"), Path("/o.sqlite"), d, True, 4242, age, age)


# -- the agent's side -------------------------------------------------------------


def test_source_states() -> None:
    s = source_states(health(), 0.4)
    assert s["gps"] == {"state": "fix", "detail": "serial /dev/gps0"}
    assert s["obd"]["state"] == "-" and s["imu"]["state"] == "-"
    assert source_states(health(), 30.0)["gps"]["state"] == "no fix"
    assert source_states(health(), None)["gps"]["state"] == "no fix"
    down = source_states(health(gps=gps_health(False, "SerialException: gone")), None)["gps"]
    assert down == {"state": "down", "detail": "serial /dev/gps0: SerialException: gone"}
    obd = {"state": "no_adapter", "adapter": None, "port": "/dev/obd0", "last_error": "no answer"}
    assert source_states(health(obd=obd), 1)["obd"] == {
        "state": "no_adapter",
        "detail": "/dev/obd0: no answer",
    }
    imu = {
        "detection": "imu",
        "calibration": {"state": "calibrated"},
        "source": {"target": "i2c-1 0x68", "connected": True, "problems": []},
    }
    assert source_states(health(imu=imu), 1)["imu"] == {
        "state": "ok",
        "detail": "i2c-1 0x68, imu, mounting calibrated",
    }
    imu["source"] = {"target": "i2c-1 0x68", "connected": False, "last_error": "EREMOTEIO"}
    assert source_states(health(imu=imu), 1)["imu"]["state"] == "down"


def test_the_document_holds_what_status_shows() -> None:
    d = doc()
    assert d["format"] == 1 and d["state"] == "running" and d["pid"] == 4242
    assert d["written"] == {"utc": "2026-03-02T08:00:00.000Z", "wall": T0.timestamp(), "mono": 5000}
    assert d["started"] == "2026-03-02T07:55:00.000Z"
    assert d["last_fix"] == {
        "utc": "2026-03-02T08:00:00Z",
        "age_s": 0.4,
        "lat": 52.3676,
        "lon": 4.90414,
        "sats": 9,
    }
    assert d["outbox"]["trimmed"] == {
        "expired": 0,
        "thinned": 40,
        "dropped": 0,
        "dropped_events": 0,
    }
    assert d["outbox"]["uncommitted"] == 3 and d["outbox"]["used_mb"] == 1.25
    assert d["uplink"]["last_acked_seq"] == 812
    json.dumps(d)  # JSON-able as it stands


# -- judging ----------------------------------------------------------------------


def test_a_healthy_agent_exits_0() -> None:
    v = assess(running(doc()), LIMITS)
    assert (v.state, v.exit, v.problems) == ("running", EXIT_OK, ())
    assert v.headline == "van-7: running, pid 4242, up 5 min (version 0.1.0, config abc123def456)"


def test_offline_long_enough_is_degraded() -> None:
    uplink = {**health()["uplink"], "connected": False, "down_s": 50.0, "last_error": "refused"}
    assert assess(running(doc(uplink=uplink), age=5), LIMITS).exit == EXIT_OK  # 55 s < 60 s
    v = assess(running(doc(uplink=uplink), age=12), LIMITS)
    assert v.exit == EXIT_DEGRADED and v.state == "degraded"
    assert v.problems == ("not connected to mqtt.example:8883 for 62 s: refused",)
    assert v.headline.startswith("van-7: running, degraded, pid 4242")


def test_no_fix_counts_from_the_last_fix_or_the_start() -> None:
    assert problems_of(doc(fix_age=59.6), 0.5, LIMITS) == ["no GPS fix for 60 s"]
    assert problems_of(doc(fix_age=59.4), 0.5, LIMITS) == []
    assert problems_of(doc(fix_age=None, uptime=30.0), 0.5, LIMITS) == []
    down = gps_health(False, "FileNotFoundError: /dev/gps0")
    assert problems_of(doc(fix_age=None, uptime=90.0, gps=down), 0, LIMITS) == [
        "no GPS fix since the agent started 90 s ago "
        "(gps down: serial /dev/gps0: FileNotFoundError: /dev/gps0)"
    ]
    assert problems_of(doc(fix_age=5.0), 0, Limits(no_fix_s=4)) == ["no GPS fix for 5.0 s"]


def test_an_old_backlog_and_outbox_faults_are_degraded() -> None:
    old = {"waiting": {"telemetry": 9000, "events": 3}, "total": 9003, "oldest_age_s": 3600.0}
    assert problems_of(doc(backlog_=old), 0, LIMITS) == [
        "oldest unsent record is 60 min old (9003 waiting)"
    ]
    d = doc(outbox_error="database or disk is full")
    d["outbox"]["dropped"] = 12
    assert problems_of(d, 0, LIMITS) == [
        "outbox: database or disk is full",
        "12 records lost: the disk refused writes for too long",
    ]


def test_sources_and_the_clock_can_degrade() -> None:
    obd = {"state": "no_adapter", "port": "/dev/obd0", "last_error": "no answer"}
    imu = {"source": {"target": "i2c", "connected": False, "last_error": "EIO"}}
    assert problems_of(doc(obd=obd, imu=imu), 0, LIMITS) == [
        "OBD no_adapter: /dev/obd0: no answer",
        "IMU down: i2c: EIO",
    ]
    assert problems_of(doc(obd={**obd, "state": "vehicle_off"}), 0, LIMITS) == []
    waiting = doc(fix_age=None, uptime=61, clock="none", waiting_for_time=2)
    assert problems_of(waiting, 0, LIMITS)[-1] == (
        "2 events wait for a trusted clock (no NTP sync and no GPS time yet)"
    )


def test_not_running_and_unknown() -> None:
    path, outbox = Path("/s.json"), Path("/o.sqlite")
    stopped = doc(state="stopped")
    v = assess(Seen(path, outbox, stopped, False, None, None, 125.0), LIMITS)
    assert (v.state, v.exit) == ("not running", EXIT_NOT_RUNNING)
    assert v.headline == (
        "van-7: agent not running (last seen 2026-03-02 08:00:00Z, 2 min ago; stopped cleanly)"
    )
    v = assess(Seen(path, outbox, doc(), False, None, None, 10.0), LIMITS)
    assert v.exit == EXIT_NOT_RUNNING and "it did not stop cleanly" in v.headline
    v = assess(Seen(path, outbox, None, False, None, None, None), LIMITS)
    assert v.exit == EXIT_NOT_RUNNING and "no status file" in v.headline
    # A new agent holds the outbox and has not written yet.
    v = assess(Seen(path, outbox, stopped, False, 777, None, 1.0), LIMITS)
    assert (v.state, v.exit) == ("running", EXIT_DEGRADED) and "pid 777" in v.problems[0]
    v = assess(Seen(path, outbox, None, False, None, None, None, error="/s.json: denied"), LIMITS)
    assert (v.state, v.exit) == ("unknown", EXIT_UNKNOWN)


def test_a_live_agent_that_stopped_writing_is_unresponsive() -> None:
    v = assess(running(doc(), age=STALE_AFTER_S + 1), LIMITS)
    assert (v.state, v.exit) == ("unresponsive", EXIT_DEGRADED)
    assert "has not updated its status for 31 s" in v.problems[0]


# -- formatting -------------------------------------------------------------------


def test_the_table_of_a_running_agent() -> None:
    seen = running(doc(), age=1.0)
    text = render(seen, assess(seen, LIMITS))
    assert text.splitlines() == [
        "van-7: running, pid 4242, up 5 min (version 0.1.0, config abc123def456); status 1.0 s old",
        "  gps     fix         serial /dev/gps0; last fix 1.4 s ago at 52.367600, 4.904140; reconnects 2",
        "  obd     -           not configured",
        "  imu     -           not configured (harsh driving from GNSS)",
        "  uplink  connected   mqtt.example:8883; last publish 2.5 s ago (seq 812); reconnects 1",
        "  outbox  18 waiting  oldest 22 s, telemetry 17, events 1, 3 not yet committed, 1.25 MB used, "
        "trimmed thinned 40",
        "  clock   gnss        UTC from GNSS time",
        "problems: none",
    ]
    out = json.loads(to_json(seen, assess(seen, LIMITS)))
    assert (out["state"], out["exit"], out["running"]) == ("running", 0, True)
    assert out["status"]["last_fix"]["lat"] == 52.3676


def test_the_table_of_a_stopped_agent_shows_the_backlog() -> None:
    left = {
        "waiting": {"telemetry": 120, "events": 2},
        "total": 122,
        "oldest_utc": "2026-03-02T07:00:00.000Z",
        "oldest_age_s": 3600.0,
    }
    seen = Seen(
        Path("/s.json"), Path("/o.sqlite"), doc(state="stopped"), False, None, None, 60.0, left
    )
    assert render(seen, assess(seen, LIMITS)).splitlines()[1] == (
        "  outbox  122 waiting  oldest from 2026-03-02 07:00:00Z, 60 min ago by the system clock, "
        "telemetry 120, events 2 (read from /o.sqlite)"
    )


# -- files: the outbox, the status file, liveness -----------------------------------


def test_backlog_counts_and_finds_the_oldest_record(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "van-7", commit_interval_s=0)
    now = T0.timestamp()
    ob.add("telemetry", json.dumps({"ts": "2026-03-02T07:59:00Z"}), ts=now - 60)
    ob.add("telemetry", json.dumps({"ts": "2026-03-02T07:59:30Z"}), ts=now - 30)
    # A requested position has no ts column: its body's ts counts.
    ob.add("events", json.dumps({"ts": "2026-03-02T07:58:00Z"}), priority=True)
    ob.commit()
    got = backlog(ob._db, now)
    assert got == {
        "waiting": {"telemetry": 2, "events": 1},
        "total": 3,
        "oldest_utc": "2026-03-02T07:58:00.000Z",
        "oldest_age_s": 120.0,
    }
    assert backlog(ob._db, None)["oldest_age_s"] is None  # no trusted UTC: no age
    ob.close()


def test_the_status_file_is_replaced_whole_private_and_redacted(tmp_path: Path) -> None:
    outbox = tmp_path / "o.sqlite"
    Outbox(outbox, "van-7").close()
    sf = StatusFile(status_path(outbox), outbox, redact=lambda t: t.replace("hunter2", "***"))
    d = doc()
    d["uplink"]["last_error"] = "login hunter2 refused"
    sf.write(d)
    assert sf.path == tmp_path / "o.sqlite.status.json"
    got = json.loads(sf.path.read_text())
    assert got["uplink"]["last_error"] == "login *** refused"
    assert got["outbox"]["total"] == 0 and got["outbox"]["used_mb"] == 1.25
    assert sf.path.stat().st_mode & 0o777 == 0o600  # positions are personal data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_an_unwritable_status_file_is_logged_once_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sf = StatusFile(tmp_path / "missing-dir" / "s.json", tmp_path / "o.sqlite")
    for _ in range(3):
        sf.write(doc())
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert sf.writes == 0


def test_observe_decides_liveness_by_the_outbox_lock(tmp_path: Path) -> None:
    outbox = tmp_path / "o.sqlite"
    ob = Outbox(outbox, "van-7")  # holds the .lock, as the agent does
    d = doc()
    d["pid"] = os.getpid()
    d["written"]["mono"] = time.monotonic() - 3
    d["boot_id"] = "b"
    status_path(outbox).write_text(json.dumps(d))
    seen = observe(outbox, boot_id="b")
    assert seen.lock_pid == os.getpid(), "/proc/locks should show the outbox's flock"
    assert seen.alive and seen.lock_pid == os.getpid()
    assert seen.age_s is not None and 3 <= seen.age_s < 10
    assert seen.backlog is None  # running: its counts come from the file
    # Nobody holds the lock (whatever the pid in the file is doing): not running.
    assert not observe(outbox, boot_id="b", locks="").alive
    ob.close()
    seen = observe(outbox, boot_id="b")
    assert not seen.alive and seen.lock_pid is None
    assert seen.backlog is not None and seen.backlog["total"] == 0
    # Another boot: the monotonic clock restarted, the file's is meaningless.
    assert observe(outbox, boot_id="other").age_s is None


def test_without_proc_locks_a_dead_pid_is_not_running(tmp_path: Path) -> None:
    outbox = tmp_path / "o.sqlite"
    Outbox(outbox, "van-7").close()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    d = doc()
    d["boot_id"] = "b"
    no_locks = tmp_path / "no-proc-locks"  # e.g. Android's SELinux denies /proc/locks
    for pid, alive in ((os.getpid(), True), (gone.pid, False)):
        d["pid"] = pid
        status_path(outbox).write_text(json.dumps(d))
        assert observe(outbox, boot_id="b", locks_file=no_locks).alive is alive
        # After a reboot the pid is someone else's.
        assert not observe(outbox, boot_id="c", locks_file=no_locks).alive
    # No boot id either (Android may hide both): a live pid and a fresh file.
    d["pid"], d["boot_id"] = os.getpid(), None
    status_path(outbox).write_text(json.dumps(d))
    written = d["written"]["wall"]
    assert observe(outbox, now_wall=written + 5, locks_file=no_locks).alive
    assert not observe(outbox, now_wall=written + 600, locks_file=no_locks).alive


def test_status_doc_of_a_real_agent_is_cheap_on_the_loop(
    tmp_path: Path, figures: list[str]
) -> None:
    """The loop's part is in memory only (no outbox scan) however big the backlog;
    both parts' cost is printed as a figure, not asserted."""
    cfg = parse_config(
        {
            "device": {"id": "van-7"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {"path": str(tmp_path / "o.sqlite"), "commit_interval_s": 0},
        },
        {},
    )
    agent = Agent(cfg, gps_source(cfg.gps), clock=Clock("system", synced=lambda: True))
    body = json.dumps({"ts": "2026-03-02T07:59:00Z", "lat": 52.1, "lon": 4.9, "speed": 12.5})
    for i in range(100_000):
        agent.outbox.add("telemetry", body, ts=T0.timestamp() + i)
        if i % 10_000 == 0:
            agent.outbox.commit()
    agent.outbox.commit()
    agent.handle_fix(
        Fix(time=T0, mono=time.monotonic(), mode=FixMode.FIX_3D, lat=52.1, lon=4.9, speed=3.0)
    )
    runs = 50
    began = time.perf_counter()
    for _ in range(runs):
        d = agent.status_doc("running")
    loop_ms = (time.perf_counter() - began) / runs * 1000
    began = time.perf_counter()
    for _ in range(10):
        agent.status_file.write(agent.status_doc("running"))
    write_ms = (time.perf_counter() - began) / 10 * 1000
    got = json.loads(agent.status_file.path.read_text())
    assert got["outbox"]["waiting"]["telemetry"] == 100_000
    assert got["last_fix"]["lat"] == 52.1 and got["sources"]["gps"]["state"] in ("down", "fix")
    assert "waiting" not in d["outbox"]  # the loop's part never counts the outbox
    figures.append(
        f"status file, 100k records buffered: {loop_ms:.3f} ms on the loop per snapshot, "
        f"{write_ms:.1f} ms on the writer thread (count + write), every 2 s"
    )
    agent.outbox.close()


def test_a_phone_polling_slowly_by_its_power_plan_is_not_late() -> None:
    """Parked on battery, termux polls every 60 s: a 50 s old fix is still a fix."""
    phone = {**gps_health(True, None), "kind": "termux", "plan": {"gps_interval_s": 60.0}}
    assert source_states(health(gps=phone), 50.0)["gps"]["state"] == "fix"
    assert source_states(health(gps=phone), 130.0)["gps"]["state"] == "no fix"
    assert source_states(health(gps=gps_health(True, None)), 50.0)["gps"]["state"] == "no fix"
    assert problems_of(doc(fix_age=150.0, gps=phone), 0, LIMITS) == []  # < 3 polls
    assert problems_of(doc(fix_age=181.0, gps=phone), 0, LIMITS) == ["no GPS fix for 3 min"]
    assert problems_of(doc(fix_age=61.0), 0, LIMITS) == ["no GPS fix for 61 s"]
    paused = {"target": "termux-sensor", "connected": False, "paused": "parked, battery"}
    imu = {"detection": "imu", "source": paused}
    assert source_states(health(imu=imu), 1)["imu"] == {
        "state": "paused",
        "detail": "termux-sensor: parked, battery",
    }


def test_a_crash_is_not_a_clean_stop(tmp_path: Path) -> None:
    """A task that raises: the last snapshot says failed and why, and status says so."""

    class Broken(FileSource):
        async def fixes(self) -> AsyncGenerator[Fix, None]:
            raise RuntimeError("receiver firmware crashed")
            yield  # an async generator

    outbox = tmp_path / "o.sqlite"
    cfg = parse_config(
        {
            "device": {"id": "van-7"},
            "gps": {"source": "file", "path": str(tmp_path / "none.nmea")},
            "buffer": {"path": str(outbox)},
            "mqtt": {"host": "127.0.0.1", "port": free_port()},
        },
        {},
    )
    agent = Agent(cfg, Broken(tmp_path / "none.nmea"), clock=Clock("system", synced=lambda: True))
    agent.outbox.add("events", json.dumps({"ts": "2026-03-02T08:00:00Z"}), ts=T0.timestamp())
    with pytest.raises(RuntimeError, match="firmware"):
        asyncio.run(agent.run())
    d = json.loads(status_path(outbox).read_text())
    assert d["state"] == "failed" and d["failure"] == "RuntimeError: receiver firmware crashed"
    assert d["outbox"]["waiting"]["events"] >= 1  # committed before the lock was released
    seen = observe(outbox)
    assert not seen.alive
    v = assess(seen, LIMITS)
    assert v.exit == EXIT_NOT_RUNNING
    assert v.headline.endswith("; it failed: RuntimeError: receiver firmware crashed)")


def test_status_reads_a_half_edited_config_and_says_unknown_when_it_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    outbox = tmp_path / "o.sqlite"
    Outbox(outbox, "van-7").close()
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[device]\nid = "van-7"\n[buffer]\npath = "{outbox}"\n[gps]\nbaud = 1234\n'  # a typo
    )
    assert main(["status", "-c", str(conf)]) == EXIT_NOT_RUNNING
    err = capsys.readouterr().err
    assert "gps.baud" in err and f"the outbox is {outbox}" in err

    # Someone who may not read the config (root reads anything: a forked child
    # becomes nobody, as an unprivileged installer would be).
    conf.chmod(0o600 if os.geteuid() == 0 else 0)
    err_file = tmp_path / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 99
        try:
            with err_file.open("w") as err, contextlib.redirect_stderr(err):
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                code = main(["status", "-c", str(conf)])
        finally:
            os._exit(code)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == EXIT_UNKNOWN, err_file.read_text()
    assert f"{conf}: permission denied" in err_file.read_text()
