"""The front's ROUTER (rmqd/protocol/router.py) against real ZeroMQ peers: pyzmq DEALERs and raw sockets."""
from __future__ import annotations

import concurrent.futures
import select
import socket
import time

import pytest
import zmq

from rmqd.client._zmtp import ZmtpConnection
from rmqd.protocol import zmtp
from rmqd.protocol.router import RouterSocket, SendStatus
from tests.router_support import DEADLINE_S, connect_dealer, recv, serve_until


def _zmtp_connect(router: RouterSocket) -> ZmtpConnection:
    """The SDK's ZMTP connection, made in a thread while this one lets the router answer the handshake."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        made = pool.submit(ZmtpConnection, "127.0.0.1", router.address[1], DEADLINE_S, 1 << 20)
        serve_until(router, made.done)
        return made.result()


def _dealer_recv(router: RouterSocket, dealer: zmq.Socket) -> list[bytes]:
    got: list[list[bytes]] = []

    def arrived() -> bool:
        if dealer.poll(0):
            got.append(dealer.recv_multipart())
        return bool(got)

    serve_until(router, arrived)
    return got[0]


def test_a_pyzmq_dealer_gets_its_answer_under_the_routing_id_the_router_made_up(router, ctx):
    first, second = connect_dealer(ctx, router), connect_dealer(ctx, router)
    first.send(b"from first")
    second.send(b"from second")
    messages = {frames[1]: frames[0] for frames in (recv(router), recv(router))}
    assert set(messages) == {b"from first", b"from second"}
    ids = list(messages.values())
    assert all(len(rid) == 5 and rid[0] == 0 for rid in ids) and ids[0] != ids[1]
    assert router.send(messages[b"from second"], b"to second") is SendStatus.SENT
    assert router.send(messages[b"from first"], b"to first") is SendStatus.SENT
    assert _dealer_recv(router, first) == [b"to first"]
    assert _dealer_recv(router, second) == [b"to second"]


def test_a_dealer_that_names_itself_is_routed_by_that_name_and_a_second_one_by_the_same_name_is_refused(
        router, ctx):
    alice = connect_dealer(ctx, router, IDENTITY=b"alice")
    alice.send(b"hello")
    assert recv(router) == [b"alice", b"hello"]
    received = _refusal(router, zmtp.greeting() + zmtp.ready_command(b"DEALER", b"alice"))
    assert b"ERROR" in received and b"already connected" in received
    assert router.send(b"alice", b"still yours") is SendStatus.SENT
    assert _dealer_recv(router, alice) == [b"still yours"]


def test_a_multi_frame_message_arrives_whole_behind_the_routing_id(router, ctx):
    dealer = connect_dealer(ctx, router, IDENTITY=b"multi")
    dealer.send_multipart([b"one", b"", b"three" * 100])
    assert recv(router) == [b"multi", b"one", b"", b"three" * 100]


def test_a_large_frame_arrives_over_many_reads(ctx):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=8 << 20, read_chunk=64 << 10)
    try:
        dealer = connect_dealer(ctx, router, IDENTITY=b"big")
        body = bytes(range(256)) * (4 << 12)  # 4 MiB: the 8-byte size form, 64 reads
        dealer.send(body)
        assert recv(router) == [b"big", body]
        assert router.send(b"big", body) is SendStatus.SENT
        assert _dealer_recv(router, dealer) == [body]
    finally:
        router.close()


def test_a_frame_over_the_limit_drops_its_peer_and_the_router_serves_the_others(ctx):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1000)
    try:
        greedy = connect_dealer(ctx, router, IDENTITY=b"greedy")
        polite = connect_dealer(ctx, router, IDENTITY=b"polite")
        greedy.send(b"small")
        assert recv(router) == [b"greedy", b"small"]
        greedy.send(b"x" * 1001)
        serve_until(router, lambda: b"greedy" not in router.by_identity)
        assert router.send(b"greedy", b"answer") is SendStatus.GONE
        polite.send(b"y" * 1000)
        assert recv(router) == [b"polite", b"y" * 1000]
    finally:
        router.close()


def test_pings_get_pongs_with_their_context(router):
    conn = _zmtp_connect(router)
    try:
        conn.send_raw(zmtp.command(b"PING", b"\x00\x64" + b"ctx-42"), time.monotonic() + DEADLINE_S)
        serve_until(router, lambda: bool(select.select([conn.sock], [], [], 0)[0]))
        flags, payload = conn._read_frame(time.monotonic() + DEADLINE_S)
        assert flags & zmtp.FLAG_COMMAND and payload == b"\x04PONGctx-42"
    finally:
        conn.close()


def test_the_sdk_zmtp_connection_and_a_libzmq_heartbeating_dealer_both_work(router, ctx):
    beating = connect_dealer(ctx, router, IDENTITY=b"beat", HEARTBEAT_IVL=20, HEARTBEAT_TIMEOUT=100)
    conn = _zmtp_connect(router)
    try:
        conn.send(b"direct", time.monotonic() + DEADLINE_S)
        rid, frame = recv(router)
        assert frame == b"direct"
        router.send(rid, b"direct answer")
        router.flush()
        assert conn.recv(time.monotonic() + DEADLINE_S) == b"direct answer"
        # 0.4 s of 20 ms heartbeats with a 100 ms timeout: unanswered PINGs would have dropped it
        # (libzmq then reconnects as a new peer, and the name would be gone for a moment)
        stop = time.monotonic() + 0.4
        serve_until(router, lambda: time.monotonic() >= stop)
        beating.send(b"after heartbeats")
        assert recv(router) == [b"beat", b"after heartbeats"]
        assert router.by_identity[b"beat"].fd in router.peers
    finally:
        conn.close()


@pytest.mark.parametrize("opening", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(40),
                                     b"\xff" + bytes(8) + b"\x7f\x02\x00" + bytes(52)])
def test_a_peer_that_is_not_zmtp_3_is_closed_and_others_keep_working(router, ctx, opening):
    stranger = socket.create_connection(router.address)
    stranger.sendall(opening)
    serve_until(router, lambda: not router.peers or all(p.state != 0 for p in router.peers.values()))
    assert not router.peers
    stranger.close()
    dealer = connect_dealer(ctx, router, IDENTITY=b"ok")
    dealer.send(b"fine")
    assert recv(router) == [b"ok", b"fine"]


def _refusal(router: RouterSocket, opening: bytes) -> bytes:
    """What the router answers a raw peer that sends `opening`, up to its closing the connection."""
    peer = socket.create_connection(router.address)
    peer.sendall(opening)
    peer.setblocking(False)
    received = bytearray()

    def closed() -> bool:
        try:
            chunk = peer.recv(4096)
        except BlockingIOError:
            return False
        received.extend(chunk)
        return not chunk

    try:
        serve_until(router, closed)
    finally:
        peer.close()
    return bytes(received)


def test_a_socket_type_a_router_cannot_talk_to_is_refused(router):
    answer = _refusal(router, zmtp.greeting() + zmtp.ready_command(b"PUB"))
    assert b"ERROR" in answer and b"does not talk to a PUB socket" in answer
    assert not router.by_identity and not router.peers


def test_a_client_that_stops_reading_gets_full_not_unbounded_memory_and_then_everything_in_order(ctx):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, max_out_bytes=4 << 20)
    try:
        dealer = connect_dealer(ctx, router, IDENTITY=b"slow", RCVHWM=1)
        dealer.send(b"hi")
        assert recv(router) == [b"slow", b"hi"]
        frame = bytes(64 << 10)
        sent = 0
        for n in range(2000):  # 125 MiB offered; the kernel and libzmq take a few MiB
            status = router.send(b"slow", n.to_bytes(4, "big") + frame)
            router.flush()
            if status is SendStatus.FULL:
                break
            assert status is SendStatus.SENT
            sent += 1
        else:
            pytest.fail("the router never said FULL")
        assert router.by_identity[b"slow"].out_bytes <= 4 << 20
        got = []

        def drained() -> bool:
            while dealer.poll(0):
                got.append(int.from_bytes(dealer.recv()[:4], "big"))
            return len(got) == sent

        serve_until(router, drained, timeout_s=20.0)
        assert got == list(range(sent))
    finally:
        router.close()


def test_answers_to_a_peer_that_went_away_are_gone_not_errors(router, ctx):
    dealer = connect_dealer(ctx, router, IDENTITY=b"leaving")
    dealer.send(b"bye")
    assert recv(router) == [b"leaving", b"bye"]
    dealer.close(linger=0)
    serve_until(router, lambda: b"leaving" not in router.by_identity)
    assert router.send(b"leaving", b"too late") is SendStatus.GONE


def test_reads_are_bounded_per_turn_so_one_flooding_peer_cannot_fill_memory(ctx):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, read_chunk=4096)
    try:
        flooder = connect_dealer(ctx, router, IDENTITY=b"flood")
        for n in range(200):
            flooder.send(n.to_bytes(2, "big") + bytes(998))
        serve_until(router, lambda: router.pending())
        assert len(router.inbox) <= 4096 // 1000 + 1  # one chunk's worth, the rest waits in the kernel
        got = []

        def all_in() -> bool:
            while (message := router.recv_multipart()) is not None:
                got.append(int.from_bytes(message[1][:2], "big"))
            return len(got) == 200

        serve_until(router, all_in)
        assert got == list(range(200))
    finally:
        router.close()


def test_close_with_linger_delivers_what_is_queued_and_without_it_drops_it(ctx):
    big = bytes(range(256)) * (64 << 10)  # 16 MiB: far more than one write into 64 KiB buffers takes
    received = {}
    for linger_s in (5.0, 0.0):
        router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20)
        dealer = connect_dealer(ctx, router, IDENTITY=b"reader", RCVBUF=64 << 10)
        dealer.send(b"hi")
        assert recv(router) == [b"reader", b"hi"]
        # small kernel buffers on both sides: even a reader draining concurrently (libzmq's I/O
        # thread) cannot let one non-blocking write take it all (with the defaults it sometimes did)
        router.by_identity[b"reader"].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        assert router.send(b"reader", big) is SendStatus.SENT
        router.close(linger_s=linger_s)
        received[linger_s] = dealer.recv() if dealer.poll(2000) else None
        dealer.close(0)
    assert received[5.0] == big
    assert received[0.0] is None


def _open_raw_peer(router: RouterSocket, identity: bytes) -> socket.socket:
    """A raw socket past the handshake as a DEALER named `identity`."""
    peer = socket.create_connection(router.address)
    peer.sendall(zmtp.greeting() + zmtp.ready_command(b"DEALER", identity))
    serve_until(router, lambda: identity in router.by_identity)
    return peer


def test_a_burst_of_tiny_messages_is_parsed_a_turn_at_a_time_and_all_arrive_in_order(ctx):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, max_messages_per_turn=100)
    try:
        peer = _open_raw_peer(router, b"burst")
        peer.sendall(b"".join(zmtp.frame_head(2) + n.to_bytes(2, "big") for n in range(5000)))
        serve_until(router, lambda: len(router.inbox) >= 100)
        assert len(router.inbox) == 100 and router.pending()  # the cap, and the rest known to be there
        got = []
        while (message := router.recv_multipart()) is not None:  # no poll needed for what is buffered
            got.append(int.from_bytes(message[1], "big"))
            if len(got) < 5000 and not router.pending():
                serve_until(router, router.pending)
        assert got == list(range(5000))
        peer.close()
    finally:
        router.close()


def test_a_message_of_too_many_frames_drops_its_peer(router):
    peer = _open_raw_peer(router, b"endless")
    peer.sendall(b"".join(zmtp.frame_head(1, zmtp.FLAG_MORE) + b"x" for _ in range(200)))
    serve_until(router, lambda: b"endless" not in router.by_identity)
    assert not router.inbox
    peer.close()


def test_a_peer_that_never_finishes_its_handshake_is_closed_after_the_timeout():
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, handshake_timeout_s=0.2)
    try:
        silent = socket.create_connection(router.address)
        serve_until(router, lambda: bool(router.peers))
        connected_at = time.monotonic()
        serve_until(router, lambda: not router.peers)
        assert time.monotonic() - connected_at >= 0.1
        silent.close()
    finally:
        router.close()


def test_when_accept_fails_the_listener_rests_instead_of_spinning_then_accepts_again(ctx, monkeypatch):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, accept_pause_s=0.3)
    try:
        real_accept = router.listener.accept
        failures = []

        class _Listener:  # the real listener, whose accept() fails like a process out of descriptors
            def __getattr__(self, name):
                return getattr(real_accept.__self__, name)

            def accept(self):
                failures.append(time.monotonic())
                raise OSError(24, "Too many open files")

        router.listener = _Listener()
        dealer = connect_dealer(ctx, router, IDENTITY=b"patient")
        serve_until(router, lambda: bool(failures))
        assert not router.readable()  # the pending connection is no longer reported: no busy loop
        router.listener = real_accept.__self__
        dealer.send(b"in the end")
        assert recv(router) == [b"patient", b"in the end"]
        assert len(failures) == 1
    finally:
        router.close()
