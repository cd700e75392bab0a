"""Helpers for the tests of the front's ROUTER (rmqd/protocol/router.py): let it work until a
condition holds (it has no thread of its own), connect pyzmq DEALERs to it, take a message."""
from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import zmq

from rmqd.protocol.router import RouterSocket

DEADLINE_S = 5.0


def endpoint(router: RouterSocket) -> str:
    return f"tcp://127.0.0.1:{router.address[1]}"


def connect_dealer(ctx: zmq.Context, router: RouterSocket, **options: int | bytes) -> zmq.Socket:
    """A pyzmq DEALER connected to `router`, with zmq options by name (IDENTITY=b"x", ...)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint(router))
    return sock


def serve_until(router: RouterSocket, done: Callable[[], bool], timeout_s: float = DEADLINE_S,
                what: str = "the router", also: tuple[socket.socket, ...] = ()) -> None:
    """Let the router work (accept, read, write) until `done()`; fail after `timeout_s`. The wait
    between turns also ends when one of the client sockets `also` is readable."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        select.select([router.fileno(), *also], [], [], 0.01)
        router.pump()
        router.flush()


def recv(router: RouterSocket, timeout_s: float = DEADLINE_S, what: str = "a message") -> list[bytes]:
    """The next message the router receives, [routing id, frame, ...]."""
    got: list[list[bytes]] = []

    def arrived() -> bool:
        message = router.recv_multipart()
        if message is not None:
            got.append(message)
        return bool(got)

    serve_until(router, arrived, timeout_s, what)
    return got[0]
