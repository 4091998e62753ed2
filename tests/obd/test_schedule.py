"""The poll schedule on a simulated link: fast, slow, failing and unsupported items."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.obd.pids import SIGNALS
from agent.obd.schedule import (
    DTC,
    MIL,
    VOLTAGE,
    PollItem,
    PollSchedule,
    _fit,
    default_items,
    pid_item,
)

RPM, SPEED = pid_item(0x0C), pid_item(0x0D)
HOUR = 3600.0

Latency = Callable[[str, float], float]
Answer = Callable[[str, float], bool]


def simulate(
    sched: PollSchedule,
    seconds: float,
    latency: Latency,
    ok: Answer = lambda item, now: True,
    start: float = 1000.0,
) -> dict[str, list[float]]:
    """Drive the schedule like the reader does, on a fake monotonic clock.

    Returns the start time of every poll, per item.
    """
    now, polls = start, defaultdict[str, list[float]](list)
    while now < start + seconds:
        item, wait = sched.next(now)
        if wait > 0:
            now += wait
            continue
        polls[item].append(now)
        took = latency(item, now)
        now += took
        sched.done(item, now, took, ok(item, now))
    return dict(polls)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(times)]


def test_fast_adapter_polls_everything_at_its_period() -> None:
    sched = PollSchedule()
    polls = simulate(sched, HOUR, lambda item, now: 0.02)
    for item in default_items():
        expected = HOUR / item.period_s
        assert abs(len(polls[item.name]) - expected) <= max(1.0, 0.01 * expected), item.name
    assert max(gaps(polls[RPM])) < 0.5 + 0.02 * 16  # at worst behind one round of others
    stats = sched.stats()
    assert stats.utilisation == stats.demand < 0.2
    assert all(s.effective_s == s.period_s for s in stats.items.values())


def test_slow_adapter_is_bounded_and_rpm_speed_get_the_largest_share() -> None:
    sched = PollSchedule()
    polls = simulate(sched, HOUR, lambda item, now: 0.3)
    total = sum(len(p) for p in polls.values())
    busy = total * 0.3 / HOUR
    assert 0.7 < busy <= 0.82  # the link is used, not saturated
    stats = sched.stats()
    assert stats.demand > 1.5 and stats.utilisation == pytest.approx(0.8, abs=1e-6)
    top = len(polls[RPM]) + len(polls[SPEED])
    assert top / total > 0.9
    others = max(len(p) for name, p in polls.items() if name not in (RPM, SPEED))
    assert min(len(polls[RPM]), len(polls[SPEED])) > 20 * others
    assert stats.items[RPM].effective_s < 1.0  # still better than 1 Hz
    # Lower priorities were slowed more than the top one, and nobody starves.
    assert stats.items["012F"].effective_s / 30.0 > stats.items[RPM].effective_s / 0.5
    for item in default_items():
        assert max(gaps(polls[item.name])) <= item.bound_s + 1.0, item.name


def test_moderate_slowness_only_stretches_low_priorities() -> None:
    sched = PollSchedule()
    polls = simulate(sched, HOUR, lambda item, now: 0.18)
    stats = sched.stats()
    assert stats.demand > 0.8 >= stats.utilisation - 1e-9
    assert stats.items[RPM].effective_s == 0.5
    assert abs(len(polls[RPM]) - 7200) < 40
    assert stats.items["01A6"].effective_s > 60.0  # odometer, lowest priority, stretched


def test_unsupported_item_backs_off_up_to_its_bound_and_recovers() -> None:
    sched = PollSchedule()
    fuel_level = pid_item(0x2F)  # 30 s, bound 300 s
    working = [HOUR / 2]  # it starts answering after half an hour

    polls = simulate(
        sched,
        HOUR / 2,
        lambda item, now: 0.03,
        ok=lambda item, now: item != fuel_level,
    )
    g = gaps(polls[fuel_level])
    assert g[:2] == pytest.approx([30.0, 30.0], abs=0.5)
    assert g[-1] == pytest.approx(300.0, abs=0.5)  # capped at max(30 * 10, 120)
    assert all(b >= a - 0.5 for a, b in pairwise(g))  # never shrinks
    assert len(polls[fuel_level]) < 15
    assert sched.stats().items[fuel_level].backed_off
    after = simulate(sched, HOUR / 2, lambda item, now: 0.03, start=1000.0 + working[0])
    assert gaps(after[fuel_level])[-5:] == pytest.approx([30.0] * 5, abs=0.5)
    assert not sched.stats().items[fuel_level].backed_off


def test_everything_failing_is_not_unsupported() -> None:
    # Ignition off: the ECU answers nothing; RPM must still be asked at 2 Hz.
    sched = PollSchedule()
    polls = simulate(sched, 600.0, lambda item, now: 0.05, ok=lambda item, now: False)
    assert abs(len(polls[RPM]) - 1200) < 10
    assert not any(s.backed_off for s in sched.stats().items.values())


def test_first_round_follows_priority_then_name() -> None:
    sched = PollSchedule()
    polls = simulate(sched, 0.3, lambda item, now: 0.01)
    order = sorted(polls, key=lambda name: polls[name][0])
    assert order == [
        RPM, SPEED, VOLTAGE,
        "0104", "0110", "0111", "015E",
        DTC, MIL,
        "0105", "010F", "011F", "012F", "0142",
        "0131", "01A6",
    ]  # fmt: skip


def test_next_says_what_comes_next_and_how_long_to_wait() -> None:
    sched = PollSchedule([PollItem("a", 1.0, 0), PollItem("b", 3.0, 1)])
    assert sched.next(0.0) == ("a", 0.0)
    sched.done("a", 0.1, 0.1, True)
    assert sched.next(0.1) == ("b", 0.0)
    sched.done("b", 0.2, 0.1, True)
    item, wait = sched.next(0.2)
    assert item == "a" and wait == pytest.approx(0.8)  # phase kept: due at 1.0
    sched.done("a", 5.0, 0.1, True)  # very late: re-anchored, no burst
    assert sched.next(5.0)[0] == "b"
    sched.done("b", 5.1, 0.1, True)
    item, wait = sched.next(5.1)
    assert item == "a" and wait == pytest.approx(0.8)


def test_restrict_keeps_supported_pids_and_the_other_jobs() -> None:
    sched = PollSchedule()
    sched.restrict({0x0C, 0x0D, 0x05, 0x99})
    assert sched.items == sorted([RPM, SPEED, pid_item(0x05), VOLTAGE, DTC, MIL])
    assert sched.pid(RPM) == 0x0C and sched.pid(DTC) is None and sched.pid("nope") is None
    polls = simulate(sched, 60.0, lambda item, now: 0.02)
    assert set(polls) == set(sched.items)
    sched.restrict(set(SIGNALS))  # another vehicle: everything back
    assert len(sched.items) == len(SIGNALS) + 3
    assert sched.stats().items[RPM].polls == len(polls[RPM])  # kept its statistics
    sched.done("0104", 61.0, 0.02, True)  # an unknown or removed item is ignored
    sched.restrict(set())
    sched.done("0104", 62.0, 0.02, True)
    assert pid_item(0x04) not in sched.items


def test_configured_periods_and_validation() -> None:
    items = {i.name: i for i in default_items({VOLTAGE: 2.0, "0105": 60.0})}
    assert items[VOLTAGE].period_s == 2.0 and items["0105"].period_s == 60.0
    assert items["0105"].bound_s == 600.0 and items[RPM].bound_s == 120.0
    with pytest.raises(ValueError, match="no poll item named bogus"):
        default_items({"bogus": 1.0})
    with pytest.raises(ValueError, match="positive"):
        PollItem("x", 0.0, 0)
    assert PollSchedule([]).next(5.0) == ("", 60.0)


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([i.name for i in default_items()]), st.floats(0.005, 1.5), min_size=16
    )
)
def test_no_item_starves_whatever_the_latencies(lat: dict[str, float]) -> None:
    sched = PollSchedule()
    polls = simulate(sched, 1200.0, lambda item, now: lat[item])
    slack = sum(lat.values())  # worst case: one poll of everything ahead of it
    for item in default_items():
        times = polls[item.name]
        assert max(gaps([*times, 1000.0 + 1200.0])) <= item.bound_s + slack, item.name
    stats = sched.stats()
    feasible = sum(lat[i.name] / i.bound_s for i in default_items()) <= 0.8
    assert not feasible or stats.utilisation <= 0.8 + 1e-9


@given(
    st.lists(
        st.tuples(st.floats(0.0, 2.0), st.floats(0.1, 60.0), st.floats(1.0, 50.0)),
        min_size=1,
        max_size=12,
    ),
    st.floats(0.01, 2.0),
)
def test_fit_finds_the_least_sufficient_factor(
    items: list[tuple[float, float, float]], budget: float
) -> None:
    lat = [lo for lo, _, _ in items]
    per = [p for _, p, _ in items]
    cap = [p * m for _, p, m in items]

    def load(k: float) -> float:
        return sum(lo / min(p * k, c) for lo, p, c in zip(lat, per, cap, strict=True))

    k = _fit(lat, per, cap, budget)
    if math.isinf(k):
        assert load(max(m for _, _, m in items)) > budget * (1 - 1e-9)
    else:
        assert k >= 1.0 and load(k) <= budget * (1 + 1e-9)
        assert k == 1.0 or load(k * (1 - 1e-6)) > budget
