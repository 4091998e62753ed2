"""SendOrder: strict oldest-first after short outages, a live lane after long ones."""

from __future__ import annotations

from agent.buffer.send_order import SendOrder


def drain(
    order: SendOrder, rows: list[int], batch: int, priority: frozenset[int] = frozenset()
) -> list[int]:
    """Simulate the uplink: take up to ``batch`` rows per publish from the offered lane.

    As the outbox does, the priority lane sees only ``priority`` rows, the others the rest.
    """
    sent: list[int] = []
    while True:
        for lane, after, up_to in order.lanes():
            pool = [r for r in rows if (r in priority) == (lane == "priority")]
            chunk = [r for r in pool if r > after and (up_to is None or r <= up_to)][:batch]
            if chunk:
                break
            order.exhausted(lane)
        else:
            return sent
        sent += chunk
        order.sent(lane, chunk[-1])


def test_short_backlog_is_strictly_oldest_first() -> None:
    order = SendOrder(live_after=100)
    order.link_up(newest_seq=50, waiting=50)
    assert not order.draining
    assert drain(order, list(range(1, 61)), 10) == list(range(1, 61))


def test_long_backlog_alternates_with_the_newest_rows() -> None:
    order = SendOrder(live_after=100)
    order.link_up(newest_seq=1000, waiting=1000)
    assert order.draining
    rows = list(range(1, 1041))  # 40 rows arrived after the link came back
    sent = drain(order, rows, 10)
    assert sorted(sent) == rows and len(sent) == len(set(sent))
    assert sent[:20] == [*range(1, 11), *range(1001, 1011)]  # oldest, live, ...
    assert sent.index(1040) < sent.index(1000)  # the map got live data early
    assert not order.draining
    assert order.cursor == 1040
    more = drain(order, [*rows, 1041, 1042], 10)
    assert more == [1041, 1042]


def test_rewind_goes_to_the_right_lane() -> None:
    order = SendOrder(live_after=0)
    order.link_up(newest_seq=100, waiting=100)
    order.sent("oldest", 30)
    order.sent("live", 120)
    order.rewind(111)
    assert order.live_cursor == 110 and order.cursor == 30
    order.rewind(21)
    assert order.cursor == 20


def test_backlog_ending_mid_turn_sends_no_live_row_twice() -> None:
    """The oldest lane runs dry and the live lane serves the same publish."""
    order = SendOrder(live_after=0)
    order.link_up(newest_seq=10, waiting=10)
    order.sent("oldest", 10)  # backlog fully out; live turn next
    lanes = order.lanes()
    assert [lane for lane, _, _ in lanes] == ["priority", "live", "oldest"]
    order.sent("live", 15)
    lanes = order.lanes()[1:]  # after priority, oldest first now: nothing up to the boundary
    order.exhausted(lanes[0][0])
    order.sent(lanes[1][0], 20)  # the live lane of that same list serves 16..20
    assert not order.draining
    assert order.lanes() == [("priority", 0, None), ("oldest", 20, None)]


def test_priority_rows_go_before_any_backlog() -> None:
    order = SendOrder(live_after=100)
    order.link_up(newest_seq=10_000, waiting=10_000)
    rows = list(range(1, 10_003))
    sent = drain(order, rows, 50, priority=frozenset({10_001}))
    assert sent[0] == 10_001  # the impact, first publish
    assert sorted(sent) == rows and len(sent) == len(set(sent))


def test_priority_rewind_only_moves_its_own_lane() -> None:
    order = SendOrder(live_after=100)
    order.sent("priority", 500)
    order.sent("oldest", 300)
    order.rewind(500, "priority")
    assert order.priority_cursor == 499 and order.cursor == 300
