"""Fixtures of the SDK tests: a namesrv loop and fake brokers in threads (see fake_cluster.py)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.client.fake_cluster import FakeBroker, NamesrvThread


@pytest.fixture
def namesrv() -> Iterator[NamesrvThread]:
    server = NamesrvThread()
    yield server
    server.stop()


@pytest.fixture
def broker(namesrv: NamesrvThread) -> Iterator[FakeBroker]:
    fake = FakeBroker(namesrv.addr)
    yield fake
    fake.stop()


@pytest.fixture
def two_brokers(namesrv: NamesrvThread) -> Iterator[tuple[FakeBroker, FakeBroker]]:
    first = FakeBroker(namesrv.addr, "broker-a")
    second = FakeBroker(namesrv.addr, "broker-b")
    yield first, second
    first.stop()
    second.stop()
