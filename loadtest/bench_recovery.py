"""Restart time after kill -9 stays flat when the store grows 10x with the same unrecovered tail.

    python loadtest/bench_recovery.py [--messages 200000] [--growth 10] [--tail 20000] [--repeat 5]

For each store size (N and growth x N messages of --body-bytes, 2 keys each, 8 queues) the store
is written directly with the store library (the writer's and dispatcher's code paths: CommitLog
append, ConsumeQueue units, IndexFile keys), checkpointed at its end, and then --tail more messages
are appended past the checkpoint without dispatching them, with the abort file present: exactly the
state kill -9 leaves when the flusher and dispatcher lag by that tail. Each repetition restores that
state (checkpoint bytes, abort file), runs `rmqd start` (the stores take turns, so the machine's
noise falls on both) and measures the wall time until every process reports RUNNING (`rmqd
status`), then kills the tree with SIGKILL. It reports the writer's own "recovery done in X s" line
too. Page cache warm (the store was just written); one uncounted warm-up restart per store after a
sync, because the first start after writing GiBs competes with their writeback. Prints a table and
the ratio of the big store's median restart to the small one's. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO_ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO_ROOT)

from rmqd.store import record as rec  # noqa: E402
from rmqd.store.checkpoint import Checkpoint, CheckpointData  # noqa: E402
from rmqd.store.commit_log import CommitLog  # noqa: E402
from rmqd.store.consume_queue import ConsumeQueueStore  # noqa: E402
from rmqd.store.dispatch import dispatch_record_to_cq  # noqa: E402
from rmqd.store.files import create_abort  # noqa: E402
from rmqd.store.index_file import IndexService  # noqa: E402
from shm import remove_segment_of  # noqa: E402
from workers.supervisor import PROCESSES, broker_status  # noqa: E402

TOPIC = b"RecoveryBench"
QUEUES = 8
BATCH = 64  # records per append_records call (one queue)
COMMITLOG_FILE_BYTES = 256 << 20
STORE_HOST = rec.encode_host("127.0.0.1", 10911)
RECOVERY_LINE = re.compile(r"recovery done in ([0-9.]+) s: write_pos (\d+), (\d+) records scanned")


@dataclass
class Row:
    messages: int
    store_bytes: int
    tail: int
    restart_s: list[float]
    recovery_s: list[float]
    records_scanned: int


class StoreWriter:
    """Appends keyed records and dispatches them, as the writer and dispatcher processes do."""

    def __init__(self, store_dir: str, body_bytes: int) -> None:
        self.store_dir = store_dir
        self.log = CommitLog(store_dir, COMMITLOG_FILE_BYTES, readonly=False)
        self.cq = ConsumeQueueStore(store_dir, readonly=False)
        self.index = IndexService(store_dir, readonly=False)
        self.body = b"b" * body_bytes
        self.queue_offsets = [0] * QUEUES
        self.count = 0
        self.dispatched_to = 0

    def append(self, messages: int) -> None:
        while messages > 0:
            n = min(BATCH, messages)
            queue_id = self.count // BATCH % QUEUES
            now_ms = time.time_ns() // 1_000_000
            self.log.append_records(self._encode(queue_id, n), n, self.queue_offsets[queue_id], now_ms)
            self.queue_offsets[queue_id] += n
            self.count += n
            messages -= n

    def _encode(self, queue_id: int, n: int) -> memoryview:
        parts = []
        for i in range(self.count, self.count + n):
            props = rec.encode_properties({"UNIQ_KEY": f"{i:032X}", "KEYS": f"order-{i}", "WAIT": "true"})
            buf = bytearray(rec.record_size(len(self.body), len(TOPIC), len(props)))
            rec.encode_record(buf, 0, topic=TOPIC, queue_id=queue_id, body=self.body, properties=props,
                              born_timestamp_ms=time.time_ns() // 1_000_000, born_host=STORE_HOST,
                              store_host=STORE_HOST)
            parts.append(buf)
        return memoryview(b"".join(parts))

    def dispatch_and_checkpoint(self) -> None:
        """Dispatch everything appended, flush it all and write the checkpoint at the end."""
        end = self.log.write_pos
        for phy, record in self.log.iter_records(self.dispatched_to, end, verify_crc=False):
            dispatch_record_to_cq(self.cq, phy, record)
            self.index.build_for_record(phy, record)
        self.dispatched_to = end
        self.log.flush()
        self.cq.flush_all()
        self.index.flush()
        now_ms = time.time_ns() // 1_000_000
        Checkpoint(os.path.join(self.store_dir, "checkpoint")).store(CheckpointData(
            now_ms, now_ms, now_ms, commitlog_flush_pos=end, cq_dispatch_pos=end, index_dispatch_pos=end))

    def close(self) -> None:
        self.log.flush()
        self.log.close()
        self.cq.close_all()
        self.index.close()


def build_store(store_dir: str, messages: int, tail: int, body_bytes: int) -> int:
    """The store of `messages` dispatched + `tail` appended past the checkpoint; returns its bytes."""
    writer = StoreWriter(store_dir, body_bytes)
    try:
        writer.append(messages)
        writer.dispatch_and_checkpoint()
        writer.append(tail)
        return writer.log.write_pos
    finally:
        writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_restart(store_dir: str, checkpoint_bytes: bytes) -> tuple[float, float, int]:
    """Put back the crashed state, `rmqd start`, wait for READY, kill -9 the tree.

    Returns (seconds to ready, the writer's recovery seconds, records it scanned).
    """
    with open(os.path.join(store_dir, "checkpoint"), "wb") as f:
        f.write(checkpoint_bytes)
    create_abort(store_dir)
    log_path = os.path.join(store_dir, "logs", "writer.log")
    log_size = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    cmd = [sys.executable, "-m", "cli.main", "start", "--store-dir", store_dir, "--port", str(free_port()),
           "--namesrv-port", str(free_port()), "-p", f"mappedFileSizeCommitLog={COMMITLOG_FILE_BYTES}"]
    started = time.monotonic()
    with open(os.path.join(store_dir, "..", "rmqd.out"), "ab") as out:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": REPO_ROOT})
    pids = {process.pid}
    try:
        while not _ready(store_dir, process.pid, pids):
            if process.poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError(f"rmqd start exited or hung; see {store_dir}/../rmqd.out")
            time.sleep(0.01)
        ready_s = time.monotonic() - started
    finally:
        _kill_all(pids)
        process.wait(30)
    with open(log_path) as f:
        f.seek(log_size)
        match = RECOVERY_LINE.search(f.read())
    return ready_s, float(match.group(1)), int(match.group(3))


def _ready(store_dir: str, supervisor_pid: int, pids: set[int]) -> bool:
    """Every process of OUR supervisor alive and RUNNING (the shm segment of the killed tree is still
    there, all RUNNING, until the new supervisor recreates it: pids must be alive too)."""
    status = broker_status(store_dir)
    if status["supervisor_pid"] != supervisor_pid:
        return False
    pids.update(p["pid"] for p in status["processes"] if p["pid"])
    states = {p["name"]: p["state"] == "running" and p["alive"] for p in status["processes"]}
    return status["running"] and all(states.get(name) for name, *_ in PROCESSES)


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def measure(sizes: list[int], tail: int, body_bytes: int, repeat: int, parent: str | None) -> list[Row]:
    """Build one store per size, then restart them in turns (N, 10N, N, 10N, ...): the machine's
    noise then falls on both sizes alike."""
    root = tempfile.mkdtemp(prefix="rmqd-bench-recovery-", dir=parent)
    try:
        rows, stores = [], []
        for messages in sizes:
            store_dir = os.path.join(root, f"store-{messages}")
            built = time.monotonic()
            store_bytes = build_store(store_dir, messages, tail, body_bytes)
            print(f"built {messages:,} + {tail:,} messages ({store_bytes / 2**30:.2f} GiB) "
                  f"in {time.monotonic() - built:.0f} s", flush=True)
            with open(os.path.join(store_dir, "checkpoint"), "rb") as f:
                stores.append((store_dir, f.read()))
            rows.append(Row(messages, store_bytes, tail, [], [], 0))
        for store_dir, checkpoint_bytes in stores:  # warm-up, not counted: see the module docstring
            os.sync()
            timed_restart(store_dir, checkpoint_bytes)
        for _ in range(repeat):
            for row, (store_dir, checkpoint_bytes) in zip(rows, stores):
                ready_s, recovery_s, row.records_scanned = timed_restart(store_dir, checkpoint_bytes)
                row.restart_s.append(ready_s)
                row.recovery_s.append(recovery_s)
                print(f"  {row.messages:,} messages: ready in {ready_s:.2f} s, recovery {recovery_s:.3f} s",
                      flush=True)
        return rows
    finally:
        for store_dir, _checkpoint in stores:
            remove_segment_of(store_dir)  # every repetition ends with kill -9: nothing unlinked it
        shutil.rmtree(root, ignore_errors=True)


def print_table(rows: list[Row]) -> None:
    header = f"{'store messages':>15} {'store GiB':>9} {'tail msgs':>9} {'scanned':>8} " \
             f"{'restart s (median, min-max)':>28} {'recovery s (median)':>20}"
    print(header)
    print("-" * len(header))
    for row in rows:
        low, high = min(row.restart_s), max(row.restart_s)
        restart = f"{statistics.median(row.restart_s):.2f} ({low:.2f}-{high:.2f})"
        print(f"{row.messages:>15,} {row.store_bytes / 2**30:>9.2f} {row.tail:>9,} {row.records_scanned:>8,} "
              f"{restart:>28} {statistics.median(row.recovery_s):>20.3f}")
    small, big = rows[0], rows[-1]
    print(f"\nrestart ratio {big.messages // small.messages}x store / 1x store: "
          f"{statistics.median(big.restart_s) / statistics.median(small.restart_s):.2f} "
          f"(recovery alone: {statistics.median(big.recovery_s) / statistics.median(small.recovery_s):.2f}); "
          "flat means <= 2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages in the small store (N)")
    parser.add_argument("--growth", type=int, default=10, help="the big store holds growth x N messages")
    parser.add_argument("--tail", type=int, default=20_000, help="messages past the checkpoint")
    parser.add_argument("--body-bytes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="parent directory of the temporary stores")
    args = parser.parse_args()
    rows = measure([args.messages, args.messages * args.growth], args.tail, args.body_bytes, args.repeat,
                   args.dir)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
