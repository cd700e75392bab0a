"""The batched dispatch path (dispatch.dispatch_range) writes exactly what the per-record path writes.

The reference is the per-record path the dispatcher and recovery used before: every record of
CommitLog.iter_records through dispatch_record_to_cq and IndexService.build_for_record. Both run
over copies of one mixed CommitLog; every ConsumeQueue file and every index file must come out
byte for byte the same (index files compared in name order: their names are creation times).
"""
from __future__ import annotations

import errno
import os
import random
import shutil

import pytest

from rmqd.store import dispatch, index_file
from rmqd.store import record as r
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.dispatch import (
    SCHEDULE_TOPIC,
    TIMER_TOPIC,
    DispatchResult,
    dispatch_range,
    dispatch_record_to_cq,
)
from rmqd.store.index_file import IndexService
from rmqd.store.mapped_file import MappedFile

HOST = r.encode_host("127.0.0.1", 10911)
CL_FILE_SIZE = 64 * 1024
CQ_FILE_SIZE = 50 * 20  # 50 units per file: runs cross ConsumeQueue files
MAX_HASH_SLOTS = 16  # few slots: many keys of one batch share a slot (chains within a batch)
MAX_INDEX_COUNT = 40  # 39 entries per index file: the index rolls several times per batch
BASE_MS = 1_700_000_000_000
LONG_TOPIC = "T" * 130  # a V2 record (2-byte topic length)
P = r.Prop


def _props(pairs: list[tuple[str, str]], trailing: bool = True) -> bytes:
    """Raw properties, in order and with duplicates (encode_properties would take a dict)."""
    text = "".join(f"{name}\x01{value}\x02" for name, value in pairs)
    return (text if trailing else text[:-1]).encode()


def _mixed_records(count: int, seed: int = 7) -> list[tuple[str, int, int, bytes, int, int]]:
    """(topic, queue_id, sys_flag, properties, body_size, store_ms) of a mixed store, deterministic."""
    rnd = random.Random(seed)
    tran = [0, 0, 0, r.SysFlag.TRANSACTION_PREPARED, r.SysFlag.TRANSACTION_COMMIT,
            r.SysFlag.TRANSACTION_ROLLBACK, r.SysFlag.COMPRESSED | r.SysFlag.TRANSACTION_COMMIT]
    shapes = [
        [(P.UNIQ_KEY, "UNIQ{n:06d}ABCDEF"), (P.KEYS, "order-{n}"), (P.TAGS, "TagA"), (P.WAIT, "true")],
        [(P.TAGS, "TagB"), (P.KEYS, "k{n} shared  k-{n}-b "), (P.UNIQ_KEY, "U{n}")],  # TAGS first, empty keys
        [],  # no properties at all
        [(P.WAIT, "false")],  # properties without TAGS or keys
        [(P.KEYS, "订单-{n} 🎉{n}"), (P.TAGS, "标签")],  # non-ASCII keys (one outside the BMP) and tags
        [(P.UNIQ_KEY, ""), (P.KEYS, "")],  # empty values: no keys
        [(P.WAIT, "true"), (P.TAGS, "old"), (P.KEYS, "first-{n}"), (P.UNIQ_KEY, "u1-{n}"), (P.TAGS, "new"),
         (P.KEYS, "second-{n}"), (P.UNIQ_KEY, "u2-{n}")],  # the last of each name wins (as in a dict)
        [(P.TAGS, "lead"), (P.KEYS, "lead-{n}"), (P.TAGS, "then")],  # a name first and again
        [("XTAGS", "no"), ("MYKEYS", "no-{n}"), ("AUNIQ_KEY", "no"), (P.TAGS, "a\x01b")],  # look-alike names
        [(P.KEYS, "L" * 1500 + "{n}")],  # a key longer than the fast hash handles
        [(P.UNIQ_KEY, "tail-{n}"), (P.TAGS, "TagC")],  # written without the trailing separator
    ]
    records = []
    store_ms = BASE_MS
    for n in range(count):
        kind = rnd.random()
        store_ms += rnd.choice([1, 7, 1500, 0])
        if n == count // 2:
            store_ms -= 10_000  # a clock step back: the index clamps the time difference at 0
        if kind < 0.12:
            level = rnd.choice(["3", "0", "99", "x", "18"])
            props = _props([(P.DELAY, level), (P.REAL_TOPIC, "TopicA"), (P.KEYS, f"delayed-{n}")])
            records.append((SCHEDULE_TOPIC, int(level) - 1 if level.isdigit() and level != "0" else 0, 0,
                            props, 40, store_ms))
            continue
        if kind < 0.2:
            props = _props([(P.TIMER_DELIVER_MS, str(store_ms + 5000)), (P.UNIQ_KEY, f"T{n}")])
            records.append((TIMER_TOPIC, rnd.randrange(4), 0, props, 30, store_ms))
            continue
        shape = rnd.randrange(len(shapes))
        pairs = [(name, value.format(n=n)) for name, value in shapes[shape]]
        topic = rnd.choice(["TopicA", "TopicA", "TopicB", LONG_TOPIC])
        records.append((topic, rnd.randrange(3), rnd.choice(tran), _props(pairs, trailing=shape != 9),
                        rnd.choice([10, 200, 1200]), store_ms))
    return records


def _write_commit_log(store_dir: str, records) -> list[int]:
    """Append the records like the writer (queue offsets per queue, a gap and a repeat in one queue)."""
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=False)
    next_offsets: dict[tuple[str, int], int] = {}
    phys = []
    try:
        for n, (topic, queue_id, sys_flag, props, body_size, store_ms) in enumerate(records):
            buf = bytearray(r.record_size(body_size, len(topic), len(props)))
            r.encode_record(buf, 0, topic=topic.encode(), queue_id=queue_id, body=b"b" * body_size,
                            properties=props, sys_flag=sys_flag, born_timestamp_ms=BASE_MS, born_host=HOST,
                            store_host=HOST)
            offset = next_offsets.get((topic, queue_id), 0)
            if n == 200:
                offset += 5  # a gap in queue offsets: a new run
            if n == 300:
                offset = max(offset - 3, 0)  # a repeated offset: the later record's unit wins
            phys += log.append_records(memoryview(buf), 1, offset, store_ms)
            next_offsets[(topic, queue_id)] = offset + 1
        log.flush()
        phys.append(log.write_pos)
        return phys
    finally:
        log.close()


def _stores(store_dir: str):
    cq_store = ConsumeQueueStore(store_dir, CQ_FILE_SIZE, readonly=False)
    index = IndexService(store_dir, max_hash_slots=MAX_HASH_SLOTS, max_index_count=MAX_INDEX_COUNT,
                         readonly=False)
    return cq_store, index


def _dispatch_per_record(store_dir: str, end: int, cq_from: int = 0, index_from: int = 0) -> list[tuple]:
    """The reference: the per-record helpers over iter_records. Returns the arrivals in order."""
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=True)
    cq_store, index = _stores(store_dir)
    arrivals = []
    for phy, record in log.iter_records(min(cq_from, index_from), end, verify_crc=False):
        if phy >= cq_from and dispatch_record_to_cq(cq_store, phy, record):
            arrivals.append(((record.topic, record.queue_id), record.queue_offset + 1))
        if phy >= index_from:
            index.build_for_record(phy, record)
    cq_store.close_all()
    index.close()
    log.close()
    return arrivals


def _contents(store_dir: str) -> dict[str, bytes]:
    """Every ConsumeQueue file by path, and every index file by its rank in name order.

    An all-zero index file is left out: one whose creation failed half-way (no room for its
    blocks) stays behind without even a header, with either path.
    """
    found: dict[str, bytes] = {}
    for path in sorted(_files(os.path.join(store_dir, "consumequeue"))):
        found[os.path.relpath(path, store_dir)] = _read(path)
    index_files = [data for data in map(_read, sorted(_files(os.path.join(store_dir, "index")))) if any(data)]
    found.update((f"index#{rank}", data) for rank, data in enumerate(index_files))
    return found


def _files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """(store_dir with only the CommitLog, record phys + end, reference contents, reference arrivals)."""
    base = tmp_path_factory.mktemp("mixed")
    source = str(base / "source")
    phys = _write_commit_log(source, _mixed_records(700))
    reference = str(base / "reference")
    shutil.copytree(source, reference)
    arrivals = _dispatch_per_record(reference, phys[-1])
    return source, phys, _contents(reference), arrivals


def _copy(source: str, tmp_path) -> str:
    target = str(tmp_path / "store")
    shutil.copytree(source, target)
    return target


def test_the_mixed_store_exercises_every_case_the_batch_path_must_match(mixed_store):
    source, phys, reference, _ = mixed_store
    log = CommitLog(source, CL_FILE_SIZE, readonly=True)
    records = [record for _, record in log.iter_records(0, phys[-1], verify_crc=False)]
    log.close()
    assert len(os.listdir(os.path.join(source, "commitlog"))) >= 4  # file rolls with blank records
    assert {r.MESSAGE_MAGIC_V1, r.MESSAGE_MAGIC_V2} <= {record.magic for record in records}
    assert {SCHEDULE_TOPIC, TIMER_TOPIC, "TopicA", "TopicB"} <= {record.topic for record in records}
    assert {record.sys_flag & r.SysFlag.TRANSACTION_MASK for record in records} == {0, 4, 8, 12}
    assert sum(name.startswith("index#") for name in reference) >= 10  # the index rolled many times
    assert sum(name.startswith("consumequeue") for name in reference) >= 10


NUMPY_ALWAYS, NUMPY_NEVER = 1, 1 << 40  # thresholds for the numpy key hashing and index puts


def _use_numpy_from(monkeypatch, min_entries: int | None, entries_per_numpy_put: int | None = None) -> None:
    """Take the numpy paths (key hashes, index puts) from `min_entries` on (None: the defaults)."""
    if min_entries is not None:
        monkeypatch.setattr(dispatch, "NUMPY_MIN_KEYS", min_entries)
        monkeypatch.setattr(index_file, "NUMPY_MIN_ENTRIES", min_entries)
    if entries_per_numpy_put is not None:
        monkeypatch.setattr(index_file, "ENTRIES_PER_NUMPY_PUT", entries_per_numpy_put)


@pytest.mark.parametrize(("chunk_bytes", "entries_per_put", "numpy_from", "entries_per_numpy_put"), [
    (dispatch.DISPATCH_CHUNK_BYTES, index_file.ENTRIES_PER_PUT, None, None), (3000, 7, None, None),
    (100, 1, None, None), (dispatch.DISPATCH_CHUNK_BYTES, 7, NUMPY_ALWAYS, 5),
    (3000, index_file.ENTRIES_PER_PUT, NUMPY_NEVER, None)],
    ids=["defaults", "small-chunks", "record-chunks", "numpy-always", "numpy-never"])
def test_the_batch_path_writes_the_same_bytes_as_the_per_record_path(mixed_store, tmp_path, monkeypatch,
                                                                       chunk_bytes, entries_per_put,
                                                                       numpy_from, entries_per_numpy_put):
    # Given a copy of the mixed CommitLog (chunks smaller than one record force whole-record re-reads),
    # and the numpy paths taken from the defaults' sizes, always (puts split every 5 entries) or never
    source, phys, reference, reference_arrivals = mixed_store
    store_dir = _copy(source, tmp_path)
    monkeypatch.setattr(dispatch, "DISPATCH_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(index_file, "ENTRIES_PER_PUT", entries_per_put)
    _use_numpy_from(monkeypatch, numpy_from, entries_per_numpy_put)
    # When it is dispatched by the batch path in one range
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=True)
    cq_store, index = _stores(store_dir)
    result = dispatch_range(log, cq_store, index, 0, phys[-1])
    cq_store.close_all()
    index.close()
    log.close()
    # Then the ConsumeQueue and index files are byte-identical, and so are the arrivals
    assert result.error is None and result.end == phys[-1]
    assert _contents(store_dir) == reference
    assert result.arrivals == dict(reference_arrivals)
    assert result.cq_units == len(reference_arrivals)


def test_windows_ending_inside_records_dispatch_the_same_bytes(mixed_store, tmp_path):
    # Given windows whose ends fall inside records, each longer than two records and a blank (as the
    # dispatcher's capped windows: MAX_DISPATCH_BYTES)
    source, phys, reference, _ = mixed_store
    store_dir = _copy(source, tmp_path)
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=True)
    cq_store, index = _stores(store_dir)
    record_ends = {phy + record.total_size for phy, record in log.iter_records(0, phys[-1], verify_crc=False)}
    pos, windows = 0, 0
    while pos < phys[-1] and windows < 10_000:  # bounded: each window makes progress
        result = dispatch_range(log, cq_store, index, pos, min(phys[-1], pos + 7000 + 13 * windows))
        # Then each window stops after a whole record, before the one crossing its end
        assert result.error is None and result.end in record_ends and result.end > pos
        pos, windows = result.end, windows + 1
    cq_store.close_all()
    index.close()
    log.close()
    # And the files are the same as after one pass
    assert pos == phys[-1] and windows > 50
    assert _contents(store_dir) == reference


def test_recovery_thresholds_put_units_and_keys_from_their_own_start(mixed_store, tmp_path):
    # Given units already dispatched up to one record and keys up to an earlier one
    source, phys, _, _ = mixed_store
    cq_from, index_from = phys[450], phys[380]
    expected_dir = _copy(source, tmp_path / "expected")
    _dispatch_per_record(expected_dir, phys[-1], cq_from, index_from)
    store_dir = _copy(source, tmp_path / "batch")
    # When the batch path re-dispatches with those starts (recovery's use)
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=True)
    cq_store, index = _stores(store_dir)
    result = dispatch_range(log, cq_store, index, index_from, phys[-1], cq_from=cq_from,
                            index_from=index_from)
    cq_store.close_all()
    index.close()
    log.close()
    # Then it wrote what the per-record path writes with the same starts
    assert result.error is None and result.end == phys[-1]
    assert _contents(store_dir) == _contents(expected_dir)


class _FullDisk:
    """MappedFile.reserve fails with ENOSPC, while `full`, for the files `refuses(path)` picks."""

    def __init__(self, monkeypatch, refuses) -> None:
        self.full = True
        real_reserve = MappedFile.reserve

        def reserve(mapped, start, end):
            if self.full and refuses(mapped.path):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_reserve(mapped, start, end)

        monkeypatch.setattr(MappedFile, "reserve", reserve)


def _refuse_index_files_after(count: int):
    """A `refuses` for _FullDisk: every index file of a store after its first `count` ones."""
    seen: dict[str, list[str]] = {}

    def refuses(path: str) -> bool:
        if "/index/" not in path:
            return False
        paths = seen.setdefault(path.split("/index/")[0], [])
        if path not in paths:
            paths.append(path)
        return paths.index(path) >= count

    return refuses


def _per_record_stop(store_dir: str, end: int) -> int:
    """phy_offset of the record at which the per-record path fails on the full disk."""
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=True)
    cq_store, index = _stores(store_dir)
    try:
        for phy, record in log.iter_records(0, end, verify_crc=False):
            dispatch_record_to_cq(cq_store, phy, record)
            index.build_for_record(phy, record)
    except OSError:
        return phy
    finally:
        cq_store.close_all()
        index.close()
        log.close()
    raise AssertionError("the disk never refused a block")


def _batch_stop_then_resume(store_dir: str, end: int, disk: _FullDisk) -> tuple[int, DispatchResult]:
    """Run the batch path into the full disk, cut as the dispatcher's pause does, free the disk and
    resume: (where it stopped, the resumed run's result)."""
    log = CommitLog(store_dir, CL_FILE_SIZE, readonly=True)
    cq_store, index = _stores(store_dir)
    try:
        stopped = dispatch_range(log, cq_store, index, 0, end)
        assert stopped.error is not None
        index.truncate_beyond(stopped.end)
        disk.full = False
        return stopped.end, dispatch_range(log, cq_store, index, stopped.end, end)
    finally:
        cq_store.close_all()
        index.close()
        log.close()


@pytest.mark.parametrize("numpy_from", [NUMPY_ALWAYS, NUMPY_NEVER], ids=["numpy", "lists"])
@pytest.mark.parametrize("refused", ["the fourth index file", "a second ConsumeQueue file"])
def test_a_write_error_stops_where_the_per_record_path_stops_and_resuming_gives_the_same_bytes(
        mixed_store, tmp_path, monkeypatch, refused, numpy_from):
    # Given a disk with no room for one file's blocks (and the batch path's numpy or list puts)
    source, phys, reference, _ = mixed_store
    _use_numpy_from(monkeypatch, numpy_from)
    if refused == "the fourth index file":
        refuses = _refuse_index_files_after(3)
    else:
        refuses = lambda path: path.endswith(  # noqa: E731
            os.path.join("consumequeue", "TopicA", "1", f"{CQ_FILE_SIZE:020d}"))
    disk = _FullDisk(monkeypatch, refuses)
    # and the record at which the per-record path fails on it
    expected_stop = _per_record_stop(_copy(source, tmp_path / "per-record"), phys[-1])
    # When the batch path runs into it, and resumes once there is room
    stop, resumed = _batch_stop_then_resume(_copy(source, tmp_path / "batch"), phys[-1], disk)
    # Then it stopped at the same record, and the files end up byte-identical to the reference
    assert stop == expected_stop and 0 < stop < phys[-1]
    assert resumed.error is None and resumed.end == phys[-1]
    assert _contents(str(tmp_path / "batch" / "store")) == reference
