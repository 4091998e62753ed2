"""The check's result rows and how they are shown: pure, no I/O.

Every probe returns ``Row`` objects; this module turns them into the table
an installer reads, the JSON a script reads, and the exit status.  Keeping
it pure means the wording and the exit rule are tested without devices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip"]

EXIT_OK = 0
EXIT_FAILED = 1

_LABEL = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
_COLOUR = {"pass": "\033[32m", "warn": "\033[33m", "fail": "\033[31m", "skip": "\033[2m"}
_RESET = "\033[0m"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the check: what was probed, the verdict, and what to do about it.

    ``fix`` is advice in plain words for a failure or warning (empty when
    there is nothing to do).  ``data`` holds the measured values for
    ``--json``; it never holds a secret.
    """

    check: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Passed, or only a warning: nothing stops the agent working."""
        return self.status in ("pass", "warn")

    @property
    def group(self) -> str:
        """``gps`` for ``gps.nmea``: the source the row belongs to."""
        return self.check.split(".", 1)[0]


def busy_row(check: str, pid: int) -> Row:
    """A probe not run because the agent is running and holds the device (or the session)."""
    return Row(
        check,
        "fail",
        f"not checked: the agent (pid {pid}) is running and uses it",
        "stop the agent (sudo systemctl stop telematics-agent), run the check, then start "
        "the agent again",
        data={"agent_pid": pid},
    )


def failed(rows: Sequence[Row]) -> list[Row]:
    """Rows that make the check fail: required ones that did not pass."""
    return [r for r in rows if r.status == "fail" and r.required]


def exit_status(rows: Sequence[Row]) -> int:
    """1 when a required check failed, else 0 (warnings and skips do not fail)."""
    return EXIT_FAILED if failed(rows) else EXIT_OK


def with_required(rows: Sequence[Row], required: bool) -> list[Row]:
    """The same rows, marked required or not (the runner decides from the config)."""
    return [replace(r, required=required) for r in rows]


def format_table(rows: Sequence[Row], *, colour: bool = False) -> str:
    """``CHECK  RESULT  DETAIL`` aligned, then one ``FIX:`` line per failure or warning."""
    width = max([len("CHECK"), *(len(r.check) for r in rows)])
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for r in rows:
        shown = f"{_LABEL[r.status]:<6}"
        if colour:
            shown = f"{_COLOUR[r.status]}{shown}{_RESET}"
        lines.append(f"{r.check:<{width}}  {shown}  {r.detail}")
    fixes = [r for r in rows if r.fix and r.status in ("fail", "warn")]
    if fixes:
        lines.append("")
        lines.extend(f"FIX: {r.check}: {r.fix}" for r in fixes)
    lines.append("")
    lines.append(summary(rows))
    return "\n".join(lines) + "\n"


def summary(rows: Sequence[Row]) -> str:
    """The last line: how many checks ran, which required ones failed, the exit status."""
    bad = failed(rows)
    warned = [r for r in rows if r.status == "warn"]
    passed = sum(1 for r in rows if r.status == "pass")
    parts = [f"{passed} passed"]
    if warned:
        parts.append(f"{len(warned)} warning{'s' if len(warned) > 1 else ''}")
    if bad:
        parts.append(f"{len(bad)} failed: {', '.join(r.check for r in bad)}")
    verdict = "NOT READY" if bad else "ready"
    return f"{verdict}: {'; '.join(parts)} (exit {exit_status(rows)})"


def to_json(rows: Sequence[Row]) -> str:
    """The rows as a JSON list of ``{check, ok, required, result, detail, fix, data}``."""
    return json.dumps(
        [
            {
                "check": r.check,
                "ok": r.ok,
                "required": r.required,
                "result": r.status,
                "detail": r.detail,
                "fix": r.fix or None,
                "data": dict(r.data),
            }
            for r in rows
        ],
        indent=2,
        default=str,
    )
