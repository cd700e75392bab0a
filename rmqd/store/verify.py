"""Offline consistency check of a stopped broker's store (`rmqd verify`). Read-only.

Checks, and reports as one line each (path, position, what is wrong):
  - the checkpoint decodes (magic, version, crc);
  - every CommitLog record from the first file to the end of data validates (magic, sizes, body
    CRC, PHYSICALOFFSET == position); data after the end (non-zero bytes) is reported;
  - every ConsumeQueue unit points at a record of its own topic, queue and queue_offset, with
    the record's TOTALSIZE, below the CommitLog end.
File sizes are taken from the files on disk. Unlike recovery this reads the whole store: it is a
diagnostic tool, not a start-up step.
"""
from __future__ import annotations

import os

from rmqd.errors import CorruptFileError, StoreError
from rmqd.store.checkpoint import Checkpoint
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueue, ConsumeQueueStore
from rmqd.store.filenames import is_offset_name
from rmqd.store.record import BLANK_MAGIC, peek_size_magic

MAX_PROBLEMS = 100


def _file_size(dir_path: str) -> int | None:
    try:
        names = sorted(n for n in os.listdir(dir_path) if is_offset_name(n))
    except FileNotFoundError:
        return None
    return os.path.getsize(os.path.join(dir_path, names[0])) if names else None


def verify_store(store_dir: str) -> list[str]:
    """Problems found in `store_dir` (empty list = consistent)."""
    problems: list[str] = []
    try:
        Checkpoint(os.path.join(store_dir, "checkpoint")).load()
    except CorruptFileError as err:
        problems.append(str(err))
    file_size = _file_size(os.path.join(store_dir, "commitlog"))
    if file_size is None:
        return problems
    commit_log = CommitLog(store_dir, file_size, readonly=True)
    try:
        end = _verify_commit_log(commit_log, problems)
        _verify_consume_queues(store_dir, commit_log, end, problems)
    finally:
        commit_log.close()
    return problems[:MAX_PROBLEMS]


def _verify_commit_log(commit_log: CommitLog, problems: list[str]) -> int:
    """Walk records from the first file; returns the end of valid data."""
    phy = commit_log.min_offset()
    while (found := commit_log.queue.find(phy)) is not None:
        mapped, file_pos = found
        size, magic = peek_size_magic(mapped.mv, file_pos)
        if magic == BLANK_MAGIC and size == commit_log.file_size - file_pos:
            phy += size
            continue
        if size == 0 and magic == 0:
            break
        try:
            record = commit_log.read_record(phy)
        except CorruptFileError as err:
            problems.append(str(err))
            break
        if record.phy_offset != phy:
            problems.append(f"{mapped.path} at file position {file_pos}: PHYSICALOFFSET {record.phy_offset}")
            break
        phy += size
    _check_zero_after(commit_log, phy, problems)
    return phy


def _check_zero_after(commit_log: CommitLog, end: int, problems: list[str]) -> None:
    found = commit_log.queue.find(end)
    if found is not None and not _all_zero(found[0].mv[found[1]:]):
        problems.append(f"{found[0].path}: non-zero bytes after the end of valid data "
                        f"at file position {found[1]}")
    for mapped in commit_log.queue.files:
        if mapped.start_offset > end:
            problems.append(f"{mapped.path}: file after the end of valid data (phy_offset {end})")


def _all_zero(view: memoryview, chunk_size: int = 1 << 20) -> bool:
    zeros = bytes(chunk_size)
    for pos in range(0, len(view), chunk_size):
        chunk = view[pos:pos + chunk_size].tobytes()
        if chunk != zeros[:len(chunk)]:
            return False
    return True


def _verify_consume_queues(store_dir: str, commit_log: CommitLog, end: int, problems: list[str]) -> None:
    for topic, queue_id in ConsumeQueueStore(store_dir, readonly=True).list_queues():
        cq_size = _file_size(os.path.join(store_dir, "consumequeue", topic, str(queue_id)))
        if cq_size is None:
            continue
        queue = ConsumeQueue(store_dir, topic, queue_id, cq_size, readonly=True)
        try:
            _verify_queue(queue, commit_log, end, problems)
        finally:
            queue.close()


def _verify_queue(queue: ConsumeQueue, commit_log: CommitLog, end: int, problems: list[str]) -> None:
    queue_offset = queue.min_offset(commit_log.min_offset())
    while len(problems) < MAX_PROBLEMS:
        units = queue.read_range(queue_offset, 1024)
        if not units:
            return
        for phy, size, _ in units:
            where = f"{queue.dir} queue_offset {queue_offset}"
            if phy + size > end:
                problems.append(f"{where}: unit points past the CommitLog end {end} (phy_offset {phy})")
            else:
                try:
                    record = commit_log.read_record(phy, verify_crc=False)
                except (StoreError, ValueError) as err:
                    problems.append(f"{where}: {err}")
                else:
                    expected = (queue.topic, queue.queue_id, queue_offset, size)
                    actual = (record.topic, record.queue_id, record.queue_offset, record.total_size)
                    if expected != actual:
                        problems.append(f"{where}: unit {expected} does not match record {actual} at {phy}")
            queue_offset += 1
