"""Scorecard figures against hand-computed values from small constructed rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.rows import EventRow, TripRow
from cloud_bridge.scorecard import scorecard

DEV = "van-042"
START = datetime(2026, 3, 2, tzinfo=UTC)  # Monday
END = datetime(2026, 3, 9, tzinfo=UTC)  # next Monday, exclusive


def t(day: int, hour: float) -> datetime:
    return datetime(2026, 3, day, tzinfo=UTC) + timedelta(hours=hour)


def trip(
    id_: int,
    start: datetime,
    end: datetime,
    distance_m: float,
    *,
    odometer_km: float | None = None,
    driving_s: float | None = None,
    idle_s: float | None = None,
    harsh: dict[str, int] | None = None,
    device: str = DEV,
) -> TripRow:
    return TripRow(
        id=id_,
        device=device,
        start=start,
        end=end,
        distance_m=distance_m,
        odometer_km=odometer_km,
        duration_s=(end - start).total_seconds(),
        driving_s=driving_s,
        idle_s=idle_s,
        max_speed_kmh=None,
        mean_speed_kmh=None,
        harsh=harsh or {},
    )


_ids = iter(range(1, 10**6))


def ev(ts: datetime, type_: str, **data: Any) -> EventRow:
    n = next(_ids)
    return EventRow(
        id=n, device=DEV, epoch="e1", seq=n, ts=ts, type=type_, lat=None, lon=None, data=data
    )


TRIPS = [
    # 1 h, all of it in the week
    trip(1, t(2, 8), t(2, 9), 42_000, odometer_km=42.5, driving_s=3000, idle_s=600),
    # across midnight: days 4 and 5 are active; no driving_s -> 4500 - 300 = 4200 s
    trip(2, t(4, 23.5), t(5, 0.75), 30_500, idle_s=300),
    # started before the week, ended in it: counts whole; only day 2 is in the period
    trip(3, t(1, 23), t(2, 0.5), 10_000, odometer_km=10.0, driving_s=5000),
    # ends exactly at END: the period is [START, END), so not counted
    trip(4, t(8, 23), END, 99_000, odometer_km=99.0, driving_s=3600),
    # wholly before
    trip(5, t(1, 20), t(1, 22), 55_000, driving_s=7200),
]
EVENTS = [
    ev(t(2, 8.1), "harsh_braking", peak_g=0.5),
    ev(t(2, 8.2), "harsh_braking"),
    ev(t(5, 0.1), "harsh_braking"),
    ev(t(4, 23.6), "harsh_acceleration"),
    ev(t(2, 8.3), "harsh_cornering", direction="left"),
    ev(t(2, 8.4), "impact", peak_g=3.1),
    ev(END, "harsh_braking"),  # end is exclusive
    ev(START - timedelta(seconds=1), "harsh_acceleration"),
    ev(t(2, 8 + 50 / 60), "idle_end", duration_s=420, excessive=False),
    ev(t(6, 6 + 55 / 60), "excessive_idle", duration_s=300),
    ev(t(6, 7), "idle_end", duration_s=900, excessive=True),  # day 6: idle only
    ev(t(8, 23 + 50 / 60), "idle_start"),  # still idling at END: day 8 active, 0 min
    ev(END + timedelta(seconds=1), "idle_end", duration_s=999),
    ev(t(2, 8.25), "overspeed", duration_s=12.5, max_over_kmh=14.2, limit_kmh=50),
    ev(t(5, 0.3), "overspeed", duration_s=30, max_over_kmh=9.0),
    ev(t(7, 10), "overspeed", max_over_kmh="fast"),  # malformed: counted, adds nothing
    ev(t(2, 9), "trip_end", distance_m=42_000, harsh={"harsh_braking": 2}),  # not a source
]


def test_week_figures() -> None:
    sc = scorecard(DEV, START, END, TRIPS, EVENTS)
    assert sc.trips == 3
    assert sc.distance_km == pytest.approx(82.5)  # 42 + 30.5 + 10
    assert sc.odometer_km == pytest.approx(52.5)  # 42.5 + 10.0; trip 2 has none
    assert sc.odometer_trips == 2
    assert sc.driving_h == pytest.approx((3000 + 4200 + 5000) / 3600)
    assert (sc.harsh_acceleration, sc.harsh_braking, sc.harsh_cornering) == (1, 3, 1)
    assert sc.impacts == 1
    assert sc.harsh_total == 5
    assert sc.harsh_per_100km == pytest.approx(5 / 82.5 * 100)  # 6.06
    assert sc.idle_minutes == pytest.approx(22.0)  # (420 + 900) / 60
    assert sc.idles == 2
    assert sc.excessive_idles == 1
    assert sc.active_days == 5  # 2, 4, 5 (trips), 6 (idle), 8 (idle_start)
    assert sc.idle_minutes_per_day == pytest.approx(4.4)
    assert sc.overspeeds == 3
    assert sc.overspeed_s == pytest.approx(42.5)
    assert sc.max_over_kmh == pytest.approx(14.2)


def test_as_dict_is_grouped_rounded_json() -> None:
    d = scorecard(DEV, START, END, TRIPS, EVENTS).as_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d == {
        "device": DEV,
        "start": "2026-03-02T00:00:00Z",
        "end": "2026-03-09T00:00:00Z",
        "trips": 3,
        "distance_km": 82.5,
        "odometer_km": 52.5,
        "odometer_trips": 2,
        "driving_h": 3.389,
        "active_days": 5,
        "harsh": {
            "harsh_acceleration": 1,
            "harsh_braking": 3,
            "harsh_cornering": 1,
            "impact": 1,
            "total": 5,
            "per_100km": 6.06,
        },
        "idle": {"minutes": 22.0, "count": 2, "excessive": 1, "minutes_per_day": 4.4},
        "overspeed": {"count": 3, "seconds": 42.5, "max_over_kmh": 14.2},
    }


def test_empty_period() -> None:
    d = scorecard(DEV, START, END, [], []).as_dict()
    assert d["trips"] == 0 and d["distance_km"] == 0.0 and d["driving_h"] == 0.0
    assert d["odometer_km"] is None and d["odometer_trips"] == 0
    assert d["active_days"] == 0
    assert d["harsh"]["total"] == 0 and d["harsh"]["per_100km"] is None
    assert d["idle"] == {"minutes": 0.0, "count": 0, "excessive": 0, "minutes_per_day": None}
    assert d["overspeed"] == {"count": 0, "seconds": 0.0, "max_over_kmh": None}


def test_rate_needs_one_km() -> None:
    events = [ev(t(2, 8.5), "harsh_braking"), ev(t(2, 8.6), "harsh_braking")]
    short = scorecard(DEV, START, END, [trip(1, t(2, 8), t(2, 9), 999)], events)
    assert short.harsh_braking == 2 and short.harsh_per_100km is None
    one_km = scorecard(DEV, START, END, [trip(1, t(2, 8), t(2, 9), 1000)], events)
    assert one_km.harsh_per_100km == pytest.approx(200.0)


def test_harsh_comes_from_events_not_trip_counts() -> None:
    trips = [trip(1, t(2, 8), t(2, 9), 5000, harsh={"harsh_braking": 7})]
    sc = scorecard(DEV, START, END, trips, [ev(t(3, 9), "harsh_braking")])
    assert sc.harsh_braking == 1
    assert sc.harsh_per_100km == pytest.approx(20.0)  # 1 per 5 km


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="naive"):
        scorecard(DEV, datetime(2026, 3, 2), END, [], [])
    with pytest.raises(ValueError, match="before it starts"):
        scorecard(DEV, END, START, [], [])
    with pytest.raises(ValueError, match="van-007"):
        scorecard(DEV, START, END, [trip(1, t(2, 8), t(2, 9), 1, device="van-007")], [])


# --- splitting a period adds up ------------------------------------------------------

_TYPES = ["harsh_acceleration", "harsh_braking", "harsh_cornering", "impact", "idle_end"]
_TYPES += ["excessive_idle", "overspeed", "trip_end"]
_times = st.integers(0, 7 * 24 * 3600 - 1).map(lambda s: START + timedelta(seconds=s))


@settings(max_examples=100, deadline=None)
@given(
    trip_ends=st.lists(st.tuples(_times, st.floats(0, 200_000)), max_size=8),
    events=st.lists(st.tuples(_times, st.sampled_from(_TYPES), st.floats(0, 3600)), max_size=20),
    split=_times,
)
def test_consecutive_periods_add_up(
    trip_ends: list[tuple[datetime, float]],
    events: list[tuple[datetime, str, float]],
    split: datetime,
) -> None:
    trips = [
        trip(i, end - timedelta(hours=1), end, dist, driving_s=1800)
        for i, (end, dist) in enumerate(trip_ends)
    ]
    evs = [ev(ts, kind, duration_s=d, max_over_kmh=d / 100) for ts, kind, d in events]
    whole = scorecard(DEV, START, END, trips, evs)
    a = scorecard(DEV, START, split, trips, evs)
    b = scorecard(DEV, split, END, trips, evs)
    for name in ("trips", "harsh_braking", "impacts", "idles", "excessive_idles", "overspeeds"):
        assert getattr(a, name) + getattr(b, name) == getattr(whole, name), name
    for name in ("distance_km", "driving_h", "idle_minutes", "overspeed_s"):
        assert getattr(a, name) + getattr(b, name) == pytest.approx(getattr(whole, name)), name
    assert whole.trips == len(trips) and whole.overspeeds == sum(
        k == "overspeed" for _, k, _ in events
    )
    maxes = [m for m in (a.max_over_kmh, b.max_over_kmh) if m is not None]
    assert whole.max_over_kmh == (max(maxes) if maxes else None)
    # a day active in a part is active in the whole (not additive: a trip across
    # the split counts, in part b, only from the split on)
    assert max(a.active_days, b.active_days) <= whole.active_days
