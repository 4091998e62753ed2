"""agent.logs: journald priorities, one line shape, repeat limiting on a given clock, no secrets."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import logs
from agent.config import parse_config
from agent.logs import (
    MASK,
    Redactor,
    RepeatFilter,
    fault_key,
    is_journal_stream,
    secret_values,
    setup_logging,
    syslog_priority,
)

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: put pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        logs._active = None


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


# -- journald -----------------------------------------------------------------


def test_syslog_priorities_follow_sd_daemon() -> None:
    assert [
        syslog_priority(n)
        for n in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
    ] == [2, 3, 4, 6, 7]
    assert syslog_priority(logging.WARNING + 5) == 4  # custom levels fall to the one below


def test_journal_stream_must_name_this_very_file() -> None:
    assert is_journal_stream("2049:123456", 2049, 123456)
    assert not is_journal_stream("2049:123456", 2049, 123457)
    assert not is_journal_stream("2050:123456", 2049, 123456)
    assert not is_journal_stream(None, 2049, 123456)
    assert not is_journal_stream("", 2049, 123456)
    assert not is_journal_stream("garbage", 2049, 123456)


def test_stderr_on_the_journal_gets_priorities_and_no_timestamp(tmp_path: Path) -> None:
    out = (tmp_path / "stderr").open("w")
    st = os.fstat(out.fileno())
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    setup = setup_logging(logging.DEBUG, stream=out, environ=env)
    assert setup.style == "journal"
    log = logging.getLogger("agent.test")
    log.info("connected to %s:%d", "broker", 1883, extra={"event": "link_up"})
    log.debug("detail")
    try:
        raise OSError(5, "Input/output error")
    except OSError:
        log.exception("read failed")
    out.close()
    got = (tmp_path / "stderr").read_text().splitlines()
    assert got[0] == "<6>agent.test INFO connected to broker:1883 event=link_up"
    assert got[1] == "<7>agent.test DEBUG detail"
    assert got[2] == "<3>agent.test ERROR read failed"
    # Each traceback line keeps the error priority: `journalctl -p err` shows all of it.
    assert len(got) > 4 and all(line.startswith("<3>") for line in got[2:])
    assert got[-1] == "<3>OSError: [Errno 5] Input/output error"


def test_elsewhere_lines_are_timestamped_text(tmp_path: Path) -> None:
    out = (tmp_path / "stderr").open("w")
    # JOURNAL_STREAM inherited from a service but stderr redirected to a file: not the journal.
    setup = setup_logging(logging.INFO, stream=out, environ={"JOURNAL_STREAM": "1:2"})
    assert setup.style == "text"
    logging.getLogger("agent.x").warning("disk %s", "full", extra={"free_mb": 3, "path": "/a b"})
    out.close()
    (line,) = (tmp_path / "stderr").read_text().splitlines()
    assert STAMP.match(line), line
    assert line.split(" ", 1)[1] == 'agent.x WARNING disk full free_mb=3 path="/a b"'


def test_json_lines_on_request() -> None:
    buf = io.StringIO()
    setup = setup_logging(logging.INFO, stream=buf, environ={"TELEMATICS_LOG_FORMAT": "json"})
    assert setup.style == "json"
    logging.getLogger("agent.y").error("gps %s lost", "serial", extra={"event": "gps_down"})
    doc = json.loads(buf.getvalue())
    assert {k: doc[k] for k in ("level", "logger", "msg", "event")} == {
        "level": "ERROR",
        "logger": "agent.y",
        "msg": "gps serial lost",
        "event": "gps_down",
    }
    assert doc["ts"].endswith("Z")


def test_an_unknown_format_falls_back_and_says_so() -> None:
    buf = io.StringIO()
    setup = setup_logging(logging.INFO, stream=buf, environ={"TELEMATICS_LOG_FORMAT": "xml"})
    assert setup.style == "text"
    assert "TELEMATICS_LOG_FORMAT='xml' is not one of auto, text, journal, json" in buf.getvalue()


# -- rate limiting --------------------------------------------------------------


def limited(burst: int = 3, window_s: float = 60.0) -> tuple[logging.Logger, io.StringIO, Mono]:
    buf = io.StringIO()
    mono = Mono()
    setup_logging(
        logging.DEBUG,
        stream=buf,
        environ={},
        style="text",
        mono=mono,
        burst=burst,
        window_s=window_s,
    )
    return logging.getLogger("agent.uplink"), buf, mono


def messages(buf: io.StringIO) -> list[str]:
    return [line.split(" ", 3)[3] for line in lines(buf)]


def test_a_repeating_fault_prints_its_first_lines_then_one_summary_per_window() -> None:
    log, buf, mono = limited()
    for errno in range(10):  # every 2 s, the errno changing: the same fault
        log.warning("connect to %s failed: [Errno %d]", "broker:1883", 100 + errno)
        mono.t += 2
    assert messages(buf) == [f"connect to broker:1883 failed: [Errno {n}]" for n in (100, 101, 102)]
    # The window ends at the next record of anything, here another logger's line.
    mono.t = 100 + 6 + 60
    logging.getLogger("agent.device").info("gps-serial: opened /dev/ttyACM0")
    assert messages(buf)[3:] == [
        "connect to broker:1883 failed: [Errno 109] [repeated 7 times in the last 60 s] repeated=7",
        "gps-serial: opened /dev/ttyACM0",
    ]
    # Still going: suppressed, one summary per window, never the burst again.
    for _ in range(30):
        log.warning("connect to %s failed: [Errno %d]", "broker:1883", 111)
        mono.t += 2
    logs.tick()
    assert messages(buf)[5:] == [
        "connect to broker:1883 failed: [Errno 111] [repeated 30 times in the last 60 s] repeated=30"
    ]


def test_the_summary_comes_from_the_tick_when_nothing_else_is_logged() -> None:
    log, buf, mono = limited(burst=1)
    log.error("outbox commit failed: %s", "disk I/O error")
    log.error("outbox commit failed: %s", "database or disk is full")
    assert len(lines(buf)) == 1
    mono.t += 59
    logs.tick()
    assert len(lines(buf)) == 1  # the window has not ended
    mono.t += 1.5
    logs.tick()
    assert messages(buf)[1] == (
        "outbox commit failed: database or disk is full [repeated 1 times in the last 60 s] "
        "repeated=1"
    )
    assert lines(buf)[1].split()[2] == "ERROR"  # the summary keeps the fault's level


def test_a_fault_silent_for_a_window_is_forgotten() -> None:
    log, buf, mono = limited(burst=2)
    for _ in range(2):
        log.warning("gps: %s", "no data")
    mono.t += 61
    logging.getLogger("other").info("x")  # expiry runs on every record
    log.warning("gps: %s", "no data")
    assert messages(buf).count("gps: no data") == 3


def test_faults_are_counted_apart_and_debug_is_never_limited() -> None:
    log, buf, _ = limited(burst=1)
    for _ in range(3):
        log.warning("link %s down", "gps")
        log.warning("%s", "broker refused connection: Not authorized")
        log.warning("%s", "connect to broker:1883 failed: [Errno 111] Connection refused")
        log.debug("raw %s", "$GPRMC")
    assert messages(buf) == [
        "link gps down",
        "broker refused connection: Not authorized",
        "connect to broker:1883 failed: [Errno 111] Connection refused",
        "raw $GPRMC",
        "raw $GPRMC",
        "raw $GPRMC",
    ]


def test_shutdown_flushes_pending_summaries() -> None:
    log, buf, mono = limited(burst=1)
    log.warning("imu: %s", "i2c error 1")
    log.warning("imu: %s", "i2c error 2")
    mono.t += 5
    logs.shutdown()
    assert messages(buf)[-1] == "imu: i2c error 2 [repeated 1 times in the last 5 s] repeated=1"


def test_fault_key_uses_the_template_unless_it_is_only_placeholders() -> None:
    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("agent.u", logging.WARNING, "", 0, msg, args, None)

    assert fault_key(record("connect to %s failed: %s", "a", "x")) == fault_key(
        record("connect to %s failed: %s", "b", "y")
    )
    assert fault_key(record("%s", "rejected on events: 135")) == fault_key(
        record("%s", "rejected on events: 151")
    )
    assert fault_key(record("%s", "rejected on events")) != fault_key(record("%s", "timed out"))


def test_the_filter_alone_on_a_given_clock() -> None:
    mono = Mono()
    sent: list[logging.LogRecord] = []
    f = RepeatFilter(burst=2, window_s=10, mono=mono, sink=sent.append)
    rec = logging.LogRecord("a", logging.WARNING, "", 0, "fault %d", (1,), None)
    assert [f.filter(rec) for _ in range(4)] == [True, True, False, False]
    mono.t += 10
    f.tick()
    assert [r.getMessage() for r in sent] == ["fault 1 [repeated 2 times in the last 10 s]"]
    assert f.filter(sent[0])  # a summary passes its own filter


# -- secrets --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("login with password=hunter22 failed", f"login with password={MASK} failed"),
        ('{"password": "a b c", "user": "van"}', f'{{"password": "{MASK}", "user": "van"}}'),
        ("api_key: abc123, next", f"api_key: {MASK}, next"),
        ("GET /x?token=abc&y=1", f"GET /x?token={MASK}&y=1"),
        ("Authorization: Bearer eyJhbGci.J9.x-y", f"Authorization: Bearer {MASK}"),
        ("authorization=Basic dmFuOnB3", f"authorization=Basic {MASK}"),
        ("curl -H 'bearer abcdef123'", f"curl -H 'bearer {MASK}'"),
        ("mqtts://van-1:pa55@broker:8883/x", f"mqtts://van-1:{MASK}@broker:8883/x"),
        ("postgresql://bridge:s3cr@db/fleet", f"postgresql://bridge:{MASK}@db/fleet"),
        # Not secrets: a path to one, a URL without userinfo, prose.
        ("mqtt.password_file = /etc/x/pw", "mqtt.password_file = /etc/x/pw"),
        ("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api"),
        ("bad user name or password", "bad user name or password"),
    ],
)
def test_credential_shapes_are_masked(text: str, want: str) -> None:
    assert Redactor()(text) == want


def test_registered_secrets_are_masked_anywhere_even_url_encoded() -> None:
    r = Redactor(["s3cret/pw+1", "  "])
    r.add("tok-9")
    assert (
        r("host s3cret/pw+1@x and s3cret%2Fpw%2B1 and tok-9")
        == f"host {MASK}@x and {MASK} and {MASK}"
    )
    assert r("nothing here") == "nothing here"


def test_the_config_secrets_are_found(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-the-file-42\n")
    pw.chmod(0o600)
    cfg = parse_config(
        {
            "device": {"id": "van-1"},
            "mqtt": {"host": "127.0.0.1", "username": "van-1", "password_file": str(pw)},
        }
    )
    assert secret_values(cfg) == ["from-the-file-42"]
    assert secret_values(parse_config({"device": {"id": "van-1"}})) == []


@pytest.mark.parametrize("secret", ['p"w\\ü-7', 'p"w\\x-7', "it's\\n"])
def test_no_secret_reaches_any_line_shape_tracebacks_included(secret: str) -> None:
    """Quotes and backslashes (escaped by JSON, repr and key=value quoting) still masked."""
    escaped = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }
    for style in ("text", "journal", "json"):
        buf = io.StringIO()
        setup_logging(logging.DEBUG, stream=buf, environ={}, style=style, secrets=[secret])
        log = logging.getLogger("agent.z")
        log.info("connecting as van with %s", secret, extra={"detail": f"pw {secret}"})
        log.info("settings %r", {"password": secret}, extra={"cfg": {"pw": secret}})
        log.warning("login %r refused", secret, extra={"why": secret})
        try:
            raise ValueError(f"bad {secret!r}")
        except ValueError:
            log.exception("failed")
        text = buf.getvalue()
        for form in escaped:
            assert form not in text, (style, form, text)
        assert text.count(MASK) >= 6, (style, text)
