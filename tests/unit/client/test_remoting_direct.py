"""RemotingClient's direct synchronous path: pooled per-caller sockets, close() interrupting callers."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rmqd.client._remoting import RemotingClient
from rmqd.errors import ClientError, RemotingConnectError, RemotingTimeoutError
from tests.helpers import wait_until
from tests.unit.client.test_remoting_client import ECHO, HOLD, RouterServer


@pytest.fixture
def server():
    srv = RouterServer()
    yield srv
    srv.stop()


def test_sequential_synchronous_invokes_reuse_one_connection(server):
    client = RemotingClient()
    try:
        for i in range(50):
            assert bytes(client.invoke(server.addr, ECHO, body=str(i).encode()).body) == str(i).encode()
    finally:
        client.close()
    assert len(server.identities) == 1


def test_concurrent_synchronous_callers_use_at_most_one_connection_each(server):
    client = RemotingClient()
    barrier = threading.Barrier(4)

    def call(i: int) -> bytes:
        if i < 4:
            barrier.wait(5)  # the first four calls overlap, so four sockets are really needed
        return bytes(client.invoke(server.addr, ECHO, body=str(i).encode()).body)

    try:
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(call, range(200))) == [str(i).encode() for i in range(200)]
    finally:
        client.close()
    assert 1 <= len(server.identities) <= 4


def _held_call(client: RemotingClient, server: RouterServer) -> tuple[threading.Thread, list[BaseException]]:
    """A caller thread blocked on a request the server holds unanswered (60 s timeout)."""
    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            client.invoke(server.addr, HOLD, timeout_ms=60_000)
        except ClientError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=wait_forever)
    caller.start()
    wait_until(lambda: server.held, 5, "the held request to reach the server")
    return caller, outcome


def test_close_interrupts_a_synchronous_caller_waiting_for_its_answer(server):
    client = RemotingClient()
    caller, outcome = _held_call(client, server)
    client.close()
    caller.join(5)
    assert not caller.is_alive()
    assert isinstance(outcome[0], ClientError) and not isinstance(outcome[0], RemotingTimeoutError)
    assert "closed" in str(outcome[0])


def test_a_restarted_peer_is_reconnected_and_one_going_away_mid_call_fails_the_call_at_once():
    server = RouterServer()
    port = int(server.addr.rpartition(":")[2])
    client = RemotingClient()
    try:
        assert client.invoke(server.addr, ECHO).remark == "echo"  # its connection now idles in the pool
        server.stop()
        server = RouterServer(port=port)  # same address, as a restarted broker
        # the idle connection is found dead before use: a fresh one, no error
        assert client.invoke(server.addr, ECHO, body=b"again").remark == "echo"
        caller, outcome = _held_call(client, server)
        started = time.monotonic()
        server.stop()
        caller.join(10)
        assert not caller.is_alive() and isinstance(outcome[0], RemotingConnectError), outcome
        assert time.monotonic() - started < 8  # not the 60 s timeout
    finally:
        client.close()
        server.stop()


def test_the_i_o_thread_path_is_kept_when_direct_sync_is_off(server):
    client = RemotingClient(direct_sync=False)
    try:
        assert bytes(client.invoke(server.addr, ECHO, body=b"via thread").body) == b"via thread"
        with pytest.raises(RemotingTimeoutError, match="within 100 ms"):
            client.invoke(server.addr, HOLD, timeout_ms=100)
    finally:
        client.close()


def test_oneway_requests_from_many_threads_all_arrive(server):
    client = RemotingClient()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: client.invoke_oneway(server.addr, 77, body=str(i).encode()), range(100)))
        wait_until(lambda: len(server.oneways) == 100, 5, "every oneway request")
    finally:
        client.close()
    assert sorted(server.oneways) == sorted(str(i).encode() for i in range(100))
