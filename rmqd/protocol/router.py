"""The front's ZeroMQ ROUTER, spoken by the front's own thread on plain non-blocking TCP sockets.

Any ZeroMQ DEALER (pyzmq, libzmq, the SDK's ZMTP connection) connects to it as to a libzmq ROUTER:
ZMTP 3.x with NULL security (the bytes are rmqd/protocol/zmtp.py's). What it does not do is
libzmq's hand-off: a libzmq socket moves every message through its I/O thread and wakes the
application thread through a mailbox, two thread wake-ups per request and two per answer. On this
2-core VM a wake-up of a sleeping thread costs tens of microseconds: a 1 KiB echo round trip took
143 us p50 through a pyzmq ROUTER and 92 us through this one (`loadtest/sdk_rtt.py --pause-us 500`;
seventh pass, docs/BENCHMARKS.md). Here the kernel wakes the front itself, and the front writes
answers straight to the kernel.

ROUTER semantics kept (libzmq's, with ROUTER_MANDATORY):
- every message received is [routing id, frame, ...]; the routing id is the peer's READY Identity
  when it sets one (not starting with a zero byte, not already connected: such a peer is refused),
  else 5 bytes made up here: 0x00 + a u32 counter;
- `send(routing_id, frame)` answers that peer; an unknown id (the peer disconnected) gives GONE
  instead of silently dropping, a peer whose unsent answers exceed `max_out_bytes` gives FULL;
- a frame larger than `max_frame_bytes` (MAXMSGSIZE) drops the connection; PINGs get PONGs.

Bounded memory and time, whatever a peer sends: the socket reads only when the front asks for a
message and has none parsed, one read of at most `read_chunk` bytes per ready peer (fair across
peers), and parses at most `max_messages_per_turn` messages of it (libzmq's RCVHWM; the rest waits
raw for the peer's next turn); everything else waits in the kernel, where TCP pushes back on the
client. A message of more than MAX_FRAMES_PER_MESSAGE frames or `max_frame_bytes` in all drops its
peer, so does a handshake not done within `handshake_timeout_s` (libzmq's HANDSHAKE_IVL, 30 s).
When accept() fails (EMFILE), the listener is left unwatched for `accept_pause_s` instead of being
reported ready, and failing, on every poll. Output is queued per peer and written by `flush()`
with one sendmsg per peer (answers produced in one go leave in one syscall); the front flushes
before it sleeps and at each hand-off to the writer.

Use from one thread. `fileno()` is an epoll fd: readable when a peer, or the listener, needs us;
register it in the front's poller.
"""
from __future__ import annotations

import collections
import enum
import errno
import logging
import random
import select
import socket
import struct
import time

from rmqd.ops.log_limit import LogLimiter
from rmqd.protocol.zmtp import (
    FLAG_COMMAND,
    FLAG_MORE,
    GREETING_SIZE,
    ZmtpError,
    check_greeting,
    command_name,
    error_command,
    frame_head,
    greeting,
    next_frame,
    ping_ttl_s,
    pong_for,
    ready_command,
    ready_properties,
)

log = logging.getLogger("rmqd.router")

READ_CHUNK = 256 << 10  # bytes read from one peer per turn
MAX_MESSAGES_PER_TURN = 1000  # parsed from one peer per turn (libzmq's RCVHWM); the rest stays raw
MAX_FRAMES_PER_MESSAGE = 64  # a message with more frames drops its peer (rmqd's are one frame)
MAX_OUT_BYTES = 64 << 20  # unsent answers per peer (libzmq's SNDHWM, in bytes)
HANDSHAKE_TIMEOUT_S = 30.0  # libzmq's HANDSHAKE_IVL: a peer not READY by then is closed
ACCEPT_PAUSE_S = 1.0  # after accept() failed (EMFILE): stop watching the listener this long
# accept() errors that concern one connection only (accept(2): retry them like EAGAIN)
_ACCEPT_RETRY_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
                        errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.EINTR}
LISTEN_BACKLOG = 128
IOV_MAX = 1024  # parts per sendmsg (Linux UIO_MAXIOV)
PEER_TYPES = (b"DEALER", b"REQ", b"ROUTER")  # ZMTP: a ROUTER talks to these
_GENERATED_ID = struct.Struct(">BI")

_GREETING, _HELLO, _OPEN = 0, 1, 2  # peer states: waiting for its greeting, for its READY, open


class SendStatus(enum.IntEnum):
    SENT = 0  # queued; it leaves at the next flush()
    GONE = 1  # no peer has that routing id (it disconnected)
    FULL = 2  # the peer is not reading: max_out_bytes of answers wait for it; dropped


class _Peer:
    __slots__ = ("sock", "fd", "name", "identity", "state", "buf", "frames", "frames_bytes", "out",
                 "out_bytes", "queued", "polls_out", "closed", "backlogged", "since", "silent_by")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name  # host:port, for log lines
        self.identity = b""
        self.state = _GREETING
        self.buf = bytearray()  # received, not yet parsed: at most a frame and a bit
        self.frames: list[bytes] = []  # frames of a message whose last frame has not come yet
        self.frames_bytes = 0
        self.out: list[bytes | memoryview] = []  # to write, in order
        self.out_bytes = 0
        self.queued = False  # in RouterSocket.dirty
        self.polls_out = False  # registered for EPOLLOUT (the kernel buffer was full)
        self.closed = False
        self.backlogged = False  # buf may hold whole frames not parsed yet (the per-turn cap)
        self.since = time.monotonic()  # connected at (for the handshake timeout)
        self.silent_by = 0.0  # a PING's TTL: closed if nothing arrives by then (0: no TTL running)


class RouterSocket:
    """A listening ROUTER; see the module docstring."""

    def __init__(self, host: str, port: int, *, max_frame_bytes: int, max_out_bytes: int = MAX_OUT_BYTES,
                 read_chunk: int = READ_CHUNK, max_messages_per_turn: int = MAX_MESSAGES_PER_TURN,
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
                 accept_pause_s: float = ACCEPT_PAUSE_S) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_out_bytes = max_out_bytes
        self.read_chunk = read_chunk
        self.max_messages_per_turn = max_messages_per_turn
        self.handshake_timeout_s = handshake_timeout_s
        self.accept_pause_s = accept_pause_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(LISTEN_BACKLOG)
            self.listener.setblocking(False)
            self.epoll = select.epoll()
        except BaseException:
            self.listener.close()
            raise
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.peers: dict[int, _Peer] = {}
        self.by_identity: dict[bytes, _Peer] = {}
        self.inbox: collections.deque[list[bytes]] = collections.deque()
        self.dirty: list[_Peer] = []
        self.backlog: list[_Peer] = []  # peers with raw frames left by the per-turn cap
        self._next_id = random.getrandbits(32)  # as libzmq: generated ids start anywhere
        self._accept_resume_at = 0.0  # the listener is unwatched until then (0: watched)
        self._next_sweep = time.monotonic() + min(1.0, handshake_timeout_s)
        self._warnings = LogLimiter(log)  # a client refused every 100 ms must not flood the log

    def fileno(self) -> int:
        return self.epoll.fileno()

    # ------------------------------------------------------------------------------ receiving

    def recv_multipart(self) -> list[bytes] | None:
        """The next message, [routing id, frame, ...], or None when no peer has one now."""
        if not self.inbox:
            self.pump()
            if not self.inbox:
                return None
        return self.inbox.popleft()

    def pending(self) -> bool:
        """Messages (or raw frames) already read are waiting here: poll would not report them."""
        return bool(self.inbox) or bool(self.backlog)

    def readable(self) -> bool:
        """A message is waiting here or a peer (or the listener) is ready: one epoll_wait(0)."""
        return self.pending() or bool(self.epoll.poll(0))

    def pump(self) -> None:
        """Accept, read one chunk from each ready peer and write to each writable one; no waiting.
        A peer whose last turn hit the message cap gets its next turn from what it left, unread."""
        if self.backlog:
            backlog, self.backlog = self.backlog, []
            for peer in backlog:
                peer.backlogged = False
                if not peer.closed:
                    self._take(peer, peer.buf)
        listener_fd = self.listener.fileno()
        for fd, events in self.epoll.poll(0):
            if fd == listener_fd:
                self._accept_all()
                continue
            peer = self.peers.get(fd)
            if peer is None:
                continue
            if events & select.EPOLLOUT:
                self._write(peer)
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not (peer.closed or
                                                                                   peer.backlogged):
                self._read(peer)
        self.maintain()

    def maintain(self, now: float | None = None) -> None:
        """Time-based upkeep (call at least every second): close peers whose handshake is overdue
        or that stayed silent past their PING's TTL, watch the listener again after an accept pause."""
        now = time.monotonic() if now is None else now
        if self._accept_resume_at and now >= self._accept_resume_at:
            self._accept_resume_at = 0.0
            self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(1.0, self.handshake_timeout_s)
        overdue = now - self.handshake_timeout_s
        for peer in list(self.peers.values()):
            if peer.state != _OPEN and peer.since < overdue:
                self._close(peer, f"no ZMTP handshake within {self.handshake_timeout_s:g} s")
            elif peer.silent_by and now > peer.silent_by and not peer.backlogged:
                self._close(peer, "nothing received within its heartbeat TTL")

    def _accept_all(self) -> None:
        while True:
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:  # that connection failed; the next may not
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: the rest waits in the listen backlog
                log.warning("cannot accept connections for %.1f s: %s", self.accept_pause_s, exc)
                self.epoll.unregister(self.listener.fileno())  # or every poll would report it again
                self._accept_resume_at = time.monotonic() + self.accept_pause_s
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = _Peer(sock, f"{addr[0]}:{addr[1]}")
            self.peers[peer.fd] = peer
            self.epoll.register(peer.fd, select.EPOLLIN)
            self._queue(peer, greeting() + ready_command(b"ROUTER"))
            self._write(peer)

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(self.read_chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(peer, f"read failed: {exc}")
            return
        if not data:
            self._close(peer, None)
            return
        peer.silent_by = 0.0  # it spoke: a PING's TTL runs from its next PING
        if peer.buf:
            peer.buf += data
            self._take(peer, peer.buf)
        else:
            self._take(peer, data)

    def _take(self, peer: _Peer, source: bytes | bytearray) -> None:
        """Parse `source` (the peer's buffer, or a fresh read when that was empty); keep the rest."""
        try:
            pos = self._parse(peer, source)
        except ZmtpError as exc:
            self._close(peer, str(exc), tell_peer=True)
            return
        if source is peer.buf:
            del source[:pos]
        elif pos < len(source):
            peer.buf += memoryview(source)[pos:]

    def _parse(self, peer: _Peer, source: bytes | bytearray) -> int:
        """Take the whole frames of `source` (greeting and READY first), at most
        max_messages_per_turn messages (then the peer is backlogged); return where it stopped."""
        pos = 0
        if peer.state == _GREETING:
            if len(source) < GREETING_SIZE:
                return 0
            check_greeting(source[:GREETING_SIZE])
            peer.state, pos = _HELLO, GREETING_SIZE
        limit, inbox, copy = self.max_frame_bytes, self.inbox, source.__class__ is bytearray
        quota = self.max_messages_per_turn
        while True:
            if not quota:
                peer.backlogged = True
                self.backlog.append(peer)
                return pos
            found = next_frame(source, pos, limit)
            if found is None:
                return pos
            flags, start, pos = found
            payload = bytes(memoryview(source)[start:pos]) if copy else source[start:pos]
            if flags & FLAG_COMMAND:
                self._on_command(peer, payload)
                quota -= 1
            elif peer.state != _OPEN:
                raise ZmtpError("the peer sent a message before its READY")
            elif flags & FLAG_MORE or peer.frames:
                self._add_frame(peer, payload)
                if not flags & FLAG_MORE:
                    inbox.append([peer.identity, *peer.frames])
                    peer.frames, peer.frames_bytes = [], 0
                    quota -= 1
            else:
                inbox.append([peer.identity, payload])
                quota -= 1

    def _add_frame(self, peer: _Peer, payload: bytes) -> None:
        peer.frames.append(payload)
        peer.frames_bytes += len(payload)
        if len(peer.frames) > MAX_FRAMES_PER_MESSAGE or peer.frames_bytes > self.max_frame_bytes:
            raise ZmtpError(f"the peer sent a message of more than {MAX_FRAMES_PER_MESSAGE} frames or "
                            f"{self.max_frame_bytes} bytes")

    def _on_command(self, peer: _Peer, payload: bytes) -> None:
        name = command_name(payload)
        if peer.state == _HELLO:
            props = ready_properties(payload)
            peer_type = props.get(b"Socket-Type", b"")
            if peer_type not in PEER_TYPES:
                named = peer_type.decode("ascii", "replace") or "nameless"
                raise ZmtpError(f"a ROUTER does not talk to a {named} socket")
            identity = props.get(b"Identity", b"")
            if not identity or identity[0] == 0:
                self._next_id = (self._next_id + 1) & 0xFFFFFFFF
                identity = _GENERATED_ID.pack(0, self._next_id)
            elif identity in self.by_identity:
                raise ZmtpError(f"routing id {identity!r} is already connected")
            peer.identity, peer.state = identity, _OPEN
            self.by_identity[identity] = peer
        elif name == b"PING":
            ttl_s = ping_ttl_s(payload)
            peer.silent_by = time.monotonic() + ttl_s if ttl_s else 0.0
            pong = pong_for(payload)
            if peer.out_bytes + len(pong) <= self.max_out_bytes:  # a peer that never reads gets none
                self._queue(peer, pong)
        elif name == b"ERROR":
            raise ZmtpError("the peer sent ERROR")
        # PONG and unknown commands are ignored, as ZMTP allows

    # ------------------------------------------------------------------------------ sending

    def send(self, identity: bytes, frame: bytes | memoryview) -> SendStatus:
        """Queue `frame` as a one-frame message to the peer `identity`; it leaves at flush()."""
        peer = self.by_identity.get(identity)
        if peer is None:
            return SendStatus.GONE
        size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
        if peer.out_bytes + size > self.max_out_bytes:
            return SendStatus.FULL
        self._queue(peer, frame_head(size))
        self._queue(peer, frame)
        return SendStatus.SENT

    def _queue(self, peer: _Peer, data: bytes | memoryview) -> None:
        peer.out.append(data)
        peer.out_bytes += len(data)
        if not peer.queued:
            peer.queued = True
            self.dirty.append(peer)

    def flush(self) -> None:
        """Write what send() queued: one sendmsg per peer, the rest when the kernel takes it."""
        dirty, self.dirty = self.dirty, []
        for peer in dirty:
            peer.queued = False
            if not peer.closed and not peer.polls_out:
                self._write(peer)

    def _write(self, peer: _Peer) -> None:
        out = peer.out
        while out:
            try:
                sent = peer.sock.sendmsg(out[:IOV_MAX])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._close(peer, f"write failed: {exc}")
                return
            peer.out_bytes -= sent
            done = 0
            while done < len(out) and sent >= len(out[done]):
                sent -= len(out[done])
                done += 1
            del out[:done]
            if sent:  # the kernel took part of a frame: its buffer is full
                out[0] = memoryview(out[0])[sent:]
                break
        wants_out = bool(out)
        if wants_out != peer.polls_out:
            peer.polls_out = wants_out
            self.epoll.modify(peer.fd, select.EPOLLIN | (select.EPOLLOUT if wants_out else 0))

    # ------------------------------------------------------------------------------ closing

    def _close(self, peer: _Peer, reason: str | None, *, tell_peer: bool = False) -> None:
        if peer.closed:
            return
        peer.closed = True
        if reason is not None:
            self._warnings.warning("closing ZeroMQ connection from %s: %s", peer.name, reason)
        if tell_peer and not peer.out:  # never in the middle of a half-written frame
            try:
                peer.sock.send(error_command(reason or "closed"))
            except OSError:
                pass
        self.peers.pop(peer.fd, None)
        if peer.identity and self.by_identity.get(peer.identity) is peer:
            del self.by_identity[peer.identity]
        try:
            self.epoll.unregister(peer.fd)
        except OSError:
            pass
        peer.sock.close()
        peer.out.clear()

    def close(self, linger_s: float = 0.0) -> None:
        """Write what is queued for up to `linger_s` (libzmq's LINGER), then close every connection
        and the listener."""
        self.flush()
        deadline = time.monotonic() + linger_s
        while (waiting := {peer.fd: peer for peer in self.peers.values() if peer.out}) and \
                (left := deadline - time.monotonic()) > 0:
            poller = select.poll()
            for fd in waiting:
                poller.register(fd, select.POLLOUT)
            for fd, _events in poller.poll(left * 1000):
                self._write(waiting[fd])
        for peer in list(self.peers.values()):
            self._close(peer, None)
        self.listener.close()
        self.epoll.close()
