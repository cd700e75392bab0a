"""LogLimiter: a flood of peer-triggered warnings becomes one line a second, with the count."""
from __future__ import annotations

import logging

from rmqd.ops import log_limit
from rmqd.ops.log_limit import LogLimiter


def test_one_line_per_interval_and_the_next_line_counts_what_was_left_out(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(log_limit.time, "monotonic", lambda: now[0])
    limiter = LogLimiter(logging.getLogger("rmqd.test.limit"), every_s=1.0)
    with caplog.at_level(logging.WARNING, logger="rmqd.test.limit"):
        for n in range(50):
            limiter.warning("peer %d misbehaved", n)
            now[0] += 0.01  # 50 warnings in 0.5 s
        now[0] += 1.0
        limiter.warning("peer %d misbehaved", 99)
    assert [r.getMessage() for r in caplog.records] == [
        "peer 0 misbehaved",
        "peer 99 misbehaved (49 more such warnings not logged)",
    ]
