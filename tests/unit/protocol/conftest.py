"""Fixtures of the ROUTER tests: a RouterSocket on a free port, a zmq context; both closed after."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from rmqd.protocol.router import RouterSocket


@pytest.fixture
def router() -> Iterator[RouterSocket]:
    sock = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20)
    yield sock
    sock.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
