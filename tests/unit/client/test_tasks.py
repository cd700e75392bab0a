"""TaskPool: order, shutdown that drops or finishes the queued tasks, submit after shutdown."""
from __future__ import annotations

import threading

import pytest

from rmqd.client._tasks import TaskPool


def _blocked_pool(ran: list[int]) -> tuple[TaskPool, threading.Event]:
    """A one-thread pool whose worker is stuck in a first task until the event is set, with three
    more tasks queued behind it."""
    pool = TaskPool(1, "test-pool")
    pool.start()
    release, started = threading.Event(), threading.Event()

    def first() -> None:
        started.set()
        assert release.wait(10)
        ran.append(0)

    assert pool.submit(first)
    assert started.wait(10)
    for n in (1, 2, 3):
        assert pool.submit(ran.append, n)
    return pool, release


@pytest.mark.parametrize(("finish_queued", "expected"), [(True, [0, 1, 2, 3]), (False, [0])])
def test_shutdown_finishes_or_drops_the_queued_tasks(finish_queued, expected):
    ran: list[int] = []
    pool, release = _blocked_pool(ran)
    pool.shutdown(finish_queued=finish_queued)
    assert not pool.submit(ran.append, 99)  # refused: the caller must complete that work itself
    release.set()
    pool.join(10)
    assert ran == expected
    assert pool.await_idle(1) == 0


def test_a_failing_task_does_not_stop_the_worker():
    ran: list[int] = []
    pool = TaskPool(1, "test-pool")
    pool.start()
    assert pool.submit(lambda: 1 / 0)
    assert pool.submit(ran.append, 1)
    pool.shutdown(finish_queued=True)
    pool.join(10)
    assert ran == [1]


def test_join_from_a_worker_does_not_wait_for_itself():
    pool = TaskPool(1, "test-pool")
    pool.start()
    done = threading.Event()

    def stop_from_inside() -> None:
        pool.shutdown(finish_queued=True)
        pool.join(10)
        done.set()

    assert pool.submit(stop_from_inside)
    assert done.wait(5)
    pool.join(10)
