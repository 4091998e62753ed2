"""The agent's logs: journald-aware, one stable line shape, rate-limited, never a secret.

One line per record, ``logger LEVEL message key=value ...``:

* under systemd, when stderr *is* the journal (``$JOURNAL_STREAM`` names
  stderr's device and inode, systemd.exec(5)), each line starts with the
  ``<N>`` syslog priority of sd-daemon(3) and carries no timestamp
  (journald stamps it); ``journalctl -p warning`` then filters by level;
* anywhere else (a shell, Termux, runit's svlogd) the line starts with a UTC
  timestamp, ``2024-05-14T07:30:00.123Z``;
* ``TELEMATICS_LOG_FORMAT=json`` prints one JSON object per line instead
  (``text`` or ``journal`` force those shapes; ``auto``, the default, decides
  as above).

``key=value`` fields come from ``extra=``: ``log.warning("...", extra={"event":
"link_down"})``.

Rate limiting (:class:`RepeatFilter`): a fault that repeats, e.g. a reconnect
failing every 2 s, prints its first ``burst`` lines, then one summary line per
``window_s`` while it goes on (``... [repeated 29 times in the last 60 s]``,
with the last of them as the text).  "The same fault" is the same logger,
level and message *template*: the arguments (an errno, a count) may change.
A fault silent for a whole window is forgotten, so its next occurrence prints
again.  DEBUG records are never limited: whoever turns DEBUG on wants them all.

Never a secret (:class:`Redactor`): every line, tracebacks included, is
scrubbed of the configured secrets (registered at start-up from every
``SecretStr`` in the config, see :func:`secret_values`) and of what looks
like one: ``password=...``, ``token: ...``, ``Authorization: Bearer ...``,
and the password in a URL's userinfo (``mqtts://user:***@host``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = [
    "FORMAT_ENV",
    "LineFormatter",
    "LogSetup",
    "Redactor",
    "RepeatFilter",
    "is_journal_stream",
    "redact",
    "secret_values",
    "setup_logging",
    "shutdown",
    "syslog_priority",
    "tick",
]

#: Environment variable choosing the line shape: auto (default), text, journal, json.
FORMAT_ENV = "TELEMATICS_LOG_FORMAT"
STYLES = ("auto", "text", "journal", "json")

MASK = "***"

#: Rate limiting defaults: this many lines of one fault, then a summary per window.
BURST = 3
WINDOW_S = 60.0


# -- journald -----------------------------------------------------------------


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (sd-daemon(3) ``<N>`` prefixes)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def is_journal_stream(value: str | None, st_dev: int, st_ino: int) -> bool:
    """Whether ``$JOURNAL_STREAM`` (``"<dev>:<ino>"``) names this file (systemd.exec(5))."""
    if not value:
        return False
    dev, _, ino = value.partition(":")
    try:
        return int(dev) == st_dev and int(ino) == st_ino
    except ValueError:
        return False


def _stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no fd (pytest's capture, StringIO)
        return False
    return is_journal_stream(environ.get("JOURNAL_STREAM"), st.st_dev, st.st_ino)


# -- secrets ------------------------------------------------------------------

_URL_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*):[^\s/@]*@")
_AUTHORIZATION = re.compile(
    r"(?i)(?P<head>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|digest|token)\s+)?)"
    r"[^\s\"',;]+"
)
_BEARER = re.compile(r"(?i)(?P<head>\bbearer\s+)[A-Za-z0-9._~+/-]+=*")
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>\b[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
    r"[\w.-]*)(?P<sep>[\"']?\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"
)


def _mask_key_value(m: re.Match[str]) -> str:
    key = m["key"]
    if key.lower().endswith(("file", "path")):  # password_file = /etc/...: a path, not one
        return m[0]
    value = m["value"]
    quote_char = value[0] if value[:1] in ("'", '"') else ""
    return f"{key}{m['sep']}{quote_char}{MASK}{quote_char}"


class Redactor:
    """Masks registered secret values and anything shaped like a credential."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._lock = threading.Lock()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Register secret values (and their URL-encoded forms); empty ones are ignored."""
        with self._lock:
            found = set(self._secrets)
            for secret in secrets:
                value = secret.strip()
                if value:
                    # As written, URL-encoded, and as it looks inside a JSON string
                    # or a repr() (a %r argument): quotes and backslashes escaped.
                    found.update(
                        {
                            value,
                            quote(value, safe=""),
                            json.dumps(value)[1:-1],
                            json.dumps(value, ensure_ascii=False)[1:-1],
                            repr(value)[1:-1],
                        }
                    )
            # Longest first: a secret containing another is masked whole.
            self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(rf"\g<head>:{MASK}@", text)
        text = _AUTHORIZATION.sub(rf"\g<head>{MASK}", text)
        text = _BEARER.sub(rf"\g<head>{MASK}", text)
        return _KEY_VALUE.sub(_mask_key_value, text)


def secret_values(model: object) -> list[str]:
    """Every ``SecretStr``/``SecretBytes`` value in a (nested) pydantic model."""
    out: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
        elif isinstance(value, SecretBytes):
            out.append(value.get_secret_value().decode("utf-8", "replace"))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item)

    walk(model)
    return [s for s in out if s]


# -- line shape ---------------------------------------------------------------

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_BARE = re.compile(r"^[^\s\"=]+$")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record (not logging's own, not ``_private``)."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _kv_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if _BARE.match(text) else json.dumps(text, ensure_ascii=False)


def key_values(fields: Mapping[str, object]) -> str:
    """``k=v`` pairs; a value with spaces, quotes or ``=`` is JSON-quoted."""
    return " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())


def _utc_stamp(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int((created % 1) * 1000):03d}Z"


class LineFormatter(logging.Formatter):
    """``[<N>|timestamp] logger LEVEL message key=value``, redacted."""

    def __init__(self, *, journal: bool, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.journal = journal
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.name} {record.levelname} {record.getMessage()}"
        fields = record_fields(record)
        if fields:  # masked before quoting, which would escape a secret's quotes
            line += " " + key_values(
                {k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()}
            )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        line = self.redact(line)
        if self.journal:
            # Every line of a traceback keeps the record's priority.
            prefix = f"<{syslog_priority(record.levelno)}>"
            return "\n".join(prefix + part for part in line.split("\n"))
        return f"{_utc_stamp(record.created)} {line}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the fields, exc; redacted."""

    def __init__(self, *, journal: bool, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.journal = journal
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc_stamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": self.redact(record.getMessage()),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, self.redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            out["exc"] = self.redact(self.formatException(record.exc_info))
        # The secrets were masked in the values: JSON escaping cannot hide one.
        text = self.redact(json.dumps(out, ensure_ascii=False, default=str))
        return f"<{syslog_priority(record.levelno)}>{text}" if self.journal else text


# -- rate limiting ------------------------------------------------------------

_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
_DIGITS = re.compile(r"\d+")


def fault_key(record: logging.LogRecord) -> tuple[str, int, str]:
    """What makes two records "the same fault": logger, level, message template.

    A template of bare placeholders (``log.warning("%s", text)``) says
    nothing, so the message itself is used, its numbers blanked.
    """
    template = record.msg if isinstance(record.msg, str) else str(record.msg)
    if not re.search(r"[A-Za-z]", _SPEC.sub("", template)):
        template = record.getMessage()
    return record.name, record.levelno, _DIGITS.sub("#", template)


@dataclass(slots=True)
class _Fault:
    seen: int  # occurrences since the fault was (re)born
    last: float  # when it last occurred
    suppressed: int = 0  # held back since the last summary
    since: float = 0.0  # when the first of those was held back
    sample: logging.LogRecord | None = None  # the last one held back


class RepeatFilter(logging.Filter):
    """Lets a fault's first ``burst`` records through, then one summary per ``window_s``.

    The clock is passed in (monotonic), so tests are deterministic.  Summary
    records are handed to ``sink`` (the handler's ``handle``), outside the
    filter's lock; they pass this filter untouched.
    """

    def __init__(
        self,
        *,
        burst: int = BURST,
        window_s: float = WINDOW_S,
        min_level: int = logging.INFO,
        mono: Callable[[], float] = time.monotonic,
        sink: Callable[[logging.LogRecord], object] | None = None,
    ) -> None:
        super().__init__()
        self.burst = max(1, burst)
        self.window_s = window_s
        self.min_level = min_level
        self.sink = sink
        self._mono = mono
        self._faults: dict[tuple[str, int, str], _Fault] = {}
        self._lock = threading.Lock()
        self._ticked = -1e18

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_repeat_summary", False):
            return True
        now = self._mono()
        with self._lock:
            due = self._due(now, flush=False)
            passed = True
            if record.levelno >= self.min_level:
                passed = self._count(fault_key(record), record, now)
        self._send(due)
        return passed

    def _count(self, key: tuple[str, int, str], record: logging.LogRecord, now: float) -> bool:
        fault = self._faults.get(key)
        if fault is None:
            self._faults[key] = _Fault(seen=1, last=now)
            return True
        fault.seen += 1
        fault.last = now
        if fault.seen <= self.burst:
            return True
        if fault.suppressed == 0:
            fault.since = now
        fault.suppressed += 1
        fault.sample = record
        return False

    def _due(self, now: float, *, flush: bool) -> list[logging.LogRecord]:
        """Summaries whose window ended (all of them with ``flush``); idle faults forgotten."""
        out: list[logging.LogRecord] = []
        for key, fault in list(self._faults.items()):
            if fault.suppressed and (flush or now - fault.since >= self.window_s):
                assert fault.sample is not None
                out.append(self._summary(fault.sample, fault.suppressed, now - fault.since))
                fault.suppressed, fault.sample = 0, None
            elif not fault.suppressed and now - fault.last >= self.window_s:
                del self._faults[key]
        return out

    @staticmethod
    def _summary(sample: logging.LogRecord, count: int, span: float) -> logging.LogRecord:
        span = max(span, 1.0)
        summary = logging.makeLogRecord(
            {
                **{k: v for k, v in sample.__dict__.items() if k in _STANDARD},
                "msg": f"{sample.getMessage()} [repeated {count} times in the last {span:.0f} s]",
                "args": None,
                "exc_info": None,
                "exc_text": None,
                "stack_info": None,
                "created": time.time(),
            }
        )
        summary.msecs = (summary.created % 1) * 1000
        summary.__dict__.update(repeated=count, _repeat_summary=True)
        return summary

    def _send(self, records: list[logging.LogRecord]) -> None:
        if self.sink is not None:
            for record in records:
                self.sink(record)

    def tick(self, *, every_s: float = 1.0) -> None:
        """Emit summaries whose window ended although nothing else was logged since."""
        now = self._mono()
        with self._lock:
            if now - self._ticked < every_s:
                return
            self._ticked = now
            due = self._due(now, flush=False)
        self._send(due)

    def flush(self) -> None:
        """Emit every pending summary now (at shutdown)."""
        with self._lock:
            due = self._due(self._mono(), flush=True)
        self._send(due)


# -- installing ---------------------------------------------------------------


@dataclass(slots=True)
class LogSetup:
    handler: logging.Handler
    redactor: Redactor
    repeats: RepeatFilter
    style: str  # text | journal | json (+journal)


_active: LogSetup | None = None


def setup_logging(
    level: int | str,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    style: str | None = None,
    mono: Callable[[], float] = time.monotonic,
    burst: int = BURST,
    window_s: float = WINDOW_S,
) -> LogSetup:
    """Replace the root logger's handlers with the agent's (see the module docstring)."""
    global _active
    env = os.environ if environ is None else environ
    out = stream if stream is not None else sys.stderr
    chosen = (style or env.get(FORMAT_ENV) or "auto").strip().lower()
    bad_style = chosen not in STYLES
    if bad_style:
        chosen = "auto"
    journal = chosen == "journal" or (chosen != "text" and _stream_is_journal(out, env))
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(out)
    if chosen == "json":
        handler.setFormatter(JsonFormatter(journal=journal, redact=redactor))
    else:
        handler.setFormatter(LineFormatter(journal=journal, redact=redactor))
    repeats = RepeatFilter(burst=burst, window_s=window_s, mono=mono, sink=handler.handle)
    handler.addFilter(repeats)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    name = "json" if chosen == "json" else ("journal" if journal else "text")
    _active = LogSetup(
        handler, redactor, repeats, name + ("+journal" if chosen == "json" and journal else "")
    )
    if bad_style:
        logging.getLogger(__name__).warning(
            "%s=%r is not one of %s: using auto", FORMAT_ENV, env.get(FORMAT_ENV), ", ".join(STYLES)
        )
    return _active


def redact(text: str) -> str:
    """``text`` with the secrets the running setup knows masked (unchanged before setup)."""
    return text if _active is None else _active.redactor(text)


def tick() -> None:
    """Called from the agent's loop about once a second: overdue repeat summaries go out."""
    if _active is not None:
        _active.repeats.tick()


def shutdown() -> None:
    """Pending repeat summaries go out (call once the agent has stopped)."""
    if _active is not None:
        _active.repeats.flush()
