"""Trusted UTC on a device without a real-time clock.

A Raspberry Pi boots with whatever time it had when it was switched off (or
1970).  Until NTP has synchronised the kernel clock, the only trustworthy UTC
is the GNSS receiver's.  :class:`Clock` answers "what UTC was it at this
monotonic instant?" from whichever source is trusted, or ``None`` when
nothing is, and callers hold their records until it can answer: nothing
leaves the device stamped with a guessed time.

Intervals are always measured on the monotonic clock; UTC is only derived.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

ClockSource = Literal["auto", "system", "gnss"]

_TIME_ERROR = 5  # adjtimex() clock state: not synchronised
_STA_UNSYNC = 0x0040


class _Timeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex from <sys/timex.h> (Linux), enough of it for a read-only query."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def on_android() -> bool:
    """True under Termux: CPython built for Android has ``sys.getandroidapilevel``."""
    return hasattr(sys, "getandroidapilevel")


def kernel_clock_synchronised() -> bool:
    """True when the kernel says NTP (or chrony, timesyncd) has synchronised it.

    Same test as ``timedatectl``'s "System clock synchronized": adjtimex()
    in read-only mode; anything unexpected counts as not synchronised.

    On Android (Termux) apps may not call adjtimex: the app seccomp filter
    kills the process with SIGSYS, so it is never tried.  A phone's clock is
    set by the network (NITZ/NTP) and counts as synchronised there.
    """
    if on_android():
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    return bool(state not in (-1, _TIME_ERROR) and not tx.status & _STA_UNSYNC)


class Clock:
    """Maps monotonic instants to UTC from the system clock or GNSS fixes.

    ``source``: ``system`` trusts the kernel clock, ``gnss`` only receiver
    time, ``auto`` the kernel when it reports synchronisation (checked at most
    every ``recheck_s``), else GNSS.  ``mono``, ``wall`` and ``synced`` are
    injectable so tests and replays are deterministic.
    """

    def __init__(
        self,
        source: ClockSource = "auto",
        *,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        synced: Callable[[], bool] = kernel_clock_synchronised,
        recheck_s: float = 60.0,
    ) -> None:
        self.source = source
        self._mono = mono
        self._wall = wall
        self._synced = synced
        self._recheck_s = recheck_s
        self._synced_cache: tuple[float, bool] | None = None
        self._anchor: tuple[datetime, float] | None = None  # (gnss utc, mono)

    def observe_gnss(self, utc: datetime | None, mono: float) -> None:
        """Anchor UTC on a receiver epoch that carried a valid time."""
        if utc is not None:
            self._anchor = (utc, mono)

    def _system_trusted(self) -> bool:
        if self.source == "system":
            return True
        if self.source == "gnss":
            return False
        now = self._mono()
        if self._synced_cache is None or now - self._synced_cache[0] >= self._recheck_s:
            self._synced_cache = (now, self._synced())
        return self._synced_cache[1]

    @property
    def basis(self) -> str:
        """What UTC currently comes from: 'system', 'gnss' or 'none' (waiting)."""
        if self._system_trusted():
            return "system"
        return "gnss" if self._anchor is not None else "none"

    def utc_at(self, mono: float) -> datetime | None:
        """UTC at a monotonic instant, or None while no trusted time exists."""
        if self._system_trusted():
            return datetime.fromtimestamp(self._wall() - (self._mono() - mono), UTC)
        if self._anchor is None:
            return None
        utc, at = self._anchor
        return utc + timedelta(seconds=mono - at)

    def now(self) -> datetime | None:
        return self.utc_at(self._mono())
