"""The front's request round hands its sends to the writer as it goes, not only at the round's end."""
from __future__ import annotations

from types import SimpleNamespace

from workers.front import HAND_OFF_EVERY, MAX_REQUESTS_PER_ROUND, Front


class _Router:
    """A ROUTER socket holding `count` waiting requests."""

    def __init__(self, count: int) -> None:
        self.left = count

    def recv_multipart(self) -> list[bytes] | None:
        if not self.left:
            return None
        self.left -= 1
        return [b"client", b"request"]


def _front_with_waiting_requests(count: int, events: list[str]) -> SimpleNamespace:
    front = SimpleNamespace(router=_Router(count), router_fd=-1, namesrvs=[], ready_socks=None,
                            backlog_since=0.0, round_sends=0)
    front._serve = lambda identity, frame: events.append("serve")
    front._hand_off = lambda: events.append("hand off")
    front._drain_namesrv = lambda dealer: None
    return front


def test_a_round_hands_off_every_few_requests_so_the_writer_works_while_the_front_serves():
    events: list[str] = []
    front = _front_with_waiting_requests(3 * HAND_OFF_EVERY + 2, events)
    Front._serve_requests(front)
    assert events.count("serve") == 3 * HAND_OFF_EVERY + 2
    # a hand-off after each HAND_OFF_EVERY requests served: never two in a row, never before the first
    hand_offs = [n for n, event in enumerate(events) if event == "hand off"]
    assert len(hand_offs) == 3
    assert [events[:at].count("serve") for at in hand_offs] == [HAND_OFF_EVERY, 2 * HAND_OFF_EVERY,
                                                                3 * HAND_OFF_EVERY]
    assert front.backlog_since == 0.0  # the socket was emptied: no backlog


def test_a_round_that_meets_a_full_socket_stops_at_its_bound_and_marks_the_backlog():
    events: list[str] = []
    front = _front_with_waiting_requests(MAX_REQUESTS_PER_ROUND + 5, events)
    Front._serve_requests(front)
    assert events.count("serve") == MAX_REQUESTS_PER_ROUND
    assert events.count("hand off") == (MAX_REQUESTS_PER_ROUND - 1) // HAND_OFF_EVERY
    assert front.backlog_since > 0.0 and front.router.left == 5
