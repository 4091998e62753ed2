"""Path error: distance from each full-rate fix to the line through the sent points."""

from __future__ import annotations

import pytest

from agent.gps.path_error import (
    TimedPoint,
    deviations_m,
    path_error,
    path_length_m,
    percentile,
    point_segment_m,
)

M_LAT = 1 / 111_195  # degrees of latitude per metre
M_LON = M_LAT / 0.6156615  # degrees of longitude per metre at 52 deg N (cos 52 deg)


def at(t: float, north_m: float, east_m: float) -> TimedPoint:
    return TimedPoint(t, 52.0 + north_m * M_LAT, 5.0 + east_m * M_LON)


def test_point_to_segment_inside_and_beyond_its_ends() -> None:
    a, b = at(0, 0, 0), at(10, 0, 300)
    assert point_segment_m(at(5, 12, 150), a, b) == pytest.approx(12.0, abs=0.05)
    assert point_segment_m(at(5, 30, 340), a, b) == pytest.approx(50.0, abs=0.05)  # 3-4-5
    assert point_segment_m(at(5, 7, 0), a, a) == pytest.approx(7.0, abs=0.05)


def test_a_corner_cut_by_the_sent_line() -> None:
    """Sent: only the ends of an L of 200 m legs; the corner is 141 m off the line."""
    truth = [at(t, 0, 20 * t) for t in range(11)] + [at(10 + t, 20 * t, 200) for t in range(1, 11)]
    sent = [truth[0], truth[-1]]
    err = path_error(truth, sent)
    assert err.max_m == pytest.approx(141.42, abs=0.1)
    assert path_error(truth, truth).max_m == 0.0
    assert path_length_m(truth) == pytest.approx(400.0, abs=0.5)


def test_fix_is_measured_against_its_own_time_not_a_later_pass() -> None:
    """Back to the depot: a segment sent later passes through the fix; it does not count."""
    fix_out = at(5, 40, 100)
    sent = [at(0, 0, 0), at(10, 0, 200), at(20, 80, 200), at(30, 0, 0)]
    (d,) = deviations_m([fix_out], sent)
    assert d == pytest.approx(40.0, abs=0.05)
    # Before the first and after the last sent point: distance to that point.
    assert deviations_m([at(-1, 3, 4), at(31, 0, 10)], sent) == pytest.approx([5.0, 10.0], abs=0.05)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 95)
    with pytest.raises(ValueError):
        deviations_m([at(0, 0, 0)], [])
