"""Clock: UTC from the system only when synchronised, else GNSS, else nothing."""

from __future__ import annotations

import ctypes
import sys
from datetime import UTC, datetime, timedelta

import pytest

from agent.clock import Clock, kernel_clock_synchronised

GNSS = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class Mono:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_unsynchronised_waits_for_gnss() -> None:
    mono = Mono()
    clock = Clock("auto", mono=mono, wall=lambda: 0.0, synced=lambda: False)
    assert clock.now() is None and clock.basis == "none"
    clock.observe_gnss(GNSS, 100.0)
    mono.t = 102.5
    assert clock.now() == GNSS + timedelta(seconds=2.5)
    assert clock.utc_at(99.0) == GNSS - timedelta(seconds=1)
    assert clock.basis == "gnss"


def test_synchronised_system_clock_is_used() -> None:
    wall = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()
    clock = Clock("auto", mono=Mono(), wall=lambda: wall, synced=lambda: True)
    assert clock.basis == "system"
    assert clock.utc_at(90.0) == datetime(2026, 3, 2, 8, 59, 50, tzinfo=UTC)


def test_forced_gnss_ignores_system() -> None:
    clock = Clock("gnss", mono=Mono(), wall=lambda: 1e9, synced=lambda: True)
    assert clock.now() is None


def test_android_counts_as_synchronised_without_calling_adjtimex(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Android the app seccomp filter would kill the agent on adjtimex: never call it."""

    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("adjtimex must not be called on Android")

    monkeypatch.setattr(ctypes, "CDLL", forbidden)
    monkeypatch.setattr(sys, "getandroidapilevel", lambda: 33, raising=False)
    assert kernel_clock_synchronised() is True
    monkeypatch.delattr(sys, "getandroidapilevel")
    with pytest.raises(AssertionError, match="must not be called"):
        kernel_clock_synchronised()  # elsewhere it does ask the kernel
