"""The clock row of the installer's check: where UTC will come from.

The same test the agent makes (``agent.clock.kernel_clock_synchronised``,
adjtimex read-only, what ``timedatectl`` shows).  An unsynchronised clock
is a warning under ``clock.source = "auto"`` (UTC then comes from the GNSS
fix, which the GPS rows check) and a failure under ``"system"``, where the
agent would stamp records with whatever the clock says.
"""

from __future__ import annotations

from agent.buffer.peek import human_age
from agent.check.report import Row
from agent.clock import ClockSource

_FAR_S = 2.0  # system clock and GNSS further apart than this is worth saying


def _offset_text(offset_s: float | None) -> str:
    if offset_s is None:
        return ""
    if abs(offset_s) < _FAR_S:
        return f"; agrees with GNSS time ({offset_s:+.1f} s)"
    way = "ahead of" if offset_s > 0 else "behind"
    return f"; {human_age(abs(offset_s))} {way} GNSS time"


def clock_row(source: ClockSource, synced: bool, offset_s: float | None) -> Row:
    """Decide the row from the configured source, the kernel's sync flag and the GNSS offset.

    ``offset_s`` is system clock minus GNSS time when the GPS row got a timed
    fix (else None); it is reported, never judged: a simulator or a receiver
    with a week-rollover bug is not the system clock's fault.
    """
    data = {"source": source, "ntp_synchronised": synced, "system_minus_gnss_s": offset_s}
    offset = _offset_text(offset_s)
    enable_ntp = (
        "enable time synchronisation (sudo timedatectl set-ntp true) and give the device "
        "network access to an NTP server"
    )
    if source == "gnss":
        state = "NTP-synchronised" if synced else "not NTP-synchronised"
        return Row(
            "clock",
            "pass",
            f"clock.source = gnss: UTC from the GNSS fix (system clock {state}, not used){offset}",
            data=data,
        )
    if synced:
        return Row(
            "clock",
            "pass",
            f"system clock NTP-synchronised: UTC from the system{offset}",
            data=data,
        )
    if source == "system":
        return Row(
            "clock",
            "fail",
            f"system clock not NTP-synchronised, and clock.source = system trusts it{offset}",
            f'{enable_ntp}, or set clock.source = "auto" so UTC comes from GNSS until it is',
            data=data,
        )
    return Row(
        "clock",
        "warn",
        f"system clock not NTP-synchronised: UTC will come from the GNSS fix{offset}",
        f"{enable_ntp}; until then records wait for the first GNSS fix to be dated",
        data=data,
    )
