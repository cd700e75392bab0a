"""Dispatcher throughput: records/s of Dispatcher.dispatch_upto with and without the IndexFile.

    python loadtest/bench_dispatch.py [--records 100000] [--runs 5]

Writes --records records (100 B body, UNIQ_KEY + one KEYS key, TAGS, 8 queues) into a CommitLog
with the store library, then drives a real `workers.dispatcher.Dispatcher` (setup + dispatch_upto,
no process, as the unit tests do) over them: ConsumeQueue units, arrivals, and with
messageIndexEnable=true two index keys per record. Runs alternate index off / on; the table
gives the median and best of --runs for each and the cost of the index per record. The machine
is shared and noisy: compare the two columns of one run, not runs of different days.
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


def dispatch_rate(store_dir: str, end: int, records: int, index: bool) -> float:
    """records/s of one dispatcher over the whole CommitLog (index files and CQs start empty)."""
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
        started = time.perf_counter()
        while dispatcher.dispatch_pos < end:
            dispatcher.dispatch_upto(min(end, dispatcher.dispatch_pos + MAX_DISPATCH_BYTES), end)
            arrivals.entries()
            arrivals.release()
        rate = records / (time.perf_counter() - started)
        dispatcher.flush_consume_queues()
        dispatcher.cq_store.close_all()
        if dispatcher.index is not None:
            dispatcher.index.close()
        return rate
    finally:
        shm.close(close_eventfds=True)
        os.unlink(shm_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="rmqd-bench-dispatch-")
    store_dir = os.path.join(root, "store")
    try:
        end = build(store_dir, args.records)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            for index in (False, True):
                rates[index].append(dispatch_rate(store_dir, end, args.records, index))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'messageIndexEnable':>18} {'median records/s':>17} {'best records/s':>15} {'us/record':>10}")
    for index in (False, True):
        median = statistics.median(rates[index])
        print(f"{str(index).lower():>18} {median:>17,.0f} {max(rates[index]):>15,.0f} {1e6 / median:>10.2f}")
    cost = 1e6 / statistics.median(rates[True]) - 1e6 / statistics.median(rates[False])
    print(f"\nindex cost: {cost:.2f} us per record (2 keys); with the index the dispatcher keeps "
          f"{statistics.median(rates[True]) / statistics.median(rates[False]):.0%} of its rate")


if __name__ == "__main__":
    main()
