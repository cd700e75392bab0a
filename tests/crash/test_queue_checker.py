"""The chaos harness's checker classifies deliveries the way OpenChaos's queue checker does."""

from __future__ import annotations

from tests.crash.chaos import QueueChecker


def test_the_checker_reports_lost_duplicated_recovered_and_unexpected_messages():
    checker = QueueChecker()
    for message_id in ("a", "b", "c"):
        checker.record(message_id, acked=True)
    checker.record("x", acked=False)  # unknown outcome, stored anyway
    checker.record("y", acked=False)  # unknown outcome, never stored
    checker.record("c", acked=False)  # a later failed retry does not make an ack unknown
    result = checker.check(["a", "a", "a", "c", "x", "z"])
    assert (result.sent, result.acked, result.unknown, result.delivered) == (5, 3, 2, 6)
    assert result.lost == ["b"]
    assert result.duplicated == {"a": 2}
    assert result.recovered == 1
    assert result.unexpected == ["z"]


def test_a_clean_history_has_nothing_to_report():
    checker = QueueChecker()
    checker.record("a", acked=True)
    result = checker.check(["a"])
    assert (result.lost, result.duplicated, result.recovered, result.unexpected) == ([], {}, 0, [])
