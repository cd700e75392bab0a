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


def _build_indexed(store_dir: str, batch, count: int = 60) -> tuple[list[int], IndexService]:
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=False)
    cq = ConsumeQueueStore(store_dir, 100 * 20, readonly=False)
    index = IndexService(store_dir, max_hash_slots=16, max_index_count=50, readonly=False)
    phys = []
    for i in range(count):
        props = {"UNIQ_KEY": f"U{i:04d}", "KEYS": f"order-{i} shared", "TAGS": "A"}
        phys += log.append_records(batch("T", i % 2, [b"x" * 900], props), 1, i // 2,
                                   1_700_000_000_000 + 700 * i)
    for phy, rec in log.iter_records(0, log.write_pos):
        dispatch_record_to_cq(cq, phy, rec)
        index.build_for_record(phy, rec)
    index.flush()
    cq.close_all()
    log.close()
    return phys, index


def test_an_index_that_agrees_with_the_commit_log_has_no_problems(store_dir, batch):
    _phys, index = _build_indexed(store_dir, batch)
    assert len(index.files) == 4  # 3 keys x 60 records over files of 49 entries: the check spans files
    assert verify_store(store_dir) == []


def test_keys_missing_from_the_index_are_reported(store_dir, batch):
    phys, index = _build_indexed(store_dir, batch)
    index.truncate_beyond(phys[58])
    problems = verify_store(store_dir)
    assert len(problems) == 6 and all("not in the index" in p for p in problems)
    assert f"phy_offset {phys[58]}" in problems[0] and "'U0058'" in problems[0]


def test_an_entry_pointing_at_the_wrong_record_is_reported(store_dir, batch):
    phys, index = _build_indexed(store_dir, batch)
    newest = index.files[-1]
    index_no = newest.header().index_count - 1
    pos = newest._entry_pos(index_no) + 4
    newest.mapped.mv[pos:pos + 8] = (phys[3]).to_bytes(8, "big")  # phyOffset of the last entry
    problems = verify_store(store_dir)
    assert any("endPhyOffset" in p for p in problems)
    assert any(f"record at phy_offset {phys[59]}" in p and "'shared'" in p for p in problems)


def test_a_broken_chain_is_reported(store_dir, batch):
    _phys, index = _build_indexed(store_dir, batch)
    first = index.files[0]
    linked = next(i for i, _hash, _phy, _time, prev in first.entries() if prev)
    pos = first._entry_pos(linked) + 16
    first.mapped.mv[pos:pos + 4] = (0).to_bytes(4, "big")  # cut the chain at its prevIndex
    problems = verify_store(store_dir)
    assert problems and all("prevIndex" in p for p in problems)


def test_a_store_locked_by_a_running_broker_is_not_checked(store_dir, batch):
    from rmqd.store.files import StoreLock

    _build(store_dir, batch)
    with StoreLock(store_dir):
        problems = verify_store(store_dir)
    assert len(problems) == 1 and f"pid {os.getpid()}" in problems[0] and "rmqd stop" in problems[0]
    assert verify_store(store_dir) == []


def test_a_zero_file_prepared_past_the_end_is_fine_and_data_there_is_reported(store_dir, batch):
    phys = _build(store_dir, batch)
    last_start = phys[-1] - phys[-1] % CL_FILE_SIZE
    prepared = os.path.join(store_dir, "commitlog", f"{last_start + CL_FILE_SIZE:020d}")
    with open(prepared, "wb") as f:
        f.truncate(CL_FILE_SIZE)  # the cleaner prepares the next file ahead of the writer
    assert verify_store(store_dir) == []
    with open(prepared, "r+b") as f:
        f.seek(100)
        f.write(b"\x01")
    problems = verify_store(store_dir)
    assert len(problems) == 1 and problems[0].startswith(f"{prepared}: data in a file after the end")
