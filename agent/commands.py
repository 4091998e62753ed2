"""Commands from the cloud (``cmd`` topic): what is asked, and whether to do it.

Pure: :func:`accept` turns a payload into a :class:`Command` to run or an
:class:`Answer` that refuses it (unreadable, unknown name, expired).  The
runtime runs accepted commands and answers every one on ``cmd/result`` with
the command's id, so the cloud never waits on silence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from agent.messages import Command, validation_reason

#: Names this agent runs; docs/PROTOCOL.md describes each.
KNOWN = ("request_position", "flush", "apply_config", "restart")

MAX_COMMAND_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """What goes back on ``cmd/result`` (the runtime adds device and versions)."""

    status: Literal["done", "rejected", "expired"]
    id: str | None
    name: str | None
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def accept(payload: bytes, now: datetime | None) -> Command | Answer:
    """The command to run, or the refusal to send; ``now`` is trusted UTC if known."""
    if len(payload) > MAX_COMMAND_BYTES:
        return Answer("rejected", _claimed(payload, "id"), None, f"{len(payload)} bytes")
    try:
        cmd = Command.model_validate_json(payload)
    except ValidationError as exc:
        return Answer(
            "rejected", _claimed(payload, "id"), _claimed(payload, "name"), validation_reason(exc)
        )
    if cmd.name not in KNOWN:
        return Answer("rejected", cmd.id, cmd.name, f"unknown command; known: {', '.join(KNOWN)}")
    if cmd.expires is not None and now is not None and now > cmd.expires:
        return Answer("expired", cmd.id, cmd.name, f"expired at {cmd.expires.isoformat()}")
    return cmd


def _claimed(payload: bytes, key: str) -> str | None:
    """A field of an invalid payload, so the refusal can still name the command."""
    try:
        value = json.loads(payload).get(key)
    except (ValueError, AttributeError, RecursionError):
        return None
    return value[:64] if isinstance(value, str) else None
