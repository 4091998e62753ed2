"""What to ask the vehicle next: a poll schedule by priority that fits the link.

An ELM327 over Bluetooth answers in 20–300 ms and one request is in flight
at a time, so the link has a capacity: the share of time it is busy is
``sum(latency / period)`` over the items.  The schedule keeps an EWMA of
each item's latency and, when that utilisation would exceed
``max_utilisation``, stretches periods:

1. priority levels from the lowest up (the top level excepted), each by a
   common factor of at most ``max_stretch``;
2. if that is not enough, every item by one common factor.

No item is ever polled less often than ``max(period * 10, 120 s)`` (its
*bound*), so nothing starves, and an item past its bound is served first.
Otherwise the most important due item goes first (then the earliest due,
then the name), so RPM and speed keep their rhythm.  Items that keep failing
while others answer (a PID the ECU does not really support) back off
exponentially up to their bound; a success restores them.  Failures while
nothing answers (ignition off) do not count: RPM must keep being asked so
the engine start is seen.

Pure and deterministic: the caller passes its monotonic time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.obd.pids import SIGNALS

#: Non-PID jobs: battery voltage (ATRV), DTC reads (modes 03 + 07), MIL status (01 01).
VOLTAGE, DTC, MIL = "voltage", "dtc", "mil"


def pid_item(pid: int) -> str:
    """Schedule name of a service 01 PID: the request itself, ``010C``."""
    return f"01{pid:02X}"


@dataclass(frozen=True, slots=True)
class PollItem:
    """One thing to poll: how often, how important (0 = most), and the PID if it is one."""

    name: str
    period_s: float
    priority: int
    pid: int | None = None

    def __post_init__(self) -> None:
        if not self.period_s > 0:
            raise ValueError(f"{self.name}: period must be positive, not {self.period_s}")

    @property
    def bound_s(self) -> float:
        """Longest allowed interval between two polls: never starved beyond this."""
        return max(self.period_s * 10.0, 120.0)


#: Default priority of each PID; others (added to SIGNALS later) get 4.
PID_PRIORITY = {
    0x0C: 0,  # engine speed
    0x0D: 0,  # vehicle speed
    0x5E: 2,  # fuel rate
    0x10: 2,  # MAF
    0x04: 2,  # engine load
    0x11: 2,  # throttle
    0x31: 5,  # distance since DTC clear
    0xA6: 5,  # odometer
}


def default_items(periods: Mapping[str, float] | None = None) -> list[PollItem]:
    """Every signal in :data:`~agent.obd.pids.SIGNALS` plus voltage, DTCs and MIL.

    ``periods`` overrides the period of items by name (config).
    """
    over = dict(periods or {})
    items = [
        PollItem(VOLTAGE, 5.0, 1),
        PollItem(MIL, 30.0, 3),
        PollItem(DTC, 60.0, 3),
        *(
            PollItem(pid_item(pid), s.period_s, PID_PRIORITY.get(pid, 4), pid)
            for pid, s in SIGNALS.items()
        ),
    ]
    unknown = set(over) - {i.name for i in items}
    if unknown:
        raise ValueError(f"no poll item named {', '.join(sorted(unknown))}")
    return [
        PollItem(i.name, over[i.name], i.priority, i.pid) if i.name in over else i for i in items
    ]


@dataclass(slots=True)
class _State:
    """What the schedule knows about one item."""

    item: PollItem
    latency: float
    due: float | None = None  # None: never polled, due at once
    last: float | None = None  # start of the last poll
    failures: int = 0  # consecutive failures that count towards backoff
    polls: int = 0
    fails_total: int = 0
    effective: float = 0.0  # period in use after backoff and stretching


@dataclass(frozen=True, slots=True)
class ItemStats:
    """Status of one item (JSON-able via dataclasses.asdict)."""

    period_s: float  # configured
    effective_s: float  # in use now
    latency_s: float  # EWMA
    priority: int
    polls: int
    failures: int  # in total
    backed_off: bool


@dataclass(frozen=True, slots=True)
class ScheduleStats:
    """Status of the schedule: link share in use, demand before stretching, items."""

    utilisation: float
    demand: float
    items: dict[str, ItemStats]


def _fit(lat: list[float], per: list[float], cap: list[float], budget: float) -> float:
    """Least factor k >= 1 with sum(lat / min(per * k, cap)) <= budget; inf if none.

    Between two breakpoints (the factors at which an item reaches its cap)
    the load is ``a / k + b``, so each segment is solved exactly.
    """
    ratio = [c / p for p, c in zip(per, cap, strict=True)]

    def load(k: float) -> float:
        return sum(lo / (p * min(k, r)) for lo, p, r in zip(lat, per, ratio, strict=True))

    if load(1.0) <= budget:
        return 1.0
    k_lo = 1.0
    for k_hi in sorted({r for r in ratio if r > 1.0}):
        if load(k_hi) <= budget:
            a = sum(lo / p for lo, p, r in zip(lat, per, ratio, strict=True) if r >= k_hi)
            b = sum(lo / (p * r) for lo, p, r in zip(lat, per, ratio, strict=True) if r < k_hi)
            if a <= 0.0 or budget <= b:
                return k_hi
            return min(max(a / (budget - b), k_lo), k_hi)
        k_lo = k_hi
    return math.inf


class PollSchedule:
    """Priority poll schedule; call :meth:`next`, poll, then :meth:`done`."""

    def __init__(
        self,
        items: Iterable[PollItem] | None = None,
        *,
        max_utilisation: float = 0.8,
        max_stretch: float = 4.0,
        alpha: float = 0.2,
        initial_latency_s: float = 0.05,
        backoff_after: int = 3,
        idle_wait_s: float = 60.0,
    ) -> None:
        self._items = {i.name: i for i in (default_items() if items is None else items)}
        self.max_utilisation = max_utilisation
        self.max_stretch = max_stretch
        self.alpha = alpha
        self.backoff_after = backoff_after
        self.idle_wait_s = idle_wait_s
        self._initial = initial_latency_s
        self._states = {n: _State(i, initial_latency_s) for n, i in self._items.items()}
        self._last_ok: dict[str, float] = {}  # item -> start of its last successful poll
        self._replan()

    def pid(self, item: str) -> int | None:
        """The service 01 PID an item polls, None for the non-PID jobs."""
        i = self._items.get(item)
        return None if i is None else i.pid

    @property
    def items(self) -> list[str]:
        """Names of the items being polled."""
        return sorted(self._states)

    def restrict(self, supported: set[int]) -> None:
        """Poll only the PIDs the ECU reports (discovery); non-PID jobs stay.

        Works from the configured items, so a later call (another vehicle)
        can bring PIDs back; items that stay keep their statistics.
        """
        keep = {n: i for n, i in self._items.items() if i.pid is None or i.pid in supported}
        self._states = {n: self._states.get(n) or _State(i, self._initial) for n, i in keep.items()}
        self._replan()

    # ------------------------------------------------------------------ polling

    def next(self, now: float) -> tuple[str, float]:
        """The item to poll next and how long to wait first (0.0: poll it now).

        With nothing to poll at all, ``("", idle_wait_s)``.
        """
        if not self._states:
            return "", self.idle_wait_s
        due = [s for s in self._states.values() if s.due is None or s.due <= now]
        if due:
            best = min(due, key=lambda s: self._rank(s, now))
            return best.item.name, 0.0
        first = min(self._states.values(), key=lambda s: (s.due, s.item.priority, s.item.name))
        assert first.due is not None
        return first.item.name, first.due - now

    def _rank(self, s: _State, now: float) -> tuple[bool, int, float, str]:
        starving = s.last is not None and now - s.last >= s.item.bound_s
        return (
            not starving,
            s.item.priority,
            s.due if s.due is not None else -math.inf,
            s.item.name,
        )

    def done(self, item: str, now: float, latency_s: float, ok: bool) -> None:
        """Record a poll of ``item`` that ended at ``now`` after ``latency_s``."""
        s = self._states.get(item)
        if s is None:
            return  # removed by restrict() while in flight
        latency_s = max(0.0, latency_s)
        start = now - latency_s
        # The first answer replaces the guess; later ones move the EWMA.
        s.latency = s.latency + self.alpha * (latency_s - s.latency) if s.polls else latency_s
        s.polls += 1
        if ok:
            s.failures = 0
            self._last_ok[item] = start
        else:
            s.fails_total += 1
            since = s.last if s.last is not None else -math.inf
            if any(t >= since for n, t in self._last_ok.items() if n != item):
                s.failures += 1
        prev_due, s.last = s.due, start
        self._replan()
        period = s.effective
        if prev_due is not None and prev_due + period > start:
            s.due = prev_due + period  # keep the phase: the average rate is the period
        else:
            s.due = start + period  # late by more than a period: no catch-up burst

    # ------------------------------------------------------------------ planning

    def _backed_off(self, s: _State) -> float:
        """Period doubled per failure past ``backoff_after``, up to the item's bound."""
        extra = s.failures - self.backoff_after + 1
        if extra <= 0:
            return s.item.period_s
        return min(s.item.period_s * 2.0 ** min(extra, 64), s.item.bound_s)

    def _replan(self) -> None:
        """Effective periods for the current latencies: stretch by priority, then all."""
        states = sorted(self._states.values(), key=lambda s: (s.item.priority, s.item.name))
        per = {s.item.name: self._backed_off(s) for s in states}
        budget = self.max_utilisation

        def load(names: Iterable[str]) -> float:
            return sum(self._states[n].latency / per[n] for n in names)

        levels = sorted({s.item.priority for s in states}, reverse=True)
        for level in levels[:-1]:
            if load(per) <= budget:
                break
            mine = [s for s in states if s.item.priority == level]
            rest = load(n for n in per if self._states[n].item.priority != level)
            caps = [min(per[s.item.name] * self.max_stretch, s.item.bound_s) for s in mine]
            caps = [max(c, per[s.item.name]) for c, s in zip(caps, mine, strict=True)]
            k = _fit(
                [s.latency for s in mine],
                [per[s.item.name] for s in mine],
                caps,
                budget - rest,
            )
            for s, cap in zip(mine, caps, strict=True):
                per[s.item.name] = min(per[s.item.name] * k, cap)
        if load(per) > budget:
            k = _fit(
                [s.latency for s in states],
                [per[s.item.name] for s in states],
                [max(s.item.bound_s, per[s.item.name]) for s in states],
                budget,
            )
            for s in states:
                per[s.item.name] = min(per[s.item.name] * k, max(s.item.bound_s, per[s.item.name]))
        for s in states:
            s.effective = per[s.item.name]

    def stats(self) -> ScheduleStats:
        """Effective periods, latencies and link share, for the status topic."""
        items = {
            n: ItemStats(
                period_s=s.item.period_s,
                effective_s=round(s.effective, 3),
                latency_s=round(s.latency, 4),
                priority=s.item.priority,
                polls=s.polls,
                failures=s.fails_total,
                backed_off=s.failures >= self.backoff_after,
            )
            for n, s in sorted(self._states.items())
        }
        util = sum(s.latency / s.effective for s in self._states.values())
        demand = sum(s.latency / s.item.period_s for s in self._states.values())
        return ScheduleStats(round(util, 4), round(demand, 4), items)
