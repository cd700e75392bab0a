"""Identifiers the SDK generates: message UNIQ_KEYs and client ids.

UNIQ_KEY (RocketMQ MessageClientIDSetter-like; 16 bytes = 32 upper-case hex characters):

    0          4        6                  10                  14        16
    +----------+--------+------------------+-------------------+---------+
    | ip       | pid    | process salt     | ms since the start| counter |
    | 4 B IPv4 | u16    | 4 random bytes   | of this month, u32| u16     |
    +----------+--------+------------------+-------------------+---------+

  ip + pid + salt identify the process (RocketMQ uses the class loader's hash where we use 4
  random bytes drawn at import and again after fork). time + counter identify the message inside
  it: unique as long as one process creates fewer than 65,536 ids in one millisecond. The time field
  restarts each month like RocketMQ's, so ids are unique, not sortable across months.

Client id: "ip@pid@8-hex-random", unique per SDK object (RocketMQ's ip@instanceName, with a random
instance name so two consumers in one process never collide in a group).

Thread-safe: the counter is taken under a lock.
"""
from __future__ import annotations

import datetime
import os
import secrets
import socket
import struct
import threading

UNIQ_KEY = struct.Struct(">4sH4sIH")

_lock = threading.Lock()
_counter = 0
_salt = secrets.token_bytes(4)


def _reset_after_fork() -> None:
    global _salt, _counter, _lock
    _salt = secrets.token_bytes(4)
    _counter = 0
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def local_ip() -> str:
    """This host's outward IPv4 address (no packet is sent), falling back to 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))
            return sock.getsockname()[0]
    except OSError:
        return "127.0.0.1"


_IP = socket.inet_aton(local_ip())


def _ms_since_month_start(now: datetime.datetime) -> int:
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int((now - month_start).total_seconds() * 1000)


def new_uniq_key() -> str:
    """A new 32-hex-character message id (see the module docstring for the layout)."""
    global _counter
    now = datetime.datetime.now(datetime.UTC)
    with _lock:
        _counter = (_counter + 1) & 0xFFFF
        counter = _counter
    raw = UNIQ_KEY.pack(_IP, os.getpid() & 0xFFFF, _salt, _ms_since_month_start(now), counter)
    return raw.hex().upper()


def new_client_id() -> str:
    """A client id unique per SDK object: ip@pid@random."""
    return f"{local_ip()}@{os.getpid()}@{secrets.token_hex(4)}"
