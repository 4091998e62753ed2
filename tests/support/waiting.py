"""Waiting on a condition with a deadline, in the argument order most tests read best."""

from __future__ import annotations

from collections.abc import Callable

from simulators.broker import wait_for


def until(cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """``wait_for`` with the description first and a short poll (threads answer in ms)."""
    wait_for(cond, timeout, what, poll=0.005)
