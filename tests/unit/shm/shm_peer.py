"""Peer process for the cross-process shm tests: `python shm_peer.py ROLE PATH EVENTFDS_JSON [ARGS]`.

Roles (each bounded by a deadline; exit 0 = done, 1 = verification failed, 3 = deadline passed):
  verify-consumer DEADLINE_S   consume the "request" ring, check every entry against expected_payload(),
                               publish the count in pull_messages_total and bytes in put_bytes_total;
                               stop at an entry of kind STOP_KIND.
  doorbell-waiter ROUNDS       for round r = 1..ROUNDS wait on doorbell "dispatch" until write_pos >= r,
                               then publish dispatch_pos = r and cq_flush_pos = monotonic ns of the wake.
  write-positions              write every position to 1000 + its index, register heartbeat "writer".
  count-up N                   store write_pos = i * TEAR_PATTERN for i in 0..N-1.
"""
from __future__ import annotations

import json
import sys
import time

from shm import POSITIONS, open_broker_shm
from shm.heartbeats import STATE_RUNNING

STOP_KIND = 0xFFFFFFFF
TEAR_PATTERN = 1 + (1 << 21) + (1 << 42)  # i < 2**21 repeats i in three 21-bit groups
_PATTERN = bytes(range(256)) * 64


def expected_payload(seq: int, size: int) -> bytes:
    """Deterministic payload of entry `seq`: its number, then bytes that depend on it."""
    start = seq % 251
    return (seq.to_bytes(8, "little") + _PATTERN[start:start + max(0, size - 8)])[:size]


def verify_consumer(shm, deadline_s: float) -> int:
    ring = shm.rings["request"]
    deadline = time.monotonic() + deadline_s
    seq = byte_total = 0
    while time.monotonic() < deadline:
        ring.wait(0.005)
        for kind, payload in ring.entries():
            if kind == STOP_KIND:
                ring.release()
                return 0
            if kind != seq & 0xFFFFFFFF or payload != expected_payload(seq, len(payload)):
                print(f"entry {seq}: got kind {kind} payload {bytes(payload[:32])!r} (len {len(payload)})",
                      file=sys.stderr)
                return 1
            seq += 1
            byte_total += len(payload)
        ring.release()
        shm.positions.set_put_bytes_total(byte_total)
        shm.positions.set_pull_messages_total(seq)
    return 3


def doorbell_waiter(shm, rounds: int) -> int:
    doorbell, positions = shm.doorbells["dispatch"], shm.positions
    deadline = time.monotonic() + 30
    for target in range(1, rounds + 1):
        while positions.write_pos < target:
            if time.monotonic() > deadline:
                return 3
            doorbell.wait(lambda t=target: positions.write_pos >= t, 5.0)
        positions.set_cq_flush_pos(time.monotonic_ns())
        positions.set_dispatch_pos(target)
    return 0


def write_positions(shm) -> int:
    for index, name in enumerate(POSITIONS):
        shm.positions.set(name, 1000 + index)
    shm.heartbeats.register("writer")
    shm.heartbeats.beat("writer")
    shm.heartbeats.set_state("writer", STATE_RUNNING)
    shm.heartbeats.set_restarts("writer", 7)
    return 0


def count_up(shm, count: int) -> int:
    set_write_pos = shm.positions.set_write_pos
    for i in range(count):
        set_write_pos(i * TEAR_PATTERN)
    return 0


def main(argv: list[str]) -> int:
    role, path, eventfds = argv[0], argv[1], json.loads(argv[2])
    shm = open_broker_shm(path, eventfds)
    try:
        if role == "verify-consumer":
            return verify_consumer(shm, float(argv[3]))
        if role == "doorbell-waiter":
            return doorbell_waiter(shm, int(argv[3]))
        if role == "write-positions":
            return write_positions(shm)
        if role == "count-up":
            return count_up(shm, int(argv[3]))
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    finally:
        shm.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
