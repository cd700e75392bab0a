"""RemotingClient against a tiny in-test ROUTER server: matching, concurrency, timeouts, oneway, close."""
from __future__ import annotations

import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq

from rmqd.client._remoting import RemotingClient
from rmqd.errors import ClientError, MQClientError, RemotingConnectError, RemotingTimeoutError
from rmqd.protocol import decode, encode_request, encode_response
from tests.helpers import free_port, wait_until

ECHO, HOLD, PUSH_BACK, GARBAGE_THEN_ECHO = 1, 2, 3, 4
SERVER_LOOPS_MAX = 20 * 60 * 5  # 50 ms polls: the server thread can never outlive 5 minutes


class RouterServer:
    """ROUTER on a free port run by one thread; behaviour chosen by the request code."""

    def __init__(self, port: int | None = None, heartbeat_ms: int = 0) -> None:
        self.addr = f"127.0.0.1:{port or free_port()}"
        self.heartbeat_ms = heartbeat_ms  # ZMTP PINGs from the server (and a dropped peer if unanswered)
        self.oneways: list[bytes] = []
        self.identities: set[bytes] = set()
        self.held: list[tuple[bytes, int]] = []
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def release_held(self) -> None:
        self._commands.put("release")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.heartbeat_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5 * self.heartbeat_ms)
        sock.bind(f"tcp://{self.addr}")
        self._ready.set()
        try:
            for _ in range(SERVER_LOOPS_MAX):
                if self._stop.is_set():
                    break
                self._run_once(sock)
        finally:
            sock.close(0)
            ctx.term()

    def _run_once(self, sock: zmq.Socket) -> None:
        while not self._commands.empty():
            self._commands.get()
            for ident, opaque in self.held:
                sock.send_multipart([ident, encode_response(0, opaque, remark="late")])
            self.held.clear()
        if not sock.poll(50):
            return
        ident, frame = sock.recv_multipart()
        self.identities.add(ident)
        cmd = decode(frame)
        if cmd.is_oneway:
            self.oneways.append(bytes(cmd.body))
        elif cmd.code == HOLD:
            self.held.append((ident, cmd.opaque))
        elif cmd.code == PUSH_BACK:
            sock.send_multipart([ident, encode_request(40, 999, {"consumerGroup": "g"}, oneway=True)])
            sock.send_multipart([ident, encode_response(0, cmd.opaque)])
        else:
            if cmd.code == GARBAGE_THEN_ECHO:
                sock.send_multipart([ident, b"\x00garbage"])
            sock.send_multipart([ident, encode_response(0, cmd.opaque, cmd.fields, "echo", bytes(cmd.body))])


@pytest.fixture
def server():
    srv = RouterServer()
    yield srv
    srv.stop()


@pytest.fixture
def client():
    cli = RemotingClient()
    yield cli
    cli.close()


def test_invoke_returns_the_response_that_matches_the_request(server, client):
    response = client.invoke(server.addr, ECHO, {"n": 1}, b"payload")
    assert (response.code, response.remark, response.fields, bytes(response.body)) == (0, "echo", {"n": 1},
                                                                                      b"payload")


def test_concurrent_invokes_from_many_threads_each_get_their_own_response(server, client):
    def call(i: int) -> tuple[int, bytes]:
        return i, bytes(client.invoke(server.addr, ECHO, {"i": i}, str(i).encode()).body)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(400)))
    assert all(body == str(i).encode() for i, body in results)


def test_invoke_async_resolves_a_future(server, client):
    futures = [client.invoke_async(server.addr, ECHO, body=bytes([i])) for i in range(50)]
    assert [bytes(f.result(5).body) for f in futures] == [bytes([i]) for i in range(50)]


def test_unanswered_request_fails_with_remoting_timeout_error_near_its_deadline(server, client):
    started = time.monotonic()
    with pytest.raises(RemotingTimeoutError, match="within 200 ms"):
        client.invoke(server.addr, HOLD, timeout_ms=200)
    assert 0.19 <= time.monotonic() - started < 3


def test_after_a_timeout_a_fresh_socket_is_used_and_the_late_reply_matches_nothing(server, client):
    with pytest.raises(RemotingTimeoutError):
        client.invoke(server.addr, HOLD, timeout_ms=100)
    server.release_held()  # the late reply goes to the retired socket's identity
    response = client.invoke(server.addr, ECHO, body=b"fresh")
    assert bytes(response.body) == b"fresh" and response.remark == "echo"
    assert len(server.identities) == 2


def test_a_peer_that_never_listens_fails_a_synchronous_call_at_once_and_an_async_one_at_its_timeout(client):
    started = time.monotonic()
    with pytest.raises(RemotingConnectError, match="cannot connect"):
        client.invoke(f"127.0.0.1:{free_port()}", ECHO, timeout_ms=5_000)
    assert time.monotonic() - started < 2.5  # refused, not waited for
    with pytest.raises(RemotingTimeoutError):  # libzmq keeps reconnecting until the deadline
        client.invoke_async(f"127.0.0.1:{free_port()}", ECHO, timeout_ms=150).result(5)


def test_large_frames_cross_the_synchronous_connection_both_ways(server, client):
    body = bytes(range(256)) * 1024  # 256 KiB: ZMTP's long frame form
    assert bytes(client.invoke(server.addr, ECHO, body=body, timeout_ms=5_000).body) == body


def test_a_synchronous_caller_answers_the_peers_heartbeat_pings_while_it_waits(client):
    server = RouterServer(heartbeat_ms=50)  # PINGs every 50 ms; drops a peer silent for 250 ms after one
    try:
        with pytest.raises(RemotingTimeoutError):  # the connection lived through ~30 PINGs: a timeout,
            client.invoke(server.addr, HOLD, timeout_ms=1_500)  # not a broken connection
        assert client.invoke(server.addr, ECHO, body=b"after").remark == "echo"
    finally:
        server.stop()


def test_a_peer_that_is_not_zeromq_is_refused_with_a_clear_error(client):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_junk() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(64))
            conn.recv(1024)

    thread = threading.Thread(target=answer_junk, daemon=True)
    thread.start()
    try:
        with pytest.raises(RemotingConnectError, match="not a ZeroMQ socket"):
            client.invoke(f"127.0.0.1:{port}", ECHO, timeout_ms=3_000)
    finally:
        listener.close()
        thread.join(5)


def test_oneway_requests_reach_the_server_without_a_response(server, client):
    client.invoke_oneway(server.addr, 77, body=b"fire-and-forget")
    wait_until(lambda: server.oneways == [b"fire-and-forget"], 5, "the oneway request to arrive")


def test_an_unusable_address_fails_with_mq_client_error(client):
    with pytest.raises(MQClientError, match="cannot connect"):
        client.invoke("nonsense-without-port", ECHO, timeout_ms=500)


def test_malformed_frames_from_the_peer_are_dropped_and_the_real_reply_still_matches(server, client):
    assert bytes(client.invoke(server.addr, GARBAGE_THEN_ECHO, body=b"ok").body) == b"ok"


def test_unsolicited_requests_from_the_peer_reach_on_request(server):
    seen: list[tuple[str, int]] = []
    cli = RemotingClient(on_request=lambda addr, cmd: seen.append((addr, cmd.code)))
    try:
        cli.invoke(server.addr, PUSH_BACK)
        wait_until(lambda: seen == [(server.addr, 40)], 5, "the pushed request")
    finally:
        cli.close()


def test_blocking_invoke_from_a_future_callback_is_refused_instead_of_deadlocking(server, client):
    errors: list[BaseException] = []

    def callback(_future):
        try:
            client.invoke(server.addr, ECHO)
        except ClientError as exc:
            errors.append(exc)

    client.invoke_async(server.addr, ECHO).add_done_callback(callback)
    wait_until(lambda: errors, 5, "the callback to run")
    assert "would deadlock" in str(errors[0])


def test_close_fails_pending_requests_and_refuses_new_ones(server):
    cli = RemotingClient()
    future = cli.invoke_async(server.addr, HOLD, timeout_ms=60_000)
    wait_until(lambda: server.held, 5, "the held request to reach the server")
    cli.close()
    with pytest.raises(ClientError, match="closed"):
        future.result(5)
    with pytest.raises(ClientError, match="closed"):
        cli.invoke(server.addr, ECHO)


def test_requests_beyond_the_send_high_water_mark_wait_in_a_backlog_instead_of_failing(server):
    cli = RemotingClient(hwm=10)
    try:
        futures = [cli.invoke_async(server.addr, ECHO, body=str(i).encode(), timeout_ms=20_000)
                   for i in range(2000)]
        assert [bytes(f.result(30).body) for f in futures] == [str(i).encode() for i in range(2000)]
    finally:
        cli.close()


def test_the_io_thread_survives_the_last_reply_a_retired_socket_was_waiting_for(server):
    # Given two requests held on one socket, the first of which times out (the socket is retired)
    client = RemotingClient(on_request=lambda addr, command: None)  # every request via the I/O thread
    try:
        first = client.invoke_async(server.addr, HOLD, timeout_ms=100)
        second = client.invoke_async(server.addr, HOLD, timeout_ms=10_000)
        wait_until(lambda: len(server.held) == 2, 5, "both requests held")
        wait_until(first.done, 5, "the first request to time out")
        # When both replies arrive in one burst: the second one closes the retired socket
        server.release_held()
        assert second.result(5).remark == "late"
        # Then the I/O thread is still serving requests
        assert client.invoke(server.addr, ECHO, body=b"alive", timeout_ms=2000).remark == "echo"
    finally:
        client.close()
