"""The front's ROUTER (rmqd/protocol/router.py) at its edges: byte boundaries, partial writes,
disconnects, fd reuse, hostile and dead peers, and libzmq interop, against real sockets on 127.0.0.1.

The first four tests came from a review that found each defect (they failed before the fix); the
others cover cases test_router.py does not.
"""
from __future__ import annotations

import errno
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest
import zmq

from rmqd.protocol import zmtp
from rmqd.protocol.router import RouterSocket, SendStatus
from tests.router_support import DEADLINE_S, connect_dealer, recv, serve_until

U64 = struct.Struct(">Q")


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Raw client sockets a test opens; all closed at its end."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _pump_once_when_readable(router: RouterSocket) -> None:
    """Wait (bounded) until the router's epoll reports something, then pump once: what a client just
    sent is then read by exactly one recv."""
    ready, _, _ = select.select([router.fileno()], [], [], DEADLINE_S)
    assert ready, "the router never saw the bytes just sent"
    router.pump()


def _connect(router: RouterSocket, sockets: list[socket.socket], rcvbuf: int | None = None) -> socket.socket:
    """A raw TCP client, accepted by the router (nothing sent yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(sock)
    if rcvbuf is not None:  # before connect: fixes the window, no autotuning
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    before = set(router.peers)
    sock.connect(router.address)
    serve_until(router, lambda: set(router.peers) - before, what="the accept")
    return sock


def _raw_peer(router: RouterSocket, sockets: list[socket.socket], identity: bytes,
              rcvbuf: int | None = None) -> socket.socket:
    """A raw client past the handshake as a DEALER named `identity`; non-blocking."""
    sock = _connect(router, sockets, rcvbuf)
    sock.sendall(zmtp.greeting() + zmtp.ready_command(b"DEALER", identity))
    serve_until(router, lambda: identity in router.by_identity, what="the handshake")
    sock.setblocking(False)
    return sock


class _Inbound:
    """What a raw client received from the router, parsed: its greeting, then commands and messages,
    as ("cmd", payload) and ("msg", [frame, ...]) in arrival order."""

    def __init__(self, sock: socket.socket, chunk: int = 1 << 16) -> None:
        self.sock, self.chunk = sock, chunk
        self.buf = bytearray()
        self.greeted = False
        self.items: list[tuple[str, object]] = []
        self.frames: list[bytes] = []
        self.eof = False

    def read(self) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(self.chunk)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.buf += data
        if not self.greeted:
            if len(self.buf) < zmtp.GREETING_SIZE:
                return
            zmtp.check_greeting(bytes(self.buf[:zmtp.GREETING_SIZE]))
            del self.buf[:zmtp.GREETING_SIZE]
            self.greeted = True
        while (found := zmtp.next_frame(self.buf, 0, 1 << 30)) is not None:
            flags, start, end = found
            payload = bytes(self.buf[start:end])
            del self.buf[:end]
            if flags & zmtp.FLAG_COMMAND:
                self.items.append(("cmd", payload))
            else:
                self.frames.append(payload)
                if not flags & zmtp.FLAG_MORE:
                    self.items.append(("msg", self.frames))
                    self.frames = []

    def messages(self) -> list[list[bytes]]:
        return [frames for kind, frames in self.items if kind == "msg"]

    def commands(self) -> list[bytes]:
        return [payload for kind, payload in self.items if kind == "cmd"]


def _long_frame(payload: bytes, flags: int = 0) -> bytes:
    """A frame in the 8-byte size form even when short (ZMTP allows it; libzmq reads it)."""
    return bytes((flags | zmtp.FLAG_LONG,)) + U64.pack(len(payload)) + payload


def _ping(ttl_tenths: int, context: bytes) -> bytes:
    return zmtp.command(b"PING", ttl_tenths.to_bytes(2, "big") + context)


BODY_300 = bytes(range(256)) + bytes(44)

# After the handshake: every frame form (1- and 8-byte heads, empty, MORE, commands in both forms).
SESSION = b"".join([
    zmtp.frame_head(5) + b"hello",
    zmtp.frame_head(0),
    _long_frame(b"abc", zmtp.FLAG_MORE) + zmtp.frame_head(len(BODY_300)) + BODY_300,
    _ping(10, b"ctx"),
    _long_frame(b"\x04PING\x00\x0along-ctx", zmtp.FLAG_COMMAND),
    zmtp.frame_head(2, zmtp.FLAG_MORE) + b"m1" + zmtp.frame_head(0, zmtp.FLAG_MORE) + _long_frame(b"m3"),
    zmtp.command(b"X-UNKNOWN", b"ignored"),
    zmtp.frame_head(255) + b"z" * 255,
])
SESSION_MESSAGES = [[b"hello"], [b""], [b"abc", BODY_300], [b"m1", b"", b"m3"], [b"z" * 255]]
SESSION_PONGS = [b"\x04PONGctx", b"\x04PONGlong-ctx"]


# ------------------------------------------------------------------------------------ found by review


def test_pongs_for_a_peer_that_never_reads_stay_within_max_out_bytes(sockets):
    """A peer that sends well-formed PINGs (16-byte context, the ZMTP maximum) and never reads must
    not make the router queue PONGs without limit (they were queued past the max_out_bytes check of
    send()). The kernel buffers are made small so that a couple of MiB would show it."""
    limit = 64 << 10
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, max_out_bytes=limit)
    try:
        peer = _raw_peer(router, sockets, b"pinger", rcvbuf=4096)
        router.by_identity[b"pinger"].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ping = _ping(0, bytes(16))
        pong_size = len(zmtp.pong_for(ping[2:]))
        data = memoryview(ping * ((2 << 20) // len(ping)))  # 2 MiB of PINGs
        sent, most = 0, 0
        progress_at = time.monotonic()
        deadline = progress_at + 10.0
        while time.monotonic() < deadline:
            if sent < len(data):
                try:
                    sent += peer.send(data[sent:sent + (256 << 10)])
                    progress_at = time.monotonic()
                except BlockingIOError:
                    pass
                except OSError:
                    break  # the router dropped the peer: bounded as well
            select.select([router.fileno()], [], [], 0.005)
            router.pump()
            router.flush()
            state = router.by_identity.get(b"pinger")
            if state is None:
                break
            most = max(most, state.out_bytes)
            if most > limit + pong_size:
                break  # shown
            if sent >= len(data) and not router.readable():
                break  # the router read it all
            if time.monotonic() - progress_at > 0.5:
                break  # the router stopped reading the peer: bounded as well
        assert most <= limit + pong_size, (
            f"{most} bytes of PONGs queued for a peer that reads nothing (max_out_bytes={limit})")
    finally:
        router.close()


def test_a_pong_echoes_at_most_16_bytes_of_the_ping_context(router, sockets):
    """ZMTP 3.1 (RFC 37): ping-context = 0*16OCTET; libzmq answers an oversized one with its first 16
    bytes (checked against a pyzmq ROUTER: PING with a 1000-byte context -> 16-byte PONG). Echoing it
    all made a PING of max_frame_bytes (16 MiB in the front) cost a 16 MiB PONG."""
    peer = _raw_peer(router, sockets, b"echo")
    context = bytes(range(200))
    peer.sendall(_ping(0, context))
    inbound = _Inbound(peer)

    def ponged() -> bool:
        inbound.read()
        return any(cmd.startswith(b"\x04PONG") for cmd in inbound.commands())

    serve_until(router, ponged, what="the PONG")
    pong = next(cmd for cmd in inbound.commands() if cmd.startswith(b"\x04PONG"))
    assert pong == b"\x04PONG" + context[:16], f"PONG context of {len(pong) - 5} bytes"


def test_a_peer_silent_past_its_ping_ttl_is_dropped_and_its_routing_id_freed(router, ctx, sockets):
    """A DEALER that sends PINGs with a TTL (ZMQ_HEARTBEAT_TTL) asks the ROUTER to drop it after TTL
    without traffic; libzmq does (checked: a pyzmq ROUTER closes a peer 0.2 s after its PING with TTL
    2 when nothing follows). Otherwise a peer whose host vanished (no FIN, no RST: a half-open
    connection) would hold its routing id forever, and the same client reconnecting with its fixed
    IDENTITY would be refused "already connected" on every retry."""
    ghost = _raw_peer(router, sockets, b"phone")
    ghost.sendall(_ping(3, b""))  # TTL 0.3 s, then silence, as a client whose network went away
    dealer = connect_dealer(ctx, router, IDENTITY=b"phone")
    got: list[list[bytes]] = []
    next_send = 0.0

    def through() -> bool:
        nonlocal next_send
        if time.monotonic() >= next_send:  # as a client retrying its request
            try:
                dealer.send(b"back again", zmq.NOBLOCK)
            except zmq.Again:
                pass
            next_send = time.monotonic() + 0.1
        while (message := router.recv_multipart()) is not None:
            got.append(message)
        return bool(got)

    serve_until(router, through, timeout_s=3.0,
                 what="the reconnecting DEALER (the silent peer past its 0.3 s TTL still holds b'phone')")
    assert got[0] == [b"phone", b"back again"]


def test_a_transient_accept_error_does_not_rest_the_listener(ctx):
    """accept(2) on Linux reports errors of the connection being accepted (ECONNABORTED, EPROTO, ...):
    "treat them like EAGAIN by retrying" (man 2 accept); libzmq's listener just returns and is called
    again. Treated like EMFILE, one aborted handshake would unwatch the listener for accept_pause_s
    (1 s in the front) and delay every client connecting in that second."""
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, accept_pause_s=5.0)
    real = router.listener
    aborted: list[float] = []

    class _Listener:  # the real listener, whose first accept() meets a connection the client aborted
        def __getattr__(self, name):
            return getattr(real, name)

        def accept(self):
            if not aborted:
                aborted.append(time.monotonic())
                raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")
            return real.accept()

    router.listener = _Listener()
    try:
        dealer = connect_dealer(ctx, router, IDENTITY=b"next")
        dealer.send(b"hello")
        got = recv(router, timeout_s=1.5, what="a client after one aborted connection")
        assert got == [b"next", b"hello"]
        assert len(aborted) == 1
    finally:
        router.listener = real
        router.close()


# ---------------------------------------------------------------------------------------------- coverage


def test_a_whole_session_read_one_byte_per_recv_parses_exactly(router, sockets):
    """Greeting, READY, 1- and 8-byte heads, MORE, commands: every byte a read of its own."""
    peer = _connect(router, sockets)
    stream = zmtp.greeting() + zmtp.ready_command(b"DEALER", b"bytewise") + SESSION
    for i in range(len(stream)):
        peer.sendall(stream[i:i + 1])
        _pump_once_when_readable(router)
    assert [message[0] for message in router.inbox] == [b"bytewise"] * len(SESSION_MESSAGES)
    assert [message[1:] for message in router.inbox] == SESSION_MESSAGES
    state = router.by_identity[b"bytewise"]
    assert not state.buf and not state.frames
    router.flush()
    peer.setblocking(False)
    inbound = _Inbound(peer)

    def ponged() -> bool:
        inbound.read()
        return len(inbound.commands()) == 1 + len(SESSION_PONGS)

    serve_until(router, ponged, what="the PONGs")
    assert inbound.commands()[1:] == SESSION_PONGS and not inbound.messages()


@pytest.mark.parametrize("per_turn", [1, 1000])
def test_every_split_point_of_a_session_gives_the_same_messages(sockets, per_turn):
    """SESSION cut in two at each byte, the first part read alone; with a message cap of 1 per turn the
    cut also lands in a peer whose buffer was left backlogged."""
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, max_messages_per_turn=per_turn)
    try:
        peer = _raw_peer(router, sockets, b"split")
        peer.setblocking(True)
        for cut in range(1, len(SESSION)):
            peer.sendall(SESSION[:cut])
            _pump_once_when_readable(router)
            peer.sendall(SESSION[cut:])
            got: list[list[bytes]] = []

            def complete(got: list[list[bytes]] = got) -> bool:
                while (message := router.recv_multipart()) is not None:
                    got.append(message)
                return len(got) == len(SESSION_MESSAGES)

            serve_until(router, complete, what=f"the messages of the session cut at {cut}")
            assert got == [[b"split", *frames] for frames in SESSION_MESSAGES], f"cut at byte {cut}"
    finally:
        router.close()


def test_answers_cut_by_partial_writes_at_every_size_class_arrive_intact_and_in_order(sockets):
    """Frames around the 1/8-byte head boundary and larger than the kernel buffers, read by a client
    with a tiny window in odd-sized recvs: every sendmsg stops at some arbitrary byte."""
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20)
    try:
        peer = _raw_peer(router, sockets, b"window", rcvbuf=4096)
        sizes = [0, 1, 254, 255, 256, 257, 4095, 65536, 1_500_001] * 3  # 4.7 MiB > wmem_max (4 MiB)
        expected = []
        for n, size in enumerate(sizes):
            frame = (n.to_bytes(2, "big") * (size // 2 + 1))[:size]
            expected.append([frame])
            assert router.send(b"window", frame) is SendStatus.SENT
        router.flush()
        assert router.by_identity[b"window"].polls_out  # the kernel took only part: EPOLLOUT is on
        inbound = _Inbound(peer, chunk=997)

        def all_in() -> bool:
            inbound.read()
            return len(inbound.messages()) == len(expected)

        serve_until(router, all_in, timeout_s=10.0, what="the answers", also=(peer,))
        assert inbound.messages() == expected and not inbound.buf
        assert not router.by_identity[b"window"].polls_out and router.by_identity[b"window"].out_bytes == 0
    finally:
        router.close()


def test_a_pong_queued_behind_a_half_written_answer_follows_it_intact(sockets):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, max_out_bytes=64 << 20)
    try:
        peer = _raw_peer(router, sockets, b"slowpoke", rcvbuf=8192)
        big = bytes(range(256)) * (32 << 10)  # 8 MiB: more than the kernel buffers (wmem_max 4 MiB)
        assert router.send(b"slowpoke", big) is SendStatus.SENT
        router.flush()
        state = router.by_identity[b"slowpoke"]
        assert state.polls_out
        pong = zmtp.pong_for(_ping(0, b"ctx")[2:])
        peer.sendall(_ping(0, b"ctx"))
        serve_until(router, lambda: state.out[-1] == pong, what="the PING to be read")
        assert router.send(b"slowpoke", b"after") is SendStatus.SENT
        inbound = _Inbound(peer)

        def all_in() -> bool:
            inbound.read()
            return len(inbound.items) == 4

        serve_until(router, all_in, timeout_s=10.0, what="the answers", also=(peer,))
        assert [kind for kind, _ in inbound.items] == ["cmd", "msg", "cmd", "msg"]
        assert inbound.items[1][1] == [big]
        assert inbound.items[2][1] == b"\x04PONGctx"
        assert inbound.items[3][1] == [b"after"]
    finally:
        router.close()


@pytest.mark.parametrize("tail", [
    pytest.param(zmtp.frame_head(4, zmtp.FLAG_MORE) + b"part", id="after-a-MORE-frame"),
    pytest.param(zmtp.frame_head(4, zmtp.FLAG_MORE) + b"part" + zmtp.frame_head(100) + b"x" * 10,
                 id="inside-the-last-frame"),
    pytest.param(bytes((zmtp.FLAG_LONG,)) + U64.pack(1000)[:5], id="inside-an-8-byte-head"),
    pytest.param(b"\x00", id="inside-a-1-byte-head"),
])
def test_a_peer_that_disconnects_mid_message_delivers_none_of_it_and_is_forgotten(router, sockets, tail):
    peer = _raw_peer(router, sockets, b"cut")
    inbound = _Inbound(peer)
    serve_until(router, lambda: (inbound.read(), inbound.commands())[1], what="the router's READY")
    peer.sendall(zmtp.frame_head(5) + b"whole" + tail)
    peer.shutdown(socket.SHUT_WR)  # FIN after the bytes: nothing is lost in a reset
    serve_until(router, lambda: not router.peers, what="the router to see the end of the stream")
    assert list(router.inbox) == [[b"cut", b"whole"]]
    assert not router.by_identity and router.send(b"cut", b"late") is SendStatus.GONE


def test_a_peer_that_disconnects_during_the_handshake_is_forgotten_quietly(router, sockets):
    peer = _connect(router, sockets)
    peer.sendall((zmtp.greeting() + zmtp.ready_command(b"DEALER", b"never"))[:80])
    peer.shutdown(socket.SHUT_WR)
    serve_until(router, lambda: not router.peers)
    assert not router.by_identity and not router.inbox


def test_a_peer_reset_mid_answer_is_forgotten_and_the_next_connection_gets_only_its_own_bytes(sockets):
    """The answer half in the kernel, half in `out` (EPOLLOUT on); the client resets. The router must
    drop it without raising, forget its id, and a new connection (on the same descriptor number when
    the kernel reuses it) must see a clean stream."""
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20)
    try:
        old = _raw_peer(router, sockets, b"old", rcvbuf=4096)
        old_state = router.by_identity[b"old"]
        assert router.send(b"old", bytes(8 << 20)) is SendStatus.SENT
        router.flush()
        assert old_state.polls_out
        old.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        old.close()  # RST
        serve_until(router, lambda: b"old" not in router.by_identity, what="the reset to be seen")
        assert old_state.closed and not old_state.out and not router.peers
        assert router.send(b"old", b"late") is SendStatus.GONE
        new = _raw_peer(router, sockets, b"new")
        assert router.send(b"new", b"yours") is SendStatus.SENT
        inbound = _Inbound(new)

        def answered() -> bool:
            inbound.read()
            return bool(inbound.messages())

        serve_until(router, answered, what="the new peer's answer")
        assert inbound.messages() == [[b"yours"]] and len(inbound.commands()) == 1 and not inbound.buf
        assert inbound.commands()[0].startswith(b"\x05READY")
    finally:
        router.close()


def test_a_burst_followed_by_fin_delivers_every_message_before_the_peer_is_forgotten(sockets):
    """The end of the stream waits behind messages left raw by the per-turn cap; none is lost."""
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20, max_messages_per_turn=100)
    try:
        peer = _raw_peer(router, sockets, b"burst")
        inbound = _Inbound(peer)
        serve_until(router, lambda: (inbound.read(), inbound.commands())[1], what="the router's READY")
        peer.sendall(b"".join(zmtp.frame_head(2) + n.to_bytes(2, "big") for n in range(3000)))
        peer.shutdown(socket.SHUT_WR)
        got: list[int] = []

        def all_in() -> bool:
            while (message := router.recv_multipart()) is not None:
                assert message[0] == b"burst"
                got.append(int.from_bytes(message[1], "big"))
            return not router.peers and not router.pending()

        serve_until(router, all_in)
        assert got == list(range(3000))
    finally:
        router.close()


def test_a_pyzmq_dealer_dropped_for_an_oversized_frame_reconnects_under_its_identity(ctx):
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1000)
    try:
        dealer = connect_dealer(ctx, router, IDENTITY=b"again", HEARTBEAT_IVL=50, HEARTBEAT_TTL=1000,
                         HEARTBEAT_TIMEOUT=500)
        dealer.send(b"first")
        got: list[list[bytes]] = []

        def arrived() -> bool:
            while (message := router.recv_multipart()) is not None:
                got.append(message)
            return bool(got)

        serve_until(router, arrived)
        dealer.send(b"x" * 1001)
        serve_until(router, lambda: b"again" not in router.by_identity, what="the drop")
        got.clear()
        next_send = 0.0

        def back() -> bool:
            nonlocal next_send
            if time.monotonic() >= next_send:
                dealer.send(b"second")
                next_send = time.monotonic() + 0.1
            return arrived()

        serve_until(router, back, what="the reconnected DEALER")
        assert got[0] == [b"again", b"second"]
        assert router.send(b"again", b"answer") is SendStatus.SENT
        deadline = time.monotonic() + DEADLINE_S
        while not dealer.poll(0):
            assert time.monotonic() < deadline, "no answer on the new connection"
            select.select([router.fileno()], [], [], 0.01)
            router.pump()
            router.flush()
        assert dealer.recv() == b"answer"
    finally:
        router.close()


def test_close_drops_what_cannot_leave_and_raises_nothing_with_peers_in_every_state(sockets):
    """close(linger) with a peer mid-greeting, one mid-handshake, one with answers the kernel cannot
    take, and one already reset: everything is closed within the linger, without an exception."""
    router = RouterSocket("127.0.0.1", 0, max_frame_bytes=1 << 20)
    _connect(router, sockets)  # nothing sent
    half = _connect(router, sockets)
    half.sendall(zmtp.greeting())
    stuck = _raw_peer(router, sockets, b"stuck", rcvbuf=4096)
    gone = _raw_peer(router, sockets, b"gone")
    router.send(b"stuck", bytes(8 << 20))
    router.send(b"gone", bytes(1 << 20))
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()
    started = time.monotonic()
    router.close(linger_s=0.3)
    assert time.monotonic() - started < 2.0
    assert not router.peers and not router.by_identity
    stuck.setblocking(True)
    stuck.settimeout(DEADLINE_S)
    total = 0
    while chunk := stuck.recv(1 << 20):  # the connection ends (what was in the kernel, then EOF)
        total += len(chunk)
    assert total < (8 << 20) + 200
