"""Commands from the cloud: which are run, which are refused and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.commands import KNOWN, Answer, accept
from agent.messages import Command

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def cmd(**kw: object) -> bytes:
    body = {"v": 1, "id": "c-1", "name": "request_position", **kw}
    return Command.model_validate(body).model_dump_json().encode()


def test_a_known_command_in_time_is_run() -> None:
    got = accept(cmd(expires="2026-11-23T08:05:00Z"), NOW)
    assert isinstance(got, Command) and got.name in KNOWN and got.id == "c-1"


def test_an_expired_command_is_answered_not_run() -> None:
    got = accept(cmd(expires="2026-11-23T07:59:00Z"), NOW)
    assert isinstance(got, Answer) and (got.status, got.id) == ("expired", "c-1")
    # Without trusted time the device cannot tell; it runs it.
    assert isinstance(accept(cmd(expires="2026-11-23T07:59:00Z"), None), Command)


def test_unknown_and_broken_commands_are_refused_with_the_reason() -> None:
    unknown = accept(cmd(name="self_destruct"), NOW)
    assert isinstance(unknown, Answer) and unknown.status == "rejected"
    assert unknown.reason is not None and "request_position" in unknown.reason
    broken = accept(b'{"v":1,"id":"c-2","name":"request_position","extra":1}', NOW)
    assert isinstance(broken, Answer) and (broken.status, broken.id) == ("rejected", "c-2")
    assert broken.reason is not None and "extra" in broken.reason
    garbage = accept(b"\xff not json", NOW)
    assert isinstance(garbage, Answer) and garbage.id is None and garbage.status == "rejected"
    huge = accept(b"{" + b" " * 70_000 + b"}", NOW)
    assert isinstance(huge, Answer) and huge.reason == "70002 bytes"


def test_expiry_is_compared_on_utc() -> None:
    later = NOW + timedelta(minutes=10)
    assert isinstance(accept(cmd(expires="2026-11-23T08:05:00Z"), later), Answer)
