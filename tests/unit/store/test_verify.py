"""`rmqd verify` store check and `rmqd inspect index` description."""
from __future__ import annotations

import os

from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.dispatch import dispatch_record_to_cq
from rmqd.store.index_file import IndexService, describe_file
from rmqd.store.verify import verify_store

CL_FILE_SIZE = 64 * 1024


def _build(store_dir: str, batch, count: int = 120) -> list[int]:
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=False)
    cq = ConsumeQueueStore(store_dir, 100 * 20, readonly=False)
    phys = []
    for i in range(count):
        phys += log.append_records(batch("T", i % 2, [b"x" * 900]), 1, i // 2, 1)
    for phy, rec in log.iter_records(0, log.write_pos):
        dispatch_record_to_cq(cq, phy, rec)
    cq.close_all()
    log.close()
    return phys


def test_a_consistent_store_has_no_problems(store_dir, batch):
    _build(store_dir, batch)
    assert verify_store(store_dir) == []


def test_a_damaged_record_and_the_units_pointing_past_it_are_reported(store_dir, batch):
    phys = _build(store_dir, batch)
    path = os.path.join(store_dir, "commitlog", f"{phys[100] - phys[100] % CL_FILE_SIZE:020d}")
    with open(path, "r+b") as f:
        f.seek(phys[100] % CL_FILE_SIZE + 200)
        f.write(b"\xee")
    problems = verify_store(store_dir)
    assert "BODYCRC" in problems[0] and path in problems[0]
    assert any("non-zero bytes after the end" in p for p in problems)
    assert sum("points past the CommitLog end" in p for p in problems) == 20


def test_describe_file_prints_the_header_and_entries(store_dir):
    service = IndexService(store_dir, max_hash_slots=4, max_index_count=16, readonly=False)
    service.put_key("T", "k", 4096, 1_700_000_002_000)
    service.put_key("T", "k", 8192, 1_700_000_005_000)
    report = describe_file(service.files[0].path)
    assert report["header"]["index_count"] == 3 and report["max_hash_slots"] == 4
    assert [e["phy_offset"] for e in report["entries"]] == [4096, 8192]
    assert report["entries"][1]["prev_index"] == 1 and report["entries"][1]["time_diff_s"] == 3
