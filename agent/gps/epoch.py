"""Combine the sentences of one receiver epoch into one :class:`Fix`.

A receiver reports each navigation solution as a burst of sentences (RMC,
GGA, GSA, GSV, VTG ...), each carrying part of it.  :class:`EpochAssembler`
receives them one at a time as :class:`Report` records (already parsed by
:mod:`agent.gps.nmea`; this module knows nothing about NMEA text) and emits
one ``Fix`` per burst.

Two things make this harder than it looks:

* When is a burst complete?  A timed sentence with a new time of day proves
  the previous burst is over, but waiting for it costs a whole cycle of
  latency.  Like gpsd, the assembler learns which sentence closes the cycle
  (the *cycle ender*) and emits as soon as it arrives.
* Which date?  Only RMC and ZDA carry one.  The date is carried across epochs
  that lack it (stepping over midnight), and receivers with old firmware
  report dates 1024 weeks early, which ``rollover_floor`` corrects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeVar

from agent.gps.fix import Fix, FixMode

KNOTS_TO_MPS = 1852.0 / 3600.0  # exactly: one knot is one nautical mile (1852 m) per hour
KMH_TO_MPS = 1.0 / 3.6
DAY_US = 86_400_000_000
GPS_WEEK_ROLLOVER = timedelta(weeks=1024)  # 7168 days: the 10-bit GPS week number wraps
SAME_EPOCH_US = 10_000  # times closer than this are one epoch (GLL .758 vs GGA .76)
MIDNIGHT_STEP_US = DAY_US // 2  # a time of day this far below the last one is the next day
MAX_EPOCH_REPORTS = 256  # real epochs hold up to ~40 sentences; beyond this one never ends

_TIME_RANK = ("RMC", "GGA", "GNS", "GLL", "ZDA")  # timed sentences, by trust in their time
_DOP_RANK = ("GSA", "GGA", "GNS")  # where HDOP is read from, best first
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Report:
    """What one accepted sentence says about its epoch; ``None`` means "not said".

    ``key`` identifies the sentence's place in the receiver's cycle (talker
    and type, e.g. ``GPRMC``; for GSV only the last part of a group carries
    the plain key) and is what cycle-ender learning compares.  ``fix`` is the
    sentence's own verdict (RMC/GLL status, GGA quality, GSA mode, GNS/VTG
    mode indicator): True fix, False no fix, None silent.  Position fields
    are only filled when the sentence itself claims a fix.
    """

    kind: str
    key: str
    tod: int | None = None  # microseconds since 00:00 UTC
    day: date | None = None  # as received, before week-rollover correction
    fix: bool | None = None
    gsa_mode: int | None = None
    lat: float | None = None
    lon: float | None = None
    alt_msl: float | None = None
    geoid_sep: float | None = None
    speed: float | None = None  # m/s
    course: float | None = None
    quality: int | None = None
    sats_used: int | None = None
    sats_in_view: int | None = None  # GSV: satellites in view for this talker/signal
    view_group: str | None = None  # GSV: talker (+ signal id) the count belongs to
    hdop: float | None = None
    pdop: float | None = None
    vdop: float | None = None


def correct_rollover(day: date, floor: date | None) -> date:
    """Undo GPS week rollover: add 1024 weeks, as often as needed, to reach ``floor``.

    A receiver whose firmware predates a rollover counts weeks from the wrong
    epoch and reports dates exactly 1024 weeks (or twice that) too early.
    Dates on or after ``floor`` are trusted as they are.
    """
    if floor is None or day >= floor:
        return day
    periods = -(-(floor - day).days // GPS_WEEK_ROLLOVER.days)  # ceiling division
    try:
        return day + periods * GPS_WEEK_ROLLOVER
    except OverflowError:  # a floor near year 9999: nothing sensible to do
        return day


def _tod_delta(a: int, b: int) -> int:
    """Signed smallest difference a - b between two times of day, wrapping at midnight."""
    d = (a - b) % DAY_US
    return d - DAY_US if d > DAY_US // 2 else d


@dataclass(slots=True)
class _Epoch:
    """Reports collected so far for the epoch being assembled."""

    reports: list[Report] = field(default_factory=list)
    tod: int | None = None
    seen: dict[str, int] = field(default_factory=dict)  # key -> occurrences
    timed_kinds: set[str] = field(default_factory=set)  # talker+type of timed sentences
    has_nav: bool = False  # holds an RMC, GGA, GNS or GLL (ZDA alone is no fix report)

    def add(self, rep: Report) -> str:
        """Add a report; return its occurrence key (``GNGSA#2`` = second GNGSA)."""
        n = self.seen.get(rep.key, 0) + 1
        self.seen[rep.key] = n
        self.reports.append(rep)
        if rep.tod is not None and self.tod is None and rep.kind != "ZDA":
            self.tod = rep.tod
        if rep.kind in _TIME_RANK:
            self.timed_kinds.add(rep.key)
            self.has_nav = self.has_nav or rep.kind != "ZDA"
        return f"{rep.key}#{n}"


class EpochAssembler:
    """Turns a stream of per-sentence reports into one ``Fix`` per receiver epoch.

    ``add`` returns the fixes completed by that report (zero, one, or rarely
    two); ``flush`` emits whatever is pending at end of stream.
    """

    def __init__(self, *, rollover_floor: date | None = None) -> None:
        self._floor = rollover_floor
        self._cur = _Epoch()
        self._last_occ: str | None = None  # occurrence key of the newest report
        self._candidate: str | None = None  # last report before the previous boundary
        self._ender: str | None = None  # learned cycle ender
        self._wrong: set[str] = set()  # enders proven wrong: never learned again
        self._done: _Epoch | None = None  # epoch just closed by the ender
        self._day: date | None = None  # date of the last dated epoch (corrected)
        self._day_tod: int | None = None  # its time of day

    @property
    def cycle_ender(self) -> str | None:
        """The learned cycle-ending sentence (e.g. ``GPVTG#1``), if any yet."""
        return self._ender

    def add(self, rep: Report, mono: float) -> list[Fix]:
        """Feed one report; return the fixes it completes."""
        out: list[Fix] = []
        if self._starts_new_epoch(rep):
            self._learn()
            out.append(self._emit(mono))
        elif self._is_late(rep):
            self._unlearn()
        elif len(self._cur.reports) >= MAX_EPOCH_REPORTS:
            out.extend(self.flush(mono))  # no timed sentence for ages: bound the memory
        occ = self._cur.add(rep)
        self._last_occ = occ
        if occ == self._ender and self._cur.has_nav:
            self._done = self._cur
            out.append(self._emit(mono))
        return out

    def flush(self, mono: float) -> list[Fix]:
        """End of stream: emit the pending epoch if it has a timed sentence, else drop it.

        Untimed leftovers (a GSV or GSA after the last fix) make no epoch.
        """
        if not self._cur.timed_kinds:
            self._cur = _Epoch()
            return []
        return [self._emit(mono)]

    def _starts_new_epoch(self, rep: Report) -> bool:
        cur = self._cur
        if not cur.reports or rep.kind not in _TIME_RANK:
            return False
        if rep.kind == "ZDA":
            # ZDA's time can be a second or two off the fix (and some relays repeat
            # it), so it splits only cycles that have no navigation time at all.
            return cur.tod is None and rep.key in cur.timed_kinds
        if rep.tod is not None and cur.tod is not None:
            return abs(rep.tod - cur.tod) >= SAME_EPOCH_US
        # No comparable times (no fix yet): a second GGA, RMC ... starts a new cycle.
        return rep.key in cur.timed_kinds

    def _is_late(self, rep: Report) -> bool:
        """A sentence of the epoch the ender already closed: the ender was a wrong guess."""
        done = self._done
        return (
            done is not None
            and done.tod is not None
            and rep.kind in _TIME_RANK
            and rep.kind != "ZDA"
            and rep.tod is not None
            and self._cur.tod is None
            and abs(rep.tod - done.tod) < SAME_EPOCH_US
        )

    def _unlearn(self) -> None:
        """Forget the ender for good and reopen its epoch: the Fix goes out again, complete."""
        assert self._done is not None and self._ender is not None
        done, self._done = self._done, None
        self._wrong.add(self._ender)
        self._ender = self._candidate = None
        reopened = _Epoch()
        for rep in done.reports + self._cur.reports:
            reopened.add(rep)
        self._cur = reopened

    def _learn(self) -> None:
        """At a boundary the ender was not seen: learn the sentence that closed this one."""
        last = self._last_occ
        if last is not None and last == self._candidate and last not in self._wrong:
            self._ender = last
        self._candidate = last

    def _emit(self, mono: float) -> Fix:
        epoch, self._cur = self._cur, _Epoch()
        if epoch is not self._done:
            self._done = None
        return self._compose(epoch.reports, mono)

    # -- composing one Fix ---------------------------------------------------

    def _compose(self, reports: list[Report], mono: float) -> Fix:
        """One Fix from an epoch's reports; newest values win within the epoch."""
        mode = _mode(reports)
        newest = reports[::-1]
        fixed = mode >= FixMode.FIX_2D
        pos = _pick(newest, _position) if fixed else None
        return Fix(
            time=self._utc(reports),
            mono=mono,
            mode=mode,
            lat=None if pos is None else pos[0],
            lon=None if pos is None else pos[1],
            alt_msl=_pick(newest, lambda r: r.alt_msl) if fixed else None,
            geoid_sep=_pick(newest, lambda r: r.geoid_sep) if fixed else None,
            speed=_pick(newest, lambda r: r.speed) if fixed else None,
            course=_pick(newest, lambda r: r.course) if fixed else None,
            quality=_pick(newest, lambda r: r.quality),
            sats_used=_sats_used(reports),
            sats_in_view=_sats_in_view(reports),
            hdop=_pick(_ranked(reports, _DOP_RANK), lambda r: r.hdop),
            pdop=_pick(reports, lambda r: r.pdop),
            vdop=_pick(reports, lambda r: r.vdop),
        )

    def _utc(self, reports: list[Report]) -> datetime | None:
        """UTC of the epoch: its time of day on its own date, or on the carried one."""
        tod = _pick(_ranked(reports, _TIME_RANK), lambda r: r.tod)
        if tod is None:
            return None
        day = _received_day(reports, tod)
        if day is not None:
            day = correct_rollover(day, self._floor)
        elif self._day is not None and self._day_tod is not None:
            day = self._day
            if tod - self._day_tod < -MIDNIGHT_STEP_US:
                day += timedelta(days=1)
        if day is None:
            return None
        self._day, self._day_tod = day, tod
        return datetime.combine(day, time(0), UTC) + timedelta(microseconds=tod)


def _pick(reports: Iterable[Report], get: Callable[[Report], _V | None]) -> _V | None:
    """The first value ``get`` finds in ``reports`` (in the order given)."""
    for rep in reports:
        v = get(rep)
        if v is not None:
            return v
    return None


def _ranked(reports: list[Report], kinds: tuple[str, ...]) -> list[Report]:
    """The reports of the given kinds, best-ranked kind first (stable within a kind)."""
    rank = {k: i for i, k in enumerate(kinds)}
    return sorted((r for r in reports if r.kind in rank), key=lambda r: rank[r.kind])


def _position(rep: Report) -> tuple[float, float] | None:
    if rep.lat is None or rep.lon is None:
        return None
    return rep.lat, rep.lon


def _received_day(reports: list[Report], tod: int) -> date | None:
    """The epoch's date as received: RMC's, else ZDA's moved to the epoch's side of midnight.

    ZDA's own time can differ from the fix by a second or two (Ashtech sends it
    late, timing receivers early); that matters when the two straddle midnight.
    """
    rmc = _pick(reports, lambda r: r.day if r.kind == "RMC" else None)
    if rmc is not None:
        return rmc
    for rep in reports:
        if rep.kind == "ZDA" and rep.day is not None:
            if rep.tod is None:
                return rep.day
            wraps = _tod_delta(tod, rep.tod) - (tod - rep.tod)  # -1, 0 or +1 day
            return rep.day + timedelta(microseconds=wraps)
    return None


def _mode(reports: list[Report]) -> FixMode:
    """Fix dimension from the sentences' own verdicts.

    Any "no fix" from a timed sentence (RMC, GGA, GNS, GLL) wins.  GSA and
    VTG carry no time, so one that arrived after the cycle ender may belong
    to the previous epoch; they decide only when no timed sentence spoke.
    The dimension comes from GSA, else 3D when GGA/GNS gave an altitude.
    """
    strong = [r.fix for r in reports if r.fix is not None and r.kind in _TIME_RANK]
    weak = [r.fix for r in reports if r.fix is not None and r.kind not in _TIME_RANK]
    verdicts = strong or weak
    if not verdicts:
        return FixMode.UNKNOWN
    if not all(verdicts):
        return FixMode.NO_FIX
    dims = [r.gsa_mode for r in reports if r.gsa_mode is not None and r.gsa_mode >= 2]
    if dims:
        return FixMode.FIX_3D if max(dims) >= 3 else FixMode.FIX_2D
    if any(r.kind in ("GGA", "GNS") and r.alt_msl is not None for r in reports):
        return FixMode.FIX_3D
    return FixMode.FIX_2D


def _sats_used(reports: list[Report]) -> int | None:
    """Largest of the GGA/GNS counts and the PRNs listed by all GSAs together.

    Multi-constellation receivers send one GGA per talker (GPGGA 5, GAGGA 1)
    and one GSA per system, so the total is the GN count or the GSA sum.
    """
    counts = [r.sats_used for r in reports if r.kind != "GSA" and r.sats_used is not None]
    listed = [r.sats_used for r in reports if r.kind == "GSA" and r.sats_used is not None]
    if listed:
        counts.append(sum(listed))
    return max(counts) if counts else None


def _sats_in_view(reports: list[Report]) -> int | None:
    """Sum over talkers of GSV "in view"; NMEA 4.1 signal groups of a talker overlap."""
    groups: dict[str, int] = {}
    for rep in reports:
        if rep.sats_in_view is not None and rep.view_group is not None:
            groups[rep.view_group] = rep.sats_in_view
    if not groups:
        return None
    per_talker: dict[str, int] = {}
    for group, n in groups.items():
        per_talker[group[:2]] = max(per_talker.get(group[:2], 0), n)
    return sum(per_talker.values())
