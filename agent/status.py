"""``telematics-agent status``: the running agent's live health, from a file it keeps.

The running agent writes a snapshot of itself every ``STATUS_EVERY_S`` to
``<buffer.path>.status.json`` (:func:`status_path`), atomically (a temporary
file, then ``os.replace``), and marks it ``stopped`` when it stops cleanly.
A file works everywhere the agent does (systemd, runit, Termux) and needs no
socket or privilege: whoever may read the outbox may read its status.

Writing never holds up the agent's loop: the loop only gathers what it has
in memory (sources, uplink, last fix; no SQLite scan); the outbox counts and
the file write happen on a worker thread (:class:`StatusFile`), with a
read-only connection of their own (SQLite's WAL lets it read while the agent
writes).

``status`` reads the file; the agent is running when the process named in it
is the one holding the outbox's lock (``/proc/locks``; where that cannot be
read, when the process exists and the machine has not rebooted since).  Then
the file's age says whether the agent is responsive, and its content whether
something is degraded (:func:`assess`).  When the agent is not running, the
backlog is read from the outbox itself, read-only (:func:`observe`).

Exit status, after LSB's ``status`` action: 0 running and healthy, 1 running
but degraded (or not responding), 3 not running, 4 status unknown (the file
cannot be read); 2 remains a bad configuration or usage, as for every
subcommand.  docs/STATUS.md has the file's fields and every problem.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from agent.buffer.peek import human_age, lock_holder, read_backlog, utc_text

log = logging.getLogger(__name__)

#: Version of the status file's layout.
STATUS_FORMAT = 1
#: How often the running agent rewrites its status file.
STATUS_EVERY_S = 2.0
#: A status file older than this, from a live agent, means its loop is stuck
#: (systemd's watchdog, WatchdogSec=30s, restarts such an agent too).
STALE_AFTER_S = 30.0
#: The GPS state is "fix" while the last position fix is at most this old.
FIX_FRESH_S = 10.0

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4


#: Defaults of when a running agent counts as degraded (docs/STATUS.md).
NO_FIX_S = 60.0
OFFLINE_S = 60.0
BACKLOG_S = 600.0


@dataclass(frozen=True, slots=True)
class Limits:
    """When a running agent counts as degraded (``status --no-fix-after`` etc.)."""

    no_fix_s: float = NO_FIX_S
    offline_s: float = OFFLINE_S
    backlog_s: float = BACKLOG_S


def status_path(outbox: Path) -> Path:
    """Where the agent keeps its status: beside the outbox, ``<buffer.path>.status.json``."""
    return outbox.with_name(outbox.name + ".status.json")


def read_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str | None:
    """This boot's id (monotonic clocks restart with it), or None where it cannot be read."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _short_utc(text: object) -> str:
    """``2024-05-14 07:30:00Z`` from an ISO time (for people), or ``?``."""
    if not isinstance(text, str) or len(text) < 19:
        return "?"
    return f"{text[:10]} {text[11:19]}Z"


# -- the agent's side -----------------------------------------------------------


def poll_interval(gps: Mapping[str, Any]) -> float:
    """Seconds between fixes the GPS source means to deliver: 1, or a phone's power plan."""
    plan = gps.get("plan") or {}
    interval = plan.get("gps_interval_s") if isinstance(plan, Mapping) else None
    return float(interval) if isinstance(interval, int | float) and interval > 0 else 1.0


def source_states(health: Mapping[str, Any], fix_age_s: float | None) -> dict[str, dict[str, str]]:
    """One state word and a detail per source, from the agent's health dict."""
    out: dict[str, dict[str, str]] = {}
    gps = health.get("gps") or {}
    target = f"{gps.get('kind', '?')} {gps.get('target', '?')}"
    fresh = max(FIX_FRESH_S, 2 * poll_interval(gps))  # a parked phone polls every minute
    if not gps.get("connected"):
        error = gps.get("last_error") or "not opened yet"
        out["gps"] = {"state": "down", "detail": f"{target}: {error}"}
    elif fix_age_s is not None and fix_age_s <= fresh:
        out["gps"] = {"state": "fix", "detail": target}
    else:
        out["gps"] = {"state": "no fix", "detail": f"{target}: receiving, no position fix"}
    obd = health.get("obd")
    if obd is None:
        out["obd"] = {"state": "-", "detail": "not configured"}
    else:
        detail = " ".join(
            str(x) for x in (obd.get("adapter"), obd.get("protocol"), obd.get("port")) if x
        )
        if obd.get("last_error") and obd.get("state") != "connected":
            detail += f": {obd['last_error']}"
        out["obd"] = {"state": str(obd.get("state", "?")), "detail": detail}
    imu = health.get("imu") or {}
    source = imu.get("source")
    if source is None:
        out["imu"] = {"state": "-", "detail": "not configured (harsh driving from GNSS)"}
    elif source.get("paused"):  # a phone's power plan, not a fault
        out["imu"] = {
            "state": "paused",
            "detail": f"{source.get('target', '?')}: {source['paused']}",
        }
    elif not source.get("connected"):
        out["imu"] = {
            "state": "down",
            "detail": f"{source.get('target', '?')}: {source.get('last_error') or 'not opened yet'}",
        }
    else:
        problems = source.get("problems") or []
        calibration = (imu.get("calibration") or {}).get("state")
        detail = f"{source.get('target', '?')}, {imu.get('detection', '?')}"
        if calibration:
            detail += f", mounting {calibration}"
        if problems:
            out["imu"] = {"state": "problem", "detail": f"{detail}: {problems[0].get('message')}"}
        else:
            out["imu"] = {"state": "ok", "detail": detail}
    return out


def agent_doc(
    *,
    state: str,
    pid: int,
    boot_id: str | None,
    device: str,
    version: str,
    config_hash: str,
    epoch: str,
    outbox: Path,
    started_wall: float,
    uptime_s: float,
    wall: float,
    mono: float,
    utc_now: datetime | None,
    health: dict[str, Any],
    last_fix: dict[str, Any] | None,
) -> dict[str, Any]:
    """The status file's content, from what the agent has in memory (pure).

    ``wall``/``mono``: the system clock and CLOCK_MONOTONIC now (the reader
    compares the latter with its own); ``utc_now``: the agent's trusted UTC
    (None while it has none), against which the backlog's age is measured.
    ``health`` is ``Agent.health(counts=False)``; the writer adds the counts.
    """
    fix_age = None if last_fix is None else last_fix.get("age_s")
    outbox_health = health.get("outbox") or {}
    return {
        "format": STATUS_FORMAT,
        "state": state,
        "pid": pid,
        "boot_id": boot_id,
        "device": device,
        "version": version,
        "config_hash": config_hash,
        "epoch": epoch,
        "started": utc_text(started_wall),
        "uptime_s": round(uptime_s, 1),
        "written": {"utc": utc_text(wall), "wall": wall, "mono": mono},
        "utc_now": None if utc_now is None else utc_now.timestamp(),
        "clock": health.get("clock"),
        "last_fix": last_fix,
        "uplink": health.get("uplink"),
        "outbox": {
            "path": str(outbox),
            "uncommitted": outbox_health.get("uncommitted", 0),
            "used_mb": outbox_health.get("used_mb"),
            "dropped": outbox_health.get("dropped", 0),
            "trimmed": {
                k: outbox_health.get(k, 0)
                for k in ("expired", "thinned", "dropped", "dropped_events")
            },
            "error": health.get("outbox_error"),
        },
        "sources": source_states(health, fix_age),
        "health": health,
    }


def fix_summary(
    utc: datetime | None, lat: float | None, lon: float | None, age_s: float, **more: Any
) -> dict[str, Any]:
    """The ``last_fix`` entry: when, where, how long ago (and speed, satellites ...)."""
    return {
        "utc": None if utc is None else utc.isoformat().replace("+00:00", "Z"),
        "age_s": round(age_s, 2),
        "lat": lat,
        "lon": lon,
        **{k: v for k, v in more.items() if v is not None},
    }


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    return value


class StatusFile:
    """The agent's status file: throttled (:meth:`due`), written off the loop (:meth:`write`).

    ``write`` blocks (it counts the outbox and writes the file): the agent
    calls it on a worker thread, one at a time.  A failure (read-only or
    full disk) is logged once per kind and never raised.
    """

    def __init__(
        self,
        path: Path,
        outbox: Path,
        *,
        every_s: float = STATUS_EVERY_S,
        mono: Callable[[], float] = time.monotonic,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.path = path
        self.outbox = outbox
        self.every_s = every_s
        self.boot_id = read_boot_id()
        self._mono = mono
        self._redact = redact
        self._last = -1e18
        self._failed: str | None = None
        self.writes = 0
        self.last_write_s = 0.0  # how long the last write took (thread time)

    def due(self) -> bool:
        """True (and the clock restarts) when a snapshot is due."""
        now = self._mono()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True

    def write(self, doc: dict[str, Any], *, backlog: dict[str, Any] | None = None) -> None:
        """Add the outbox's counts, write the file atomically; log failures, never raise.

        ``backlog``: the counts already made (the agent's last write, on its
        own connection); otherwise the outbox is read on a connection of its own.
        """
        try:
            self._write(doc, backlog)
        except Exception:  # a bug here must not take the agent down
            if self._failed != "bug":
                log.exception("status file %s: cannot write", self.path)
            self._failed = "bug"

    def _write(self, doc: dict[str, Any], backlog: dict[str, Any] | None) -> None:
        began = time.perf_counter()
        outbox = doc.setdefault("outbox", {})
        outbox.update(
            backlog if backlog is not None else read_backlog(self.outbox, doc.get("utc_now"))
        )
        text = json.dumps(_redacted(doc, self._redact), ensure_ascii=False, default=str)
        # One writer at a time (the agent waits for the last write), so one fixed
        # temporary name: a kill -9 mid-write cannot leave a trail of them.
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text + "\n")
                os.replace(tmp, self.path)  # readers see the old file or the new, whole
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            kind = type(exc).__name__ + str(exc.errno)
            if kind != self._failed:
                log.warning("cannot write the status file %s: %s", self.path, exc)
            self._failed = kind
            return
        if self._failed is not None:
            log.info("status file %s written again", self.path)
            self._failed = None
        self.writes += 1
        self.last_write_s = time.perf_counter() - began


# -- the command's side ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """What ``status`` found: the file, whether its agent lives, the outbox when it does not."""

    path: Path
    outbox: Path
    doc: dict[str, Any] | None
    alive: bool  # the process named in the file is this outbox's running agent
    lock_pid: int | None  # who holds the outbox's lock (None: nobody, or cannot tell)
    age_s: float | None  # since the file was written (None: another boot, cannot tell)
    wall_age_s: float | None  # the same by the system clock (for "last seen")
    backlog: dict[str, Any] | None = None  # from the outbox itself when not running
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    state: str  # running | degraded | unresponsive | not running | unknown
    exit: int
    headline: str
    problems: tuple[str, ...] = field(default=())


def _plus(value: Any, extra: float) -> float | None:
    return None if value is None else float(value) + extra


def problems_of(doc: Mapping[str, Any], age_s: float, limits: Limits) -> list[str]:
    """What is degraded in a running agent's status, ``age_s`` after it was written (pure)."""
    out: list[str] = []
    uptime = float(doc.get("uptime_s") or 0.0) + age_s
    uplink = doc.get("uplink") or {}
    down = _plus(uplink.get("down_s"), age_s)
    if not uplink.get("connected") and down is not None and down >= limits.offline_s:
        why = f": {uplink['last_error']}" if uplink.get("last_error") else ""
        out.append(
            f"not connected to {uplink.get('broker', 'the broker')} for {human_age(down)}{why}"
        )
    fix = doc.get("last_fix")
    fix_age = _plus(None if fix is None else fix.get("age_s"), age_s)
    gps = (doc.get("sources") or {}).get("gps") or {}
    reason = f" (gps {gps['state']}: {gps['detail']})" if gps.get("state") == "down" else ""
    # A phone that polls slowly by its power plan is not late until three polls are missed.
    no_fix_s = max(limits.no_fix_s, 3 * poll_interval((doc.get("health") or {}).get("gps") or {}))
    if fix_age is None and uptime >= no_fix_s:
        out.append(f"no GPS fix since the agent started {human_age(uptime)} ago{reason}")
    elif fix_age is not None and fix_age >= no_fix_s:
        out.append(f"no GPS fix for {human_age(fix_age)}{reason}")
    outbox = doc.get("outbox") or {}
    oldest = _plus(outbox.get("oldest_age_s"), age_s)
    if oldest is not None and oldest >= limits.backlog_s:
        out.append(
            f"oldest unsent record is {human_age(oldest)} old ({outbox.get('total', '?')} waiting)"
        )
    if outbox.get("error"):
        out.append(f"outbox: {outbox['error']}")
    if outbox.get("dropped"):
        out.append(f"{outbox['dropped']} records lost: the disk refused writes for too long")
    sources = doc.get("sources") or {}
    obd = sources.get("obd") or {}
    if obd.get("state") in ("no_adapter", "stopped"):
        out.append(f"OBD {obd['state']}: {obd.get('detail', '')}".rstrip(": "))
    imu = sources.get("imu") or {}
    if imu.get("state") in ("down", "problem"):
        out.append(f"IMU {imu['state']}: {imu.get('detail', '')}")
    health = doc.get("health") or {}
    if health.get("waiting_for_time") and doc.get("clock") == "none" and uptime >= limits.no_fix_s:
        out.append(
            f"{health['waiting_for_time']} events wait for a trusted clock "
            "(no NTP sync and no GPS time yet)"
        )
    return out


def assess(seen: Seen, limits: Limits) -> Verdict:
    """Running, degraded, unresponsive, not running or unknown, and the exit status (pure)."""
    doc = seen.doc
    device = (doc or {}).get("device", "agent")
    if doc is None:
        if seen.error is not None:
            return Verdict("unknown", EXIT_UNKNOWN, f"status unknown: {seen.error}", (seen.error,))
        if seen.lock_pid is not None:
            why = f"pid {seen.lock_pid} holds the outbox but has written no status yet (starting?)"
            return Verdict("running", EXIT_DEGRADED, f"agent running (pid {seen.lock_pid})", (why,))
        return Verdict(
            "not running",
            EXIT_NOT_RUNNING,
            f"agent not running (no status file {seen.path}: not started with this config yet?)",
        )
    if not seen.alive:
        if seen.lock_pid is not None:  # a new agent, before its first status
            why = f"pid {seen.lock_pid} holds the outbox but has written no status yet (starting?)"
            return Verdict(
                "running", EXIT_DEGRADED, f"{device}: agent running (pid {seen.lock_pid})", (why,)
            )
        written = _short_utc((doc.get("written") or {}).get("utc"))
        ago = "" if seen.wall_age_s is None else f", {human_age(seen.wall_age_s)} ago"
        if doc.get("state") == "stopped":
            how = "stopped cleanly"
        elif doc.get("state") == "failed":
            how = f"it failed: {doc.get('failure', '?')}"
        else:
            how = "it did not stop cleanly"
        return Verdict(
            "not running",
            EXIT_NOT_RUNNING,
            f"{device}: agent not running (last seen {written}{ago}; {how})",
        )
    age = seen.age_s if seen.age_s is not None else (seen.wall_age_s or 0.0)
    pid = doc.get("pid")
    if age > STALE_AFTER_S:
        why = (
            f"pid {pid} is alive but has not updated its status for {human_age(age)}: "
            "its loop is stuck (systemd's watchdog restarts it)"
        )
        return Verdict("unresponsive", EXIT_DEGRADED, f"{device}: agent not responding", (why,))
    problems = tuple(problems_of(doc, age, limits))
    up = human_age(_plus(doc.get("uptime_s"), age))
    head = (
        f"{device}: running, pid {pid}, up {up} "
        f"(version {doc.get('version')}, config {doc.get('config_hash')})"
    )
    if problems:
        return Verdict(
            "degraded", EXIT_DEGRADED, head.replace("running", "running, degraded", 1), problems
        )
    return Verdict("running", EXIT_OK, head)


def _outbox_line(outbox: Mapping[str, Any], age_s: float | None) -> tuple[str, str]:
    """(state, detail); ``age_s`` None: the ages are by this machine's clock, say when too."""
    if outbox.get("error") and "waiting" not in outbox:
        return "?", str(outbox["error"])
    waiting = outbox.get("waiting") or {}
    total = outbox.get("total", sum(waiting.values()))
    parts = [f"{s} {n}" for s, n in waiting.items()]
    oldest = _plus(outbox.get("oldest_age_s"), age_s or 0.0)
    if total and age_s is None and outbox.get("oldest_utc"):
        ago = "" if oldest is None else f", {human_age(oldest)} ago by the system clock"
        parts.insert(0, f"oldest from {_short_utc(outbox['oldest_utc'])}{ago}")
    elif total and oldest is not None:
        parts.insert(0, f"oldest {human_age(oldest)}")
    if outbox.get("uncommitted"):
        parts.append(f"{outbox['uncommitted']} not yet committed")
    if outbox.get("used_mb") is not None:
        parts.append(f"{outbox['used_mb']} MB used")
    trimmed = {k: v for k, v in (outbox.get("trimmed") or {}).items() if v}
    if trimmed:
        parts.append("trimmed " + ", ".join(f"{k} {v}" for k, v in trimmed.items()))
    return f"{total} waiting", ", ".join(parts)


def rows(seen: Seen) -> list[tuple[str, str, str]]:
    """(what, state, detail) lines of the table (pure)."""
    doc = seen.doc
    if doc is None or not seen.alive:
        backlog_ = seen.backlog or {}
        if backlog_.get("exists") is False:
            return [("outbox", "-", f"no outbox at {seen.outbox}")]
        state, detail = _outbox_line(backlog_, None)
        return [("outbox", state, f"{detail} (read from {seen.outbox})".lstrip(", "))]
    age = seen.age_s or 0.0
    out: list[tuple[str, str, str]] = []
    sources = doc.get("sources") or {}
    fix = doc.get("last_fix")
    for name in ("gps", "obd", "imu"):
        src = sources.get(name) or {"state": "?", "detail": ""}
        detail = src.get("detail", "")
        if name == "gps":
            if fix is not None:
                detail += (
                    f"; last fix {human_age(_plus(fix.get('age_s'), age))} ago at "
                    f"{fix.get('lat'):.6f}, {fix.get('lon'):.6f}"
                    if fix.get("lat") is not None and fix.get("lon") is not None
                    else f"; last fix {human_age(_plus(fix.get('age_s'), age))} ago"
                )
            gps = (doc.get("health") or {}).get("gps") or {}
            detail += f"; reconnects {gps.get('reconnects', 0)}"
        out.append((name, str(src.get("state", "?")), detail))
    up = doc.get("uplink") or {}
    state = "connected" if up.get("connected") else "offline"
    detail = str(up.get("broker", "?"))
    if not up.get("connected") and up.get("down_s") is not None:
        detail += f", down {human_age(_plus(up['down_s'], age))}"
        if up.get("last_error"):
            detail += f": {up['last_error']}"
    last = up.get("last_ack_s")
    if last is not None:
        detail += (
            f"; last publish {human_age(_plus(last, age))} ago (seq {up.get('last_acked_seq')})"
        )
    else:
        detail += "; nothing published yet"
    detail += f"; reconnects {up.get('reconnects', 0)}"
    out.append(("uplink", state, detail))
    out.append(("outbox", *_outbox_line(doc.get("outbox") or {}, age)))
    clock = doc.get("clock")
    words = {"system": "UTC from the system clock (NTP-synchronised)", "gnss": "UTC from GNSS time"}
    out.append(("clock", str(clock), words.get(str(clock), "no trusted UTC yet: records wait")))
    return out


def render(seen: Seen, verdict: Verdict) -> str:
    """The human table (pure)."""
    lines = [verdict.headline]
    table = rows(seen)
    if seen.doc is not None and seen.alive and seen.age_s is not None:
        lines[0] += f"; status {human_age(seen.age_s)} old"
    width = max((len(s) for _, s, _ in table), default=5)
    for what, state, detail in table:
        lines.append(f"  {what:<7} {state:<{width}}  {detail}".rstrip())
    if verdict.state in ("running", "degraded", "unresponsive"):
        if verdict.problems:
            lines.append("problems:")
            lines.extend(f"  - {p}" for p in verdict.problems)
        else:
            lines.append("problems: none")
    return "\n".join(lines) + "\n"


def to_json(seen: Seen, verdict: Verdict) -> str:
    return json.dumps(
        {
            "state": verdict.state,
            "exit": verdict.exit,
            "headline": verdict.headline,
            "problems": list(verdict.problems),
            "running": seen.alive,
            "status_age_s": None if seen.age_s is None else round(seen.age_s, 2),
            "status_file": str(seen.path),
            "status": seen.doc,
            "backlog": seen.backlog,
        },
        ensure_ascii=False,
    )


# -- I/O at the edge ------------------------------------------------------------


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    return True


def _read_locks(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def observe(
    outbox: Path,
    *,
    now_mono: float | None = None,
    now_wall: float | None = None,
    locks: str | None = None,
    locks_file: Path = Path("/proc/locks"),
    boot_id: str | None = None,
) -> Seen:
    """Read the status file and decide whether its agent lives; read the outbox if not."""

    path = status_path(outbox)
    mono = time.monotonic() if now_mono is None else now_mono
    wall = time.time() if now_wall is None else now_wall
    boot = read_boot_id() if boot_id is None else boot_id
    locks = _read_locks(locks_file) if locks is None else locks
    lock_pid = None if locks is None else lock_holder(outbox, locks)
    doc: dict[str, Any] | None = None
    error: str | None = None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            doc = loaded
        else:
            error = f"{path}: not a status file"
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        error = f"{path}: {exc}"
    age: float | None = None
    wall_age: float | None = None
    alive = False
    if doc is not None:
        written = doc.get("written") or {}
        same_boot = boot is None or doc.get("boot_id") is None or doc.get("boot_id") == boot
        if same_boot and isinstance(written.get("mono"), int | float):
            age = max(0.0, mono - float(written["mono"]))
        if isinstance(written.get("wall"), int | float):
            wall_age = wall - float(written["wall"])
        pid = doc.get("pid")
        if doc.get("state") not in ("stopped", "failed") and isinstance(pid, int):
            if locks is not None:
                alive = lock_pid == pid
            elif boot is not None and doc.get("boot_id") is not None:
                alive = same_boot and _pid_exists(pid)
            else:
                # Neither /proc/locks nor a boot id (Android's SELinux may hide
                # both): the pid exists and the file is fresh by the wall clock.
                fresh = wall_age is not None and 0 <= wall_age < STALE_AFTER_S
                alive = fresh and _pid_exists(pid)
    seen_backlog = None
    if not alive:
        seen_backlog = read_backlog(outbox, wall)
    return Seen(path, outbox, doc, alive, lock_pid, age, wall_age, seen_backlog, error)


def status_command(
    outbox: Path, *, as_json: bool = False, limits: Limits | None = None, out: TextIO | None = None
) -> int:
    """``telematics-agent status``: print the table (or JSON); the exit status."""
    seen = observe(outbox)
    verdict = assess(seen, limits or Limits())
    stream = out if out is not None else sys.stdout
    stream.write(to_json(seen, verdict) + "\n" if as_json else render(seen, verdict))
    stream.flush()
    return verdict.exit
