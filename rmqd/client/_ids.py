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

Thread-safe: the counter is taken under a lock (one lock round per batch of ids).
"""
from __future__ import annotations

import datetime
import os
import secrets
import socket
import struct
import threading
import time

UNIQ_KEY = struct.Struct(">4sH4sIH")

_lock = threading.Lock()
_counter = 0
_salt = secrets.token_bytes(4)


def _reset_after_fork() -> None:
    global _salt, _counter, _lock, _prefix
    _salt = secrets.token_bytes(4)
    _counter = 0
    _lock = threading.Lock()
    _prefix = _process_prefix()


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


def _process_prefix() -> str:
    """The 20 hex characters of ip + pid + salt, the same for every id of this process."""
    return UNIQ_KEY.pack(_IP, os.getpid() & 0xFFFF, _salt, 0, 0)[:10].hex().upper()


_prefix = _process_prefix()
_month = (0, 0)  # (start, end) of the current month in epoch ms, recomputed when `now` leaves it


def _ms_since_month_start(now_ms: int) -> int:
    global _month
    start, end = _month
    if not start <= now_ms < end:
        now = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC)
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (first + datetime.timedelta(days=32)).replace(day=1)
        start, end = int(first.timestamp() * 1000), int(following.timestamp() * 1000)
        _month = (start, end)
    return now_ms - start


def new_uniq_keys(count: int) -> list[str]:
    """`count` new 32-hex-character message ids (one clock read and one lock for all of them)."""
    global _counter
    elapsed = _ms_since_month_start(time.time_ns() // 1_000_000) & 0xFFFFFFFF
    with _lock:
        first = _counter + 1
        _counter = (_counter + count) & 0xFFFF
    head = f"{_prefix}{elapsed:08X}"
    if count < 8:
        return [f"{head}{(first + i) & 0xFFFF:04X}" for i in range(count)]
    # The whole batch formatted in C: the counters packed and hexed with a separator, the separator
    # turned into separator + head, then split (2.3x faster than one f-string per id)
    counters = (range(first, first + count) if first + count <= 0x10000
                else [(first + i) & 0xFFFF for i in range(count)])
    hexed = struct.pack(f">{count}H", *counters).hex(",", 2).upper()  # "0001,0002,..."
    return (head + hexed.replace(",", "," + head)).split(",")


def new_uniq_key() -> str:
    """A new 32-hex-character message id (see the module docstring for the layout)."""
    global _counter
    elapsed = _ms_since_month_start(time.time_ns() // 1_000_000) & 0xFFFFFFFF
    with _lock:
        _counter = counter = (_counter + 1) & 0xFFFF
    return f"{_prefix}{elapsed:08X}{counter:04X}"


def new_client_id() -> str:
    """A client id unique per SDK object: ip@pid@random."""
    return f"{local_ip()}@{os.getpid()}@{secrets.token_hex(4)}"
