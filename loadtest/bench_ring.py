"""Micro-benchmark of the shm ring (shm/ring.py) between two processes: entries/s and GB/s.

    python loadtest/bench_ring.py [--seconds 3] [--ring-mib 64]

The parent produces (reserve + copy + commit, publish once per burst); a child process consumes
(wait, entries(), release() once per drain) and publishes its count in the segment. Each case runs
for --seconds, then sends a stop entry; the rate is what the consumer received over the time until
it saw the stop. Entries are 64 x 100 B (one 64-message batch = 6400 B) and 64 x 1 KiB (64 KiB),
as in PERFORMANCE_NOTES (prototype: 498 k entries/s for 64 x 100 B, 218 k entries/s = 14 GB/s for
64 x 1 KiB; the machine is noisy, +-20-40 %). Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shm import create_broker_shm, open_broker_shm  # noqa: E402

STOP_KIND = 0xFFFFFFFF
CASES = [("64 x 100 B", 64 * 100, 1), ("64 x 100 B", 64 * 100, 16),
         ("64 x 1 KiB", 64 * 1024, 1), ("64 x 1 KiB", 64 * 1024, 16)]
PROTOTYPE_ENTRIES_PER_S = {6400: 498_000, 65536: 218_000}


def consume(path: str, eventfds: dict[str, int]) -> int:
    """Child: drain the request ring until the stop entry; publish count and bytes in positions."""
    shm = open_broker_shm(path, eventfds)
    ring, positions = shm.rings["request"], shm.positions
    count = byte_total = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ring.wait(0.005)
        for kind, payload in ring.entries():
            if kind == STOP_KIND:
                ring.release()
                positions.set_pull_messages_total(count)
                positions.set_put_bytes_total(byte_total)
                positions.set_flush_pos(time.monotonic_ns())
                return 0
            count += 1
            byte_total += len(payload)
        ring.release()
    return 3


def produce(shm, entry_size: int, burst: int, seconds: float) -> int:
    """Parent: put entries for `seconds`; returns the start time (monotonic ns)."""
    ring = shm.rings["request"]
    payload = bytes(range(256)) * (entry_size // 256) + bytes(entry_size % 256)
    reserve, commit, publish = ring.reserve, ring.commit, ring.publish
    started_ns = time.monotonic_ns()
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        for _ in range(256):
            for _ in range(burst):
                view = reserve(entry_size)
                while view is None:
                    publish()
                    os.sched_yield()
                    view = reserve(entry_size)
                view[:] = payload
                commit(1)
            publish()
    while not ring.put(b"", STOP_KIND):
        os.sched_yield()
    return started_ns


def run_case(ring_bytes: int, entry_size: int, burst: int, seconds: float) -> dict[str, float]:
    path = f"/dev/shm/rmqd-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shm, eventfds = create_broker_shm(path, {"request": ring_bytes})
    child = subprocess.Popen([sys.executable, __file__, "--consume", path, json.dumps(eventfds)],
                             pass_fds=tuple(eventfds.values()))
    try:
        started_ns = produce(shm, entry_size, burst, seconds)
        if child.wait(timeout=seconds + 60) != 0:
            raise RuntimeError(f"consumer exited with {child.returncode}")
        elapsed_s = (shm.positions.flush_pos - started_ns) / 1e9
        entries = shm.positions.pull_messages_total
        return {"entries_per_s": entries / elapsed_s,
                "gb_per_s": shm.positions.put_bytes_total / elapsed_s / 1e9}
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        shm.close(close_eventfds=True)
        shm.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--ring-mib", type=int, default=64)
    parser.add_argument("--consume", nargs=2, metavar=("PATH", "EVENTFDS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        return consume(args.consume[0], json.loads(args.consume[1]))
    print(f"{'entry':<12}{'burst':>6}{'entries/s':>14}{'records/s':>14}{'GB/s':>8}{'vs prototype':>14}")
    for label, entry_size, burst in CASES:
        result = run_case(args.ring_mib << 20, entry_size, burst, args.seconds)
        ratio = result["entries_per_s"] / PROTOTYPE_ENTRIES_PER_S[entry_size]
        print(f"{label:<12}{burst:>6}{result['entries_per_s']:>14,.0f}{result['entries_per_s'] * 64:>14,.0f}"
              f"{result['gb_per_s']:>8.2f}{ratio:>13.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
