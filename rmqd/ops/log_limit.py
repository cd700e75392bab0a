"""LogLimiter: warnings that a remote peer can trigger, at most one line per interval.

A client that sends garbage, never reads its answers or reconnects every 100 ms (libzmq's default)
must not be able to fill the broker's log. The first warning of an interval is logged; the others
are counted, and the next line logged says how many were left out.
"""
from __future__ import annotations

import logging
import time


class LogLimiter:
    """`warning(msg, *args)` like a logger's, at most once every `every_s` seconds."""

    def __init__(self, logger: logging.Logger, every_s: float = 1.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._logged_at = float("-inf")
        self._left_out = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged_at < self.every_s:
            self._left_out += 1
            return
        if self._left_out:
            message += f" ({self._left_out} more such warnings not logged)"
        self._logged_at, self._left_out = now, 0
        self.logger.warning(message, *args)
