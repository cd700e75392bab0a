"""Dispatcher throughput: records/s of Dispatcher.dispatch_upto with and without the IndexFile,
batched (dispatch.dispatch_range, what the dispatcher runs) against the per-record path it replaced.

    python loadtest/bench_dispatch.py [--records 100000] [--runs 5]

Writes --records records (100 B body, UNIQ_KEY + one KEYS key, TAGS, 8 queues) into a CommitLog
with the store library, then drives a real `workers.dispatcher.Dispatcher` (setup + dispatch_upto,
no process, as the unit tests do) over them: ConsumeQueue units, arrivals, and with
messageIndexEnable=true two index keys per record. "per-record" replaces dispatch_upto's body by
the loop the dispatcher ran before the batch path (one DispatchRecord per record through
dispatch_record_to_cq and IndexService.build_for_record, the helpers that remain). Runs
interleave the four cases; the table gives the median and best of --runs for each. The machine
is shared and noisy: compare the rows of one run, not runs of different days.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO_ROOT)

from rmqd.config import BrokerConfig  # noqa: E402
from rmqd.store import record as rec  # noqa: E402
from rmqd.store.commit_log import CommitLog  # noqa: E402
from rmqd.store.dispatch import dispatch_record_to_cq  # noqa: E402
from shm import create_broker_shm  # noqa: E402
from workers.dispatcher import MAX_DISPATCH_BYTES, Dispatcher  # noqa: E402

HOST = rec.encode_host("127.0.0.1", 10911)
TOPIC = b"DispatchBench"
FILE_BYTES = 64 << 20


def build(store_dir: str, records: int) -> int:
    log = CommitLog(store_dir, FILE_BYTES, readonly=False)
    offsets = [0] * 8
    try:
        for i in range(records):
            props = rec.encode_properties({"UNIQ_KEY": uuid.uuid4().hex.upper(), "KEYS": f"order-{i}",
                                           "TAGS": "A", "WAIT": "true"})
            buf = bytearray(rec.record_size(100, len(TOPIC), len(props)))
            rec.encode_record(buf, 0, topic=TOPIC, queue_id=i % 8, body=b"x" * 100, properties=props,
                              born_timestamp_ms=1, born_host=HOST, store_host=HOST)
            log.append_records(memoryview(buf), 1, offsets[i % 8], time.time_ns() // 1_000_000)
            offsets[i % 8] += 1
        log.flush()
        return log.write_pos
    finally:
        log.close()


def dispatch_per_record(dispatcher: Dispatcher, target: int) -> None:
    """The dispatcher's loop before the batch path: one decoded record at a time (for comparison)."""
    commit_log, index = dispatcher.commit_log, dispatcher.index
    commit_log.refresh()
    arrivals: dict[tuple[str, int], int] = {}
    phy = dispatcher.dispatch_pos
    while phy < target:
        mapped, file_pos = commit_log._find(phy)
        if rec.peek_size_magic(mapped.mv, file_pos)[1] == rec.BLANK_MAGIC:
            phy += commit_log.file_size - file_pos
            continue
        record = rec.decode_dispatch(mapped.mv, file_pos)
        if dispatch_record_to_cq(dispatcher.cq_store, phy, record, dispatcher.delay_levels_ms):
            arrivals[(record.topic, record.queue_id)] = record.queue_offset + 1
        if index is not None:
            index.build_for_record(phy, record)
        phy += record.total_size
    dispatcher.dispatch_pos = phy
    dispatcher.positions.set_dispatch_pos(phy)
    dispatcher._announce(arrivals)


def dispatch_cost(store_dir: str, end: int, records: int, index: bool, batched: bool) -> tuple[float, float]:
    """(wall, CPU) us per record of one dispatcher over the whole CommitLog (index files and CQs
    start empty, so their creation is included)."""
    for name in ("consumequeue", "index"):
        shutil.rmtree(os.path.join(store_dir, name), ignore_errors=True)
    cfg = BrokerConfig.load(overrides={"storePathRootDir": store_dir, "mappedFileSizeCommitLog": FILE_BYTES,
                                       "messageIndexEnable": index})
    shm_path = f"/dev/shm/rmqd-bench-dispatch-{uuid.uuid4().hex[:8]}"
    shm, _fds = create_broker_shm(shm_path, {"request": 1 << 16, "ack": 1 << 16, "park": 1 << 12,
                                             "wake": 1 << 12, "arrival": 1 << 16})
    try:
        shm.positions.set_write_pos(end)
        dispatcher = Dispatcher(cfg, shm)
        dispatcher.setup()
        arrivals = shm.rings["arrival"]
        started, cpu_started = time.perf_counter(), time.process_time()
        while dispatcher.dispatch_pos < end:
            target = min(end, dispatcher.dispatch_pos + MAX_DISPATCH_BYTES)
            if batched:
                dispatcher.dispatch_upto(target, end)
            else:
                dispatch_per_record(dispatcher, target)
            arrivals.entries()
            arrivals.release()
        wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        dispatcher.flush_consume_queues()
        dispatcher.cq_store.close_all()
        if dispatcher.index is not None:
            dispatcher.index.close()
        return wall_s * 1e6 / records, cpu_s * 1e6 / records
    finally:
        shm.close(close_eventfds=True)
        os.unlink(shm_path)


CASES = [(batched, index) for batched in (False, True) for index in (False, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="rmqd-bench-dispatch-")
    store_dir = os.path.join(root, "store")
    try:
        end = build(store_dir, args.records)
        costs: dict[tuple[bool, bool], list[tuple[float, float]]] = {case: [] for case in CASES}
        for _ in range(args.runs):
            for batched, index in CASES:
                costs[(batched, index)].append(dispatch_cost(store_dir, end, args.records, index, batched))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'path':>10} {'messageIndexEnable':>18} {'us/record':>10} {'best':>6} {'CPU us/record':>14} "
          f"{'best':>6} {'records/s':>10}")
    medians = {}
    for batched, index in CASES:
        wall = [cost[0] for cost in costs[(batched, index)]]
        cpu = [cost[1] for cost in costs[(batched, index)]]
        median = medians[(batched, index)] = statistics.median(wall), statistics.median(cpu)
        print(f"{'batch' if batched else 'per-record':>10} {str(index).lower():>18} {median[0]:>10.2f} "
              f"{min(wall):>6.2f} {median[1]:>14.2f} {min(cpu):>6.2f} {1e6 / median[0]:>10,.0f}")
    print("\nmedians, per-record path -> batch path (what the dispatcher runs):")
    for index in (False, True):
        before, after = medians[(False, index)], medians[(True, index)]
        print(f"  messageIndexEnable={str(index).lower():<5}  {before[0]:5.2f} -> {after[0]:5.2f} us per "
              f"record ({before[0] / after[0]:.1f}x), CPU {before[1]:5.2f} -> {after[1]:5.2f} us "
              f"({before[1] / after[1]:.1f}x)")


if __name__ == "__main__":
    main()
