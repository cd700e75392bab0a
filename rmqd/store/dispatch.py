"""Dispatching CommitLog records to ConsumeQueue units and IndexFile entries; the ONE place that
decides what a unit is.

`dispatch_range` is used by the dispatcher process (after each write group) and by recovery
(re-dispatch past the checkpoint), so both produce identical units and index entries. A record
becomes the unit
  (phy_offset, TOTALSIZE, tags_code) at record.queue_offset of (record.topic, record.queue_id)
unless its SYSFLAG transaction type is PREPARED or ROLLBACK (RocketMQ
CommitLogDispatcherBuildConsumeQueue dispatches only NOT_TYPE and COMMIT records).
tags_code is the Java hashCode of the TAGS property (0 without tags); for the delay topic
SCHEDULE_TOPIC_XXXX it is the delivery time in ms: STORETIMESTAMP + delay of the DELAY level
(RocketMQ CommitLog.checkMessageAndReturnSize / computeDeliverTimestamp); for the timer wheel
topic rmq_sys_wheel_timer it is STORETIMESTAMP + the queue's constant delay. Index keys are
`index_keys_of` (UNIQ_KEY, then each KEYS key; none for rolled-back records).

Batch path (`dispatch_range`): the per-record helpers below (`cq_tags_code`,
`dispatch_record_to_cq`, IndexService.build_for_record) cost about 8 us per record with the index;
the dispatcher is the write path's biggest CPU user. So `dispatch_range` copies up to
DISPATCH_CHUNK_BYTES of the CommitLog at a time and walks its records in one loop (`_scan`): the
fixed fields with one unpack, TAGS / UNIQ_KEY / KEYS found with bytes searches in the properties (a
property `NAME` is the last b"\x02NAME\x01" or a leading b"NAME\x01", exactly what
decode_properties' dict holds), the keys' bytes collected and hashed for the whole chunk at once
with numpy (`_index_entries`: index_file.index_key_hashes, ~50 ns a key; one by one below
NUMPY_MIN_KEYS keys). Records of the delay and timer topics and records with non-ASCII properties
take the per-record helpers instead (decode_properties), which keeps their rarer rules in one place.
The chunk's units are then written per run of consecutive queue offsets (ConsumeQueue.put_units) and
its keys with IndexService.put_hashes (numpy for big batches too). Both produce the same bytes as
the per-record helpers (tests/unit/store/test_dispatch_batch.py compares them).
A write error (ENOSPC) stops at the exact record that could not be written, as the dispatcher's
pause needs (see `_apply`).
Module state: two bounded caches (topic names, tags codes); single-threaded use.
"""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

import numpy as np

from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.index_file import (
    IndexPutError,
    IndexService,
    build_key,
    index_key_hash,
    index_key_hashes,
    index_keys_of,
)
from rmqd.store.record import (
    ASCII_TO_QUOTIENT_DIGIT,
    ASCII_TO_REMAINDER_DIGIT,
    BLANK_MAGIC,
    BODY_POS,
    DISPATCH_HEAD,
    FAST_HASH_MAX_CHARS,
    MESSAGE_MAGIC_V2,
    DispatchRecord,
    MessageRecord,
    Prop,
    SysFlag,
    decode_dispatch,
    java_hash_u32_ascii,
    peek_size_magic,
    tags_hash,
)

SCHEDULE_TOPIC = "SCHEDULE_TOPIC_XXXX"
# The timer wheel (rmqd/broker/schedule.py): queue 0 has no delay, queue k >= 1 a constant 2^(k-1) s.
# The longest, 2^17 s = 36.4 h, stays below fileReservedTime (48 h): a record always comes due
# (and is re-written by its next hop) before the cleaner may delete its file as expired.
TIMER_TOPIC = "rmq_sys_wheel_timer"
TIMER_QUEUE_NUMS = 19
DEFAULT_MESSAGE_DELAY_LEVEL = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_delay_levels(text: str) -> tuple[int, ...]:
    """RocketMQ messageDelayLevel ("1s 5s ... 2h") -> delay in ms per level (level 1 first)."""
    levels = []
    for item in text.split():
        unit = _UNIT_MS.get(item[-1:])
        if unit is None or not item[:-1].isdigit():
            raise ValueError(
                f"bad delay level {item!r} in {text!r}: expected a number followed by s, m, h or d")
        levels.append(int(item[:-1]) * unit)
    return tuple(levels)


DEFAULT_DELAY_LEVELS_MS = parse_delay_levels(DEFAULT_MESSAGE_DELAY_LEVEL)


def is_dispatched_to_cq(sys_flag: int) -> bool:
    """False for prepared and rolled-back transactional records: consumers never see them."""
    tran_type = sys_flag & SysFlag.TRANSACTION_MASK
    return tran_type in (SysFlag.TRANSACTION_NOT_TYPE, SysFlag.TRANSACTION_COMMIT)


def timer_queue_delay_ms(queue_id: int) -> int:
    """The constant delay of timer wheel queue `queue_id` (0 for queue 0)."""
    return 0 if queue_id <= 0 else 1000 << (min(queue_id, TIMER_QUEUE_NUMS - 1) - 1)


def cq_tags_code(record: MessageRecord, delay_levels_ms: Sequence[int] = DEFAULT_DELAY_LEVELS_MS) -> int:
    """The tags_code field of the record's ConsumeQueue unit."""
    if record.topic == SCHEDULE_TOPIC and delay_levels_ms:
        level_text = record.properties.get(Prop.DELAY, "")
        if level_text.isdigit() and int(level_text) > 0:
            level = min(int(level_text), len(delay_levels_ms))
            return record.store_timestamp_ms + delay_levels_ms[level - 1]
    if record.topic == TIMER_TOPIC:  # due time of the wheel queue (see timer_queue_delay_ms)
        return record.store_timestamp_ms + timer_queue_delay_ms(record.queue_id)
    return tags_hash(record.properties.get(Prop.TAGS))


def dispatch_record_to_cq(cq_store: ConsumeQueueStore, phy_offset: int, record: MessageRecord,
                          delay_levels_ms: Sequence[int] = DEFAULT_DELAY_LEVELS_MS) -> bool:
    """Put the record's ConsumeQueue unit (idempotent). Returns False if the record is not dispatched."""
    if not is_dispatched_to_cq(record.sys_flag):
        return False
    queue = cq_store.get(record.topic, record.queue_id)
    queue.put(record.queue_offset, phy_offset, record.total_size, cq_tags_code(record, delay_levels_ms))
    return True


# ---- batch path ------------------------------------------------------------------------------

DISPATCH_CHUNK_BYTES = 1 << 20  # CommitLog bytes copied and scanned per batch (more for a bigger record)
_CACHE_LIMIT = 4096
_NO_PHY = 1 << 62  # past any phy_offset
# raw topic -> (topic, batchable, Java hash of "topic#" as u32); batchable: not a delay/timer topic, ASCII
_TOPICS: dict[bytes, tuple[str, bool, int]] = {}
_TAGS_CODES: dict[bytes, int] = {}  # raw ASCII TAGS value -> tags_hash
# A batch with fewer keys hashes them one by one (_key_hash, ~0.45 us a key): index_key_hashes costs
# ~8 us a call plus ~50 ns a key (measured crossover: ~20 keys).
NUMPY_MIN_KEYS = 20
# 31^n mod 2^32: hash(prefix + key) = hash(prefix) * 31^len(key) + hash(key) (mod 2^32)
_POW31 = [pow(31, n, 1 << 32) for n in range(FAST_HASH_MAX_CHARS + 1)]


@dataclasses.dataclass(slots=True)
class DispatchResult:
    """What `dispatch_range` did."""

    end: int  # just past the last record dispatched (the start if none): where to continue
    arrivals: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)  # -> last offset + 1
    cq_units: int = 0
    index_keys: int = 0
    last_store_ms: int = 0  # STORETIMESTAMP of the last record passed (0 if none)
    error: OSError | None = None  # the write error that stopped it at `end` (a full disk)


@dataclasses.dataclass(slots=True)
class _Batch:
    """One scanned chunk: its units in runs, its index keys, and where the scan stopped."""

    # each run: [(topic, queue_id), first queue_offset, next queue_offset, phy, size, tags_code, ...]
    runs: list[list] = dataclasses.field(default_factory=list)
    # Index entries, parallel lists: the ASCII key bytes (hashed together by _index_entries), the
    # Java hash of its "topic#" (u32), the record's phy and store time.
    keys: list[bytes] = dataclasses.field(default_factory=list)
    prefixes: list[int] = dataclasses.field(default_factory=list)
    phys: list[int] = dataclasses.field(default_factory=list)
    store_ms: list[int] = dataclasses.field(default_factory=list)
    hashed: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (entry, hash) of _scan_one's
    stop: int = 0  # buffer position of the first record not scanned (after the last one scanned)
    blank: bool = False  # stopped at the file's end-of-file blank record
    last_store_ms: int = 0


def dispatch_range(commit_log: CommitLog, cq_store: ConsumeQueueStore, index: IndexService | None,
                   from_phy: int, to_phy: int, delay_levels_ms: Sequence[int] = DEFAULT_DELAY_LEVELS_MS, *,
                   cq_from: int | None = None, index_from: int | None = None) -> DispatchResult:
    """Dispatch the whole records in [from_phy, to_phy) (from_phy a record boundary, everything
    below to_phy written): units of records at or past `cq_from`, index keys (`index` not None) of
    records at or past `index_from` (both default to from_phy) and past the newest index entry.

    A record crossing to_phy is left for the next call (result.end stops before it). A write
    error stops at the exact record (result.error; its earlier records are dispatched).
    """
    result = DispatchResult(from_phy)
    cq_from = from_phy if cq_from is None else cq_from
    index_from = from_phy if index_from is None else index_from
    phy, want = from_phy, DISPATCH_CHUNK_BYTES
    while phy < to_phy:
        buf = commit_log.read_for_dispatch(phy, to_phy, want)
        index_min = _first_to_index(index, index_from)
        batch = _scan(buf, phy, cq_from - phy, index_min - phy, delay_levels_ms)
        if batch.stop == 0 and not batch.blank:
            need = int.from_bytes(buf[:4], "big", signed=True) if len(buf) >= 4 else 0  # TOTALSIZE
            if len(buf) < need and phy + need <= to_phy:
                want = need  # a record bigger than the chunk: read it whole
                continue
            break  # the next record crosses to_phy
        want = DISPATCH_CHUNK_BYTES
        if batch.stop and not _apply(batch, buf, phy, cq_store, index, delay_levels_ms, cq_from, index_from,
                                     result):
            return result  # stopped by a write error
        phy += batch.stop
        if batch.blank:  # the rest of this file is the blank; the next file starts with a record
            phy += commit_log.file_size - phy % commit_log.file_size
    return result


def _first_to_index(index: IndexService | None, index_from: int) -> int:
    """phy_offset from which records get index keys (as build_for_record: past the newest entry)."""
    if index is None:
        return _NO_PHY
    newest = index.newest_end_phy_offset()
    return index_from if newest is None else max(index_from, newest + 1)


def _apply(batch: _Batch, buf: bytes, base_phy: int, cq_store: ConsumeQueueStore, index: IndexService | None,
           delay_levels_ms: Sequence[int], cq_from: int, index_from: int, result: DispatchResult) -> bool:
    """Write the batch's units, then its index entries; False if a write error stopped it.

    The stop is exact, as for one record at a time: a ConsumeQueue error (the index untouched yet)
    re-dispatches the chunk one record at a time; an index error stops at the record whose entry
    could not be put, after cutting that record's entries already put.
    """
    try:
        for run in batch.runs:
            cq_store.get(*run[0]).put_units(run[1], run[3:])
    except OSError:
        _dispatch_one_by_one(buf, base_phy, batch.stop, cq_store, index, delay_levels_ms, cq_from,
                             index_from, result)
        return result.error is None
    if index is not None and batch.keys:
        hashes, phys, store_ms = _index_entries(batch)
        try:
            index.put_hashes(hashes, phys, store_ms)
        except IndexPutError as err:
            result.end = int(phys[err.done])
            result.error = err.cause
            index.truncate_beyond(result.end)  # the keys that record got (dispatch_pos stays before it)
            _add_runs(batch.runs, result, below_phy=result.end)
            result.index_keys += err.done
            return False
    _add_runs(batch.runs, result, below_phy=_NO_PHY)
    result.index_keys += len(batch.keys)
    result.end = base_phy + batch.stop
    result.last_store_ms = batch.last_store_ms
    return True


def _index_entries(batch: _Batch) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
    """(key hashes, phys, store times) of the batch's index entries, for IndexService.put_hashes; the
    hashes by index_key_hashes (a numpy array) from NUMPY_MIN_KEYS keys on, one by one below."""
    keys = batch.keys
    if len(keys) >= NUMPY_MIN_KEYS:
        hashes = index_key_hashes(np.array(batch.prefixes, np.uint32), keys)
    else:  # the live dispatcher's usual case (a few records per write group): keep it lean
        hashes = list(map(_key_hash, batch.prefixes, keys))
    for at, key_hash in batch.hashed:
        hashes[at] = key_hash
    return hashes, batch.phys, batch.store_ms


def _add_runs(runs: list[list], result: DispatchResult, below_phy: int) -> None:
    """Count the runs' units of records below `below_phy` and note their queues' arrivals."""
    for run in runs:
        count = run[2] - run[1]
        if run[3 + 3 * (count - 1)] >= below_phy:  # only after a write error
            count = sum(phy < below_phy for phy in run[3::3])
            if not count:
                continue
        result.arrivals[run[0]] = run[1] + count
        result.cq_units += count


def _dispatch_one_by_one(buf: bytes, base_phy: int, stop: int, cq_store: ConsumeQueueStore,
                         index: IndexService | None, delay_levels_ms: Sequence[int], cq_from: int,
                         index_from: int, result: DispatchResult) -> None:
    """The per-record path over buf[:stop], after a batch failed to write: stops at the exact record."""
    pos = 0
    while pos < stop:
        record = decode_dispatch(buf, pos)
        phy = base_phy + pos
        try:
            if phy >= cq_from and dispatch_record_to_cq(cq_store, phy, record, delay_levels_ms):
                result.arrivals[(record.topic, record.queue_id)] = record.queue_offset + 1
                result.cq_units += 1
            if index is not None and phy >= index_from:
                result.index_keys += index.build_for_record(phy, record)
        except OSError as exc:
            result.error = exc
            return
        pos += record.total_size
        result.end = base_phy + pos
        result.last_store_ms = record.store_timestamp_ms


def _topic_info(raw_topic: bytes) -> tuple[str, bool, int]:
    topic = raw_topic.decode()
    batchable = raw_topic.isascii() and topic not in (SCHEDULE_TOPIC, TIMER_TOPIC)
    prefix_hash = java_hash_u32_ascii(raw_topic + b"#") if batchable else 0
    if len(_TOPICS) >= _CACHE_LIMIT:
        _TOPICS.clear()
    info = _TOPICS[raw_topic] = (topic, batchable, prefix_hash)
    return info


def _tags_code(raw_tags: bytes) -> int:
    if len(_TAGS_CODES) >= _CACHE_LIMIT:
        _TAGS_CODES.clear()
    code = _TAGS_CODES[raw_tags] = tags_hash(raw_tags.decode())
    return code


def _key_hash(prefix_hash: int, key: bytes) -> int:
    """index_key_hash(topic + "#" + key) from the hash of "topic#" (any length of ASCII key): the
    small batches' one-by-one form of index_key_hashes (java_hash_u32_ascii inlined up to its limit)."""
    length = len(key)
    if length <= FAST_HASH_MAX_CHARS:
        h = (prefix_hash * _POW31[length] + 31 * int(key.translate(ASCII_TO_QUOTIENT_DIGIT), 31)
             + int(key.translate(ASCII_TO_REMAINDER_DIGIT), 31)) & 0xFFFFFFFF
    else:
        h = (prefix_hash * pow(31, length, 1 << 32) + java_hash_u32_ascii(key)) & 0xFFFFFFFF
    return h if h < 0x80000000 else (0x100000000 - h) & 0x7FFFFFFF


def _scan(buf: bytes, base_phy: int, cq_min: int, index_min: int, delay_levels_ms: Sequence[int]) -> _Batch:
    """Walk the whole records of buf (phy base_phy at 0): units of records at buf positions >= cq_min,
    index keys of those at >= index_min. One straight loop on purpose: it runs per record."""
    # Locals for the loop; see the module docstring for the property search rule.
    batch = _Batch()
    runs, open_runs = batch.runs, {}
    add_key, add_prefix = batch.keys.append, batch.prefixes.append
    add_phy, add_store_ms = batch.phys.append, batch.store_ms.append
    unpack, topics, tags_codes = DISPATCH_HEAD.unpack_from, _TOPICS, _TAGS_CODES
    size = len(buf)
    pos = last_store_ms = 0
    try:
        while pos < size:
            total, magic, queue_id, queue_offset, sys_flag, store_ms, body_len = unpack(buf, pos)
            end = pos + total
            if magic == BLANK_MAGIC or end > size:
                batch.blank = magic == BLANK_MAGIC
                break
            at = pos + BODY_POS + body_len
            if magic != MESSAGE_MAGIC_V2:  # as decode_dispatch
                topic_end = at + 1 + buf[at]
                at += 1
            else:
                topic_end = at + 2 + (buf[at] << 8 | buf[at + 1])
                at += 2
            raw_topic = buf[at:topic_end]
            props = buf[topic_end + 2:end]
            topic, batchable, prefix_hash = topics.get(raw_topic) or _topic_info(raw_topic)
            if not (batchable and props.isascii()):
                _scan_one(buf, pos, base_phy, cq_min, index_min, delay_levels_ms, runs, open_runs, batch)
            else:
                if pos >= cq_min and not sys_flag & 4:  # is_dispatched_to_cq: no PREPARED/ROLLBACK bit
                    _, found, rest = props.rpartition(b"\x02TAGS\x01")
                    if found or props[:5] == b"TAGS\x01":
                        raw = (rest if found else props[5:]).partition(b"\x02")[0]
                        code = tags_codes.get(raw)
                        if code is None:
                            code = _tags_code(raw)
                    else:
                        code = 0
                    queue_key = (topic, queue_id)
                    run = open_runs.get(queue_key)
                    if run is not None and run[2] == queue_offset:
                        run[2] = queue_offset + 1
                        run += (base_phy + pos, total, code)
                    else:
                        if run is not None:
                            runs.append(run)
                        open_runs[queue_key] = [queue_key, queue_offset, queue_offset + 1,
                                                base_phy + pos, total, code]
                if pos >= index_min and sys_flag & 12 != 12:  # index_keys_of: none for ROLLBACK
                    keys = []
                    _, found, rest = props.rpartition(b"\x02UNIQ_KEY\x01")
                    if found or props[:9] == b"UNIQ_KEY\x01":
                        keys.append((rest if found else props[9:]).partition(b"\x02")[0])
                    _, found, rest = props.rpartition(b"\x02KEYS\x01")
                    if found or props[:5] == b"KEYS\x01":
                        keys += (rest if found else props[5:]).partition(b"\x02")[0].split(b" ")
                    for key in keys:
                        if key:
                            add_key(key)
                            add_prefix(prefix_hash)
                            add_phy(base_phy + pos)
                            add_store_ms(store_ms)
            pos, last_store_ms = end, store_ms
    except struct.error:  # fewer than 88 bytes left: a short end-of-file blank, or the chunk's end
        batch.blank = size - pos >= 8 and peek_size_magic(buf, pos)[1] == BLANK_MAGIC
    batch.stop, batch.last_store_ms = pos, last_store_ms
    runs.extend(open_runs.values())
    return batch


def _scan_one(buf: bytes, pos: int, base_phy: int, cq_min: int, index_min: int,
              delay_levels_ms: Sequence[int], runs: list[list], open_runs: dict, batch: _Batch) -> None:
    """_scan's path for a record it does not search itself: the per-record helpers on a full decode."""
    record: DispatchRecord = decode_dispatch(buf, pos)
    phy = base_phy + pos
    if pos >= cq_min and is_dispatched_to_cq(record.sys_flag):
        queue_key = (record.topic, record.queue_id)
        run = open_runs.get(queue_key)
        code = cq_tags_code(record, delay_levels_ms)
        if run is not None and run[2] == record.queue_offset:
            run[2] = record.queue_offset + 1
            run += (phy, record.total_size, code)
        else:
            if run is not None:
                runs.append(run)
            open_runs[queue_key] = [queue_key, record.queue_offset, record.queue_offset + 1,
                                    phy, record.total_size, code]
    keys = index_keys_of(record) if pos >= index_min else ()
    if keys:  # hashed here (UTF-16 units for non-ASCII text); placeholders in batch.keys
        batch.hashed += [(len(batch.keys) + n, index_key_hash(build_key(record.topic, key)))
                         for n, key in enumerate(keys)]
        batch.keys += [b"-"] * len(keys)
        batch.prefixes += [0] * len(keys)
        batch.phys += [phy] * len(keys)
        batch.store_ms += [record.store_timestamp_ms] * len(keys)
