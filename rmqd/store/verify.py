"""Offline consistency check of a stopped broker's store (`rmqd verify`). Read-only.

Checks, and reports as one line each (path, position, what is wrong):
  - no broker holds the store's lock (a live store changes under the check: stop it first);
  - the checkpoint decodes (magic, version, crc);
  - every CommitLog record from the first file to the end of data validates (magic, sizes, body
    CRC, PHYSICALOFFSET == position); data after the end (non-zero bytes) is reported;
  - every ConsumeQueue unit points at a record of its own topic, queue and queue_offset, with
    the record's TOTALSIZE, below the CommitLog end;
  - the IndexFiles (when index/ holds any) agree with the CommitLog both ways: from the first
    entry on, every key of every record (`index_keys_of`) has exactly one entry, in CommitLog
    order, with the key's hash and the record's store second; nothing else is indexed; and each
    file's chains are intact (prevIndex = the previous entry of the same slot, slot heads = the
    newest, header counts and begin/end offsets match).
File sizes are taken from the files on disk (index geometry: `infer_geometry`). Unlike recovery
this reads the whole store: it is a diagnostic tool, not a start-up step. Memory stays bounded:
the index is compared with the CommitLog in one merged pass (both are in phy_offset order).
"""
from __future__ import annotations

import array
import fcntl
import os
from collections.abc import Iterator

from rmqd.errors import CorruptFileError, StoreError
from rmqd.store.checkpoint import Checkpoint
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueue, ConsumeQueueStore
from rmqd.store.filenames import is_offset_name
from rmqd.store.files import LOCK_FILE_NAME
from rmqd.store.index_file import (
    INDEX_NAME_LENGTH,
    MAX_TIME_DIFF_S,
    IndexFile,
    index_key_hash,
    index_keys_of,
    infer_geometry,
)
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
    holder = _lock_holder(store_dir)
    if holder is not None:
        problems.append(f"{store_dir}: a running broker (pid {holder or '?'}) holds the store lock; "
                        "verify checks a stopped store: run `rmqd stop` first")
        return problems
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
        _verify_index(store_dir, commit_log, end, problems)
    finally:
        commit_log.close()
    return problems[:MAX_PROBLEMS]


def _lock_holder(store_dir: str) -> int | None:
    """None if no process holds the store lock, else the pid written in it (0 if unreadable)."""
    path = os.path.join(store_dir, LOCK_FILE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: never blocks a broker that checks
    except BlockingIOError:
        try:
            return int(os.pread(fd, 32, 0).decode().strip() or 0)
        except ValueError:
            return 0
    finally:
        os.close(fd)  # closing drops our probe lock
    return None


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
        # A zero file past the end is the next file, prepared ahead by the cleaner: not a problem.
        if mapped.start_offset > end and not _all_zero(mapped.mv):
            problems.append(f"{mapped.path}: data in a file after the end of valid data (phy_offset {end})")


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


# ---- index -------------------------------------------------------------------------------------

def _index_files(store_dir: str, problems: list[str]) -> list[IndexFile]:
    index_dir = os.path.join(store_dir, "index")
    try:
        names = sorted(n for n in os.listdir(index_dir) if len(n) == INDEX_NAME_LENGTH and n.isdigit())
    except FileNotFoundError:
        return []
    files = []
    for name in names:
        path = os.path.join(index_dir, name)
        try:
            geometry = infer_geometry(path)
        except CorruptFileError as err:
            problems.append(str(err))
            continue
        if geometry is not None:
            files.append(IndexFile.open(path, *geometry, readonly=True))
    return files


def _verify_index(store_dir: str, commit_log: CommitLog, end: int, problems: list[str]) -> None:
    files = _index_files(store_dir, problems)
    try:
        for index_file in files:
            _verify_index_chains(index_file, problems)
        if files:
            _verify_index_against_records(files, commit_log, end, problems)
    finally:
        for index_file in files:
            index_file.close()


def _verify_index_chains(index_file: IndexFile, problems: list[str]) -> None:
    """prevIndex of each entry = the previous entry of its slot; slot heads = the newest; header."""
    header = index_file.header()
    last_of_slot = array.array("i", bytes(4 * index_file.max_hash_slots))
    phy = None
    for index, key_hash, phy, _time_diff, prev in index_file.entries():
        slot = key_hash % index_file.max_hash_slots
        if prev != last_of_slot[slot]:
            problems.append(f"{index_file.path}: entry {index} has prevIndex {prev}, "
                            f"the previous entry of slot {slot} is {last_of_slot[slot]}")
        last_of_slot[slot] = index
        if index == 1 and phy != header.begin_phy_offset:
            problems.append(f"{index_file.path}: beginPhyOffset {header.begin_phy_offset} != entry 1's {phy}")
    if phy is not None and phy != header.end_phy_offset:
        problems.append(f"{index_file.path}: endPhyOffset {header.end_phy_offset} != newest entry's {phy}")
    used = 0
    for slot, head in index_file.used_slots():
        used += 1
        if head != last_of_slot[slot]:
            problems.append(f"{index_file.path}: slot {slot} points at entry {head}, "
                            f"its newest entry is {last_of_slot[slot]}")
    if used != header.hash_slot_count:
        problems.append(f"{index_file.path}: hashSlotCount {header.hash_slot_count} != {used} slots in use")


def _index_entries(files: list[IndexFile]) -> Iterator[tuple[str, int, int, int, int]]:
    """(path, index, key_hash, phy_offset, store second) of every entry, oldest file first."""
    for index_file in files:
        begin_ms = index_file.header().begin_timestamp_ms
        for index, key_hash, phy, time_diff_s, _prev in index_file.entries():
            yield index_file.path, index, key_hash, phy, (begin_ms, time_diff_s)


def _verify_index_against_records(files: list[IndexFile], commit_log: CommitLog, end: int,
                                  problems: list[str]) -> None:
    """Merge the entries (phy order) with the records' expected entries; report every difference."""
    entries = _index_entries(files)
    entry = next(entries, None)
    start = max(commit_log.min_offset(), entry[3] if entry is not None else end)
    for phy, record in commit_log.iter_records(_record_boundary_at(commit_log, start), end, verify_crc=False):
        if phy < start:
            continue
        for key in index_keys_of(record):
            while entry is not None and entry[3] < phy:
                problems.append(f"{entry[0]}: entry {entry[1]} points at phy_offset {entry[3]}, "
                                "where no record has a key with its hash")
                entry = next(entries, None)
            expected_hash = index_key_hash(f"{record.topic}#{key}")
            if entry is None or entry[3] != phy or entry[2] != expected_hash:
                problems.append(f"record at phy_offset {phy} ({record.topic}) key {key!r}: not in the index")
                continue
            _check_entry_time(entry, record.store_timestamp_ms, problems)
            entry = next(entries, None)
        if len(problems) >= MAX_PROBLEMS:
            return
    for path, index, _hash, entry_phy, _time in ([entry] if entry else []) + list(entries):
        problems.append(f"{path}: entry {index} points at phy_offset {entry_phy}, past the last keyed record")
        if len(problems) >= MAX_PROBLEMS:
            return


def _record_boundary_at(commit_log: CommitLog, start: int) -> int:
    """The first record boundary: the start of the file holding `start` (files begin with a record)."""
    return max(commit_log.min_offset(), start - start % commit_log.file_size)


def _check_entry_time(entry: tuple, store_ms: int, problems: list[str]) -> None:
    path, index, _hash, phy, (begin_ms, time_diff_s) = entry
    expected = min(max((store_ms - begin_ms) // 1000, 0), MAX_TIME_DIFF_S) if begin_ms > 0 else 0
    if time_diff_s != expected:
        problems.append(f"{path}: entry {index} (phy_offset {phy}) has timeDiff {time_diff_s} s, "
                        f"the record's store time gives {expected} s")
