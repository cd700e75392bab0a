"""IndexFile: a hash index from message key to CommitLog phy_offset (RocketMQ IndexFile layout).

Path:  {store_dir}/index/{yyyyMMddHHmmssSSS}  (local creation time, RocketMQ timeMillisToHumanString)
Size:  40 + max_hash_slots * 4 + max_index_count * 20 bytes, created sparse at full size
       (defaults 5,000,000 slots and 20,000,000 entries = 420,000,040 bytes).
Layout (big-endian; RocketMQ IndexHeader / IndexFile):
  header, 40 bytes at 0:
    0   i64 beginTimestamp     store time (ms) of the first entry
    8   i64 endTimestamp       store time (ms) of the last entry
    16  i64 beginPhyOffset     phy_offset of the first entry
    24  i64 endPhyOffset       phy_offset of the last entry
    32  i32 hashSlotCount      slots in use
    36  i32 indexCount         next entry index; starts at 1 (entry 0 is never used)
  hash slots, 4 bytes each at 40 + slot * 4:
    i32 index of the newest entry whose key hashes to `slot` (0 = empty)
  entries, 20 bytes each at 40 + max_hash_slots * 4 + index * 20:
    0   i32 keyHash            index_key_hash(key)
    4   i64 phyOffset          CommitLog offset of the message
    12  i32 timeDiff           (store time - beginTimestamp) in SECONDS, clamped to [0, 2^31-1]
    16  i32 prevIndex          previous entry of the same slot (0 = end of chain)
  = 40 + 4 * slots + 20 * entries bytes
key = topic + "#" + key; keyHash = abs(Java String.hashCode(key)), 0 for Integer.MIN_VALUE;
slot = keyHash % max_hash_slots. Entries store only the hash: a query can return offsets of
other keys with the same hash, so callers check the message's keys (RocketMQ's client does).
Recovery (and a restarting dispatcher): `truncate_beyond(pos)` first undoes a put torn before
its header store, then removes the entries pointing at or past `pos` (index_dispatch_pos, the
point it re-indexes from), newest first, restoring the slot heads from their prevIndex; the
records from `pos` on are then indexed again, so re-indexing is exact.
Geometry: the header does not record the slot and entry counts; `infer_geometry` finds them from
a file's bytes (for `rmqd inspect index` and `rmqd verify`).

Concurrency: one writer process (the dispatcher), any number of readers (`readonly=True`). The
writer stores an entry before its slot and the header last, so a reader never follows a slot to
an unwritten entry; `put_hashes` (the dispatcher's batches) stores a batch's entries, then its
slots, then the header once (with numpy views of the mapping for batches of NUMPY_MIN_ENTRIES or
more; `index_key_hashes` hashes a batch's keys). Readers always read the header from the mapping;
the writer keeps a copy (it is the only one changing it). Not thread-safe (module state:
index_key_hashes' power tables, replaced whole when they grow).
"""
from __future__ import annotations

import array
import collections
import dataclasses
import errno
import itertools
import logging
import operator
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from rmqd.errors import CorruptFileError
from rmqd.store.mapped_file import MappedFile, fsync_dir, remove_stale_tmp_files
from rmqd.store.packing import RunPacker
from rmqd.store.record import MessageRecord, Prop, SysFlag, java_string_hash

log = logging.getLogger("rmqd.store")

INDEX_HEADER = struct.Struct(">qqqqii")
INDEX_HEADER_SIZE = 40
INDEX_SLOT = struct.Struct(">i")
INDEX_SLOT_SIZE = 4
INDEX_ENTRY = struct.Struct(">iqii")
INDEX_ENTRY_SIZE = 20
INVALID_INDEX = 0
MAX_TIME_DIFF_S = 2**31 - 1
INDEX_NAME_LENGTH = 17  # yyyyMMddHHmmssSSS
DEFAULT_MAX_HASH_SLOTS = 5_000_000
DEFAULT_MAX_INDEX_COUNT = 20_000_000
# Index files are sparse; put_hash allocates the header and slots at its first put into a file and
# the entries 1 MiB (~52,000 entries) ahead (MappedFile.reserve): a full disk then fails a put
# with OSError(ENOSPC) instead of killing the dispatcher with SIGBUS.
ENTRY_RESERVE_BYTES = 1 << 20


class IndexPutError(Exception):
    """IndexService.put_hashes stopped by a write error (`cause`, e.g. ENOSPC) after `done` entries."""

    def __init__(self, done: int, cause: OSError) -> None:
        super().__init__(f"index put stopped after {done} entries: {cause}")
        self.done = done
        self.cause = cause


@dataclasses.dataclass(slots=True)
class IndexHeader:
    begin_timestamp_ms: int = 0
    end_timestamp_ms: int = 0
    begin_phy_offset: int = 0
    end_phy_offset: int = 0
    hash_slot_count: int = 0
    index_count: int = 1


def index_file_size(max_hash_slots: int, max_index_count: int) -> int:
    return INDEX_HEADER_SIZE + max_hash_slots * INDEX_SLOT_SIZE + max_index_count * INDEX_ENTRY_SIZE


def build_key(topic: str, key: str) -> str:
    """The indexed string: RocketMQ IndexService.buildKey."""
    return f"{topic}#{key}"


def index_key_hash(key: str) -> int:
    """abs(Java hashCode); Math.abs(Integer.MIN_VALUE) stays negative, and RocketMQ maps it to 0."""
    value = abs(java_string_hash(key))
    return 0 if value > 2**31 - 1 else value


# index_key_hashes: Java hashCode(prefix + key) = hash(prefix) * 31^len(key) + hash(key), and
# hash(key) = sum(key[i] * 31^(len - 1 - i)) = 31^(end - 1) * sum(key[i] * 31^-(start + i)) (mod 2^32) for a
# key at [start, end) of the keys' concatenation: 31 is odd, so it has an inverse mod 2^32. One product
# over all the bytes and one np.add.reduceat per key, whatever the keys' lengths.
_U32 = 1 << 32
_INVERSE_31 = pow(31, -1, _U32)
_powers_31 = np.ones(1, np.uint32)  # 31^n mod 2^32 for n < len; grown by _powers_of_31
_inverse_powers_31 = np.ones(1, np.uint32)  # 31^-n mod 2^32


def _powers(base: int, count: int) -> np.ndarray:
    """base^n mod 2^32 for n in range(count), as uint32 (by doubling: log2(count) numpy calls)."""
    out = np.empty(count, np.uint32)
    out[0] = 1
    done = 1
    while done < count:
        step = min(done, count - done)
        np.multiply(out[:step], np.uint32(pow(base, done, _U32)), out=out[done:done + step])
        done += step
    return out


def _powers_of_31(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(31^n, 31^-n) mod 2^32 for n < at least `count` (tables grown to a power of two, kept)."""
    global _powers_31, _inverse_powers_31
    if len(_powers_31) < count:
        size = 1 << (count - 1).bit_length()
        _powers_31, _inverse_powers_31 = _powers(31, size), _powers(_INVERSE_31, size)
    return _powers_31, _inverse_powers_31


def index_key_hashes(prefix_hashes: np.ndarray, keys: Sequence[bytes]) -> np.ndarray:
    """index_key_hash(prefix + key) of each key, vectorised (the dispatcher's batches; ~40 ns a key).

    keys: non-empty ASCII bytes (Java hashes UTF-16 units: other bytes give other hashes; callers
    take the per-key helpers for those); prefix_hashes: parallel uint32 array of the Java hashCode
    of each key's prefix (e.g. "topic#") mod 2^32. Returns int64 values in [0, 2^31 - 1].
    Keeps two uint32 tables as long as the longest concatenation of keys seen (4 MiB each at most
    for a 1 MiB dispatch chunk of nothing but keys).
    """
    if not keys:
        return np.zeros(0, np.int64)
    joined = np.frombuffer(b"".join(keys), np.uint8)
    lengths = np.fromiter(map(len, keys), np.intp, len(keys))
    ends = np.cumsum(lengths)
    powers, inverse_powers = _powers_of_31(len(joined) + 1)
    hashes = np.add.reduceat(joined * inverse_powers[:len(joined)], ends - lengths, dtype=np.uint32)
    hashes *= powers[ends - 1]
    hashes += np.asarray(prefix_hashes, np.uint32) * powers[lengths]
    signed = hashes.view(np.int32).astype(np.int64)
    np.abs(signed, out=signed)
    signed[signed > 0x7FFFFFFF] = 0  # abs(Integer.MIN_VALUE) is still negative in Java: RocketMQ uses 0
    return signed


def decode_index_header(buf) -> IndexHeader:
    header = IndexHeader(*INDEX_HEADER.unpack_from(buf, 0))
    if header.index_count <= 0:  # as RocketMQ IndexHeader.load
        header.index_count = 1
    return header


def encode_index_header(buf, header: IndexHeader) -> None:
    # Field by field: dataclasses.astuple deep-copies, and was most of a put's cost (docs/BENCHMARKS.md).
    INDEX_HEADER.pack_into(buf, 0, header.begin_timestamp_ms, header.end_timestamp_ms,
                           header.begin_phy_offset, header.end_phy_offset, header.hash_slot_count,
                           header.index_count)


def index_keys_of(record: MessageRecord) -> list[str]:
    """The keys a record is indexed under: UNIQ_KEY, then each KEYS key (space-separated), in order.

    No keys for rolled-back transactional records (RocketMQ CommitLogDispatcherBuildIndex).
    The one place that decides it: the dispatcher, recovery and `rmqd verify` all use it.
    """
    if record.sys_flag & SysFlag.TRANSACTION_MASK == SysFlag.TRANSACTION_ROLLBACK:
        return []
    properties = record.properties
    uniq_key = properties.get(Prop.UNIQ_KEY)
    keys = [uniq_key] if uniq_key else []
    text = properties.get(Prop.KEYS)
    if text:
        keys += [key for key in text.split(Prop.KEY_SEPARATOR) if key]
    return keys


# put_hashes reads and writes the big-endian i32 hash slots through a native-int view of the slot
# table, converting a whole batch at once with array.byteswap (in C) on little-endian machines.
_NATIVE_IS_BIG = sys.byteorder == "big"
# Entries per put_hashes call: the slots of a batch are read, then written; with up to ~1000 of
# them their pages stay in the TLB and caches between the two (4096 at once: 40 % slower per entry).
ENTRIES_PER_PUT = 1024
_ENTRIES = RunPacker(INDEX_ENTRY.format)  # for put_hashes
# put_hashes takes numpy from this many entries on: below, its ~30 array operations (~20 us a call)
# cost more than the list path (~0.4 us an entry); above, ~40 ns an entry (measured crossover: ~56).
NUMPY_MIN_ENTRIES = 64
ENTRIES_PER_NUMPY_PUT = 1 << 14  # bounds the temporary arrays (the dispatcher's 1 MiB chunks: ~8000 keys)
_SLOT_DTYPE = np.dtype(">i4")  # INDEX_SLOT
_ENTRY_DTYPE = np.dtype([("key_hash", ">i4"), ("phy_offset", ">i8"), ("time_diff_s", ">i4"),
                         ("prev_index", ">i4")])  # INDEX_ENTRY: packed, 20 bytes


def _from_big_endian(values: list[int]) -> list[int]:
    if _NATIVE_IS_BIG:
        return values
    converted = array.array("i", values)
    converted.byteswap()
    return converted.tolist()


def _to_big_endian(values: Iterable[int]) -> Iterable[int]:
    if _NATIVE_IS_BIG:
        return values
    converted = array.array("i", values)
    converted.byteswap()
    return converted


def _chain_within_batch(slots: list[int], prevs: list[int], first_index: int) -> None:
    """Set prevs[k] to the batch's previous entry of the same slot, where there is one."""
    count = len(slots)
    firsts = dict(zip(reversed(slots), range(first_index + count - 1, first_index - 1, -1)))
    later = itertools.compress(range(count), map(operator.ne, map(firsts.__getitem__, slots),
                                                 range(first_index, first_index + count)))
    newest: dict[int, int] = {}
    for k in later:  # only the entries whose slot an earlier entry of the batch has: few
        slot = slots[k]
        prevs[k] = newest.get(slot) or firsts[slot]
        newest[slot] = first_index + k


def _time_diffs(store_ms: Sequence[int], begin_ms: int) -> list[int]:
    """timeDiff of each entry: seconds since the file's begin, clamped to [0, MAX_TIME_DIFF_S]."""
    if begin_ms <= 0:
        return [0] * len(store_ms)
    diffs = [(ms - begin_ms) // 1000 for ms in store_ms]
    if min(diffs) < 0 or max(diffs) > MAX_TIME_DIFF_S:
        diffs = [min(max(diff, 0), MAX_TIME_DIFF_S) for diff in diffs]
    return diffs


def _time_diff_array(store_ms: np.ndarray, begin_ms: int) -> np.ndarray:
    """_time_diffs for an int64 array (numpy's // floors, as Python's)."""
    if begin_ms <= 0:
        return np.zeros(len(store_ms), np.int64)
    return np.clip((store_ms - begin_ms) // 1000, 0, MAX_TIME_DIFF_S)


def _as_list(values: Sequence[int]) -> list[int]:
    if isinstance(values, list):
        return values
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def index_file_name(now_ms: int) -> str:
    """yyyyMMddHHmmssSSS in local time."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(now_ms // 1000)) + f"{now_ms % 1000:03d}"


class IndexFile:
    """One index file, mapped.

    A writable IndexFile keeps its header in memory (`_header`): the writer is the only process
    that changes it, so re-decoding 40 bytes per put (the dispatcher's hot path) is wasted work.
    It still stores the header to the mapping after every put, for readers.
    """

    def __init__(self, mapped: MappedFile, max_hash_slots: int, max_index_count: int) -> None:
        self.mapped = mapped
        self.path = mapped.path
        self.max_hash_slots = max_hash_slots
        self.max_index_count = max_index_count
        self._entries_pos = INDEX_HEADER_SIZE + max_hash_slots * INDEX_SLOT_SIZE
        self._header: IndexHeader | None = None
        self._reserved_end = 0  # file position up to which put_hash allocated blocks (writer only)
        if not mapped.readonly:
            self._header = decode_index_header(mapped.mv)

    @classmethod
    def create(cls, path: str, max_hash_slots: int, max_index_count: int, begin_phy_offset: int = 0,
               begin_timestamp_ms: int = 0) -> IndexFile:
        """A new sparse file; begin fields start at the previous file's end (RocketMQ does the same)."""
        size = index_file_size(max_hash_slots, max_index_count)
        index_file = cls(MappedFile.create(path, size, sparse=True), max_hash_slots, max_index_count)
        index_file._reserve(index_file._entry_pos(1))  # before the header store (OSError, not SIGBUS)
        if index_file.header().index_count <= 1:
            index_file._store_header(IndexHeader(
                begin_timestamp_ms, begin_timestamp_ms, begin_phy_offset, begin_phy_offset, 0, 1))
        return index_file

    @classmethod
    def open(cls, path: str, max_hash_slots: int, max_index_count: int, *, readonly: bool) -> IndexFile:
        size = index_file_size(max_hash_slots, max_index_count)
        return cls(MappedFile.open(path, size, readonly=readonly), max_hash_slots, max_index_count)

    def header(self) -> IndexHeader:
        """The header as stored in the mapping (a fresh object: callers may keep or change it)."""
        return decode_index_header(self.mapped.mv)

    def _live_header(self) -> IndexHeader:
        """The writer's cached header (changed in place, then stored); readers decode the mapping."""
        return self._header if self._header is not None else self.header()

    def _store_header(self, header: IndexHeader) -> None:
        encode_index_header(self.mapped.mv, header)
        if self._header is not None:
            self._header = header

    def end_phy_offset(self) -> int | None:
        """phy_offset of the newest entry, None if the file has no entry."""
        header = self._live_header()
        return header.end_phy_offset if header.index_count > 1 else None

    def is_full(self) -> bool:
        return self._live_header().index_count >= self.max_index_count

    def _slot_pos(self, key_hash: int) -> int:
        return INDEX_HEADER_SIZE + (key_hash % self.max_hash_slots) * INDEX_SLOT_SIZE

    def _entry_pos(self, index: int) -> int:
        return self._entries_pos + index * INDEX_ENTRY_SIZE

    def put_key(self, key: str, phy_offset: int, store_timestamp_ms: int) -> bool:
        """Append an entry for `key` (already topic#key); False when the file is full."""
        return self.put_hash(index_key_hash(key), phy_offset, store_timestamp_ms)

    def put_hash(self, key_hash: int, phy_offset: int, store_timestamp_ms: int) -> bool:
        """Append an entry for a key whose `index_key_hash` is `key_hash`; False when the file is full.

        Raises OSError (ENOSPC) before writing anything when the disk has no room for the entry.
        """
        header = self._live_header()
        index = header.index_count
        if index >= self.max_index_count:
            return False
        entry_pos = self._entries_pos + index * INDEX_ENTRY_SIZE
        if entry_pos + INDEX_ENTRY_SIZE > self._reserved_end:
            self._reserve(entry_pos)  # OSError: nothing written
        mv = self.mapped.mv
        slot_pos = INDEX_HEADER_SIZE + (key_hash % self.max_hash_slots) * INDEX_SLOT_SIZE  # inlined: hot
        (prev,) = INDEX_SLOT.unpack_from(mv, slot_pos)
        if prev <= INVALID_INDEX or prev > index:
            prev = INVALID_INDEX
        if index <= 1:
            # RocketMQ sets begin* after computing the first entry's time diff (against the previous
            # file's end); setting them first makes that diff 0, i.e. exact. The layout is the same.
            header.begin_phy_offset, header.begin_timestamp_ms = phy_offset, store_timestamp_ms
        time_diff_s = 0
        if header.begin_timestamp_ms > 0:
            time_diff_s = (store_timestamp_ms - header.begin_timestamp_ms) // 1000
            time_diff_s = min(max(time_diff_s, 0), MAX_TIME_DIFF_S)
        INDEX_ENTRY.pack_into(mv, entry_pos, key_hash, phy_offset, time_diff_s, prev)
        INDEX_SLOT.pack_into(mv, slot_pos, index)
        header.hash_slot_count += prev == INVALID_INDEX
        header.index_count = index + 1
        header.end_phy_offset, header.end_timestamp_ms = phy_offset, store_timestamp_ms
        encode_index_header(mv, header)  # header last: readers never follow a slot past index_count
        return True

    def put_hashes(self, key_hashes: Sequence[int], phy_offsets: Sequence[int], store_ms: Sequence[int],
                   start: int) -> int:
        """Append entries start.. of the three parallel sequences (lists or numpy arrays), as many as
        fit; returns where it stopped.

        The batch form of `put_hash` (the dispatcher's hot path, dispatch.py), with the same bytes as
        that many put_hash calls: prev = the slot's value (validated the same way), and a slot hit
        twice chains within the batch. Entries first, then the slots, then the header once, so a
        reader never follows a slot past index_count. Raises OSError (ENOSPC) before writing anything
        when the disk has no room for the entries. Batches of NUMPY_MIN_ENTRIES or more are put with
        numpy (`_put_arrays`, up to ENTRIES_PER_NUMPY_PUT at once), smaller ones with lists
        (`_put_lists`, up to ENTRIES_PER_PUT): numpy's per-call cost is ~1 us per operation.
        """
        header = self._live_header()
        first = header.index_count
        count = min(len(key_hashes) - start, self.max_index_count - first)
        count = min(count, ENTRIES_PER_NUMPY_PUT if count >= NUMPY_MIN_ENTRIES else ENTRIES_PER_PUT)
        if count <= 0:
            return start
        stop = start + count
        first_pos = self._entries_pos + first * INDEX_ENTRY_SIZE
        if first_pos + count * INDEX_ENTRY_SIZE > self._reserved_end:
            self._reserve(first_pos, first_pos + count * INDEX_ENTRY_SIZE)  # OSError: nothing written
        if first <= 1:  # as put_hash: begin* from the file's first entry
            header.begin_phy_offset, header.begin_timestamp_ms = int(phy_offsets[start]), int(store_ms[start])
        if count >= NUMPY_MIN_ENTRIES:
            self._put_arrays(header, *(np.asarray(values[start:stop], np.int64)
                                       for values in (key_hashes, phy_offsets, store_ms)))
        else:
            self._put_lists(header, _as_list(key_hashes[start:stop]), _as_list(phy_offsets[start:stop]),
                            _as_list(store_ms[start:stop]))
        header.index_count = first + count
        header.end_phy_offset, header.end_timestamp_ms = int(phy_offsets[stop - 1]), int(store_ms[stop - 1])
        encode_index_header(self.mapped.mv, header)  # header last: readers never follow a slot past it
        return stop

    def _put_lists(self, header: IndexHeader, hashes: list[int], phy_offsets: list[int],
                   store_ms: list[int]) -> None:
        """put_hashes' entries and slots for a small batch, at header.index_count; adds hash_slot_count."""
        first, count = header.index_count, len(hashes)
        # Per entry work in C (map, dict, slices, struct): this runs for every key of every message.
        max_slots = self.max_hash_slots
        slots = [key_hash % max_slots for key_hash in hashes]
        indexes = range(first, first + count)
        with self.mapped.mv[INDEX_HEADER_SIZE:self._entries_pos].cast("i") as slot_view:
            prevs = _from_big_endian(list(map(slot_view.__getitem__, slots)))
            if min(prevs) < INVALID_INDEX or max(prevs) >= first:  # as put_hash: 0 unless in 1..index
                prevs = [prev if INVALID_INDEX < prev <= index else INVALID_INDEX
                         for prev, index in zip(prevs, indexes)]
            heads = dict(zip(slots, indexes))  # each slot's newest entry (the last one wins)
            if len(heads) < count:  # a slot hit twice: the later entry's prev is the earlier one
                _chain_within_batch(slots, prevs, first)
            entries = [0] * (4 * count)
            entries[0::4] = hashes
            entries[1::4] = phy_offsets
            entries[2::4] = _time_diffs(store_ms, header.begin_timestamp_ms)
            entries[3::4] = prevs
            _ENTRIES.pack(self.mapped.mv, self._entry_pos(first), entries, 0, count)
            collections.deque(map(slot_view.__setitem__, heads, _to_big_endian(heads.values())), maxlen=0)
        header.hash_slot_count += prevs.count(INVALID_INDEX)

    def _put_arrays(self, header: IndexHeader, hashes: np.ndarray, phy_offsets: np.ndarray,
                    store_ms: np.ndarray) -> None:
        """put_hashes' entries and slots with numpy (int64 arrays), at header.index_count; adds
        hash_slot_count. The views of the mapping are local: nothing holds the mapping after it."""
        first, count = header.index_count, len(hashes)
        mv = self.mapped.mv
        slot_table = np.frombuffer(mv, _SLOT_DTYPE, self.max_hash_slots, INDEX_HEADER_SIZE)
        indexes = np.arange(first, first + count, dtype=np.int64)
        slots = hashes % self.max_hash_slots
        prevs = slot_table[slots].astype(np.int64)
        prevs[(prevs <= INVALID_INDEX) | (prevs > indexes)] = INVALID_INDEX  # as put_hash
        # Sort by (slot, position): equal neighbours are a slot hit twice, the later chains to the earlier.
        by_slot = np.sort(slots * count + np.arange(count))
        sorted_slots, positions = np.divmod(by_slot, count)
        repeated = sorted_slots[1:] == sorted_slots[:-1]
        prevs[positions[1:][repeated]] = positions[:-1][repeated] + first
        entries = np.frombuffer(mv, _ENTRY_DTYPE, count, self._entry_pos(first))
        entries["key_hash"] = hashes
        entries["phy_offset"] = phy_offsets
        entries["time_diff_s"] = _time_diff_array(store_ms, header.begin_timestamp_ms)
        entries["prev_index"] = prevs
        newest = np.append(~repeated, True)  # the last entry of each slot becomes its head
        slot_table[sorted_slots[newest]] = positions[newest] + first
        header.hash_slot_count += int(np.count_nonzero(prevs == INVALID_INDEX))

    def _reserve(self, entry_pos: int, end_pos: int = 0) -> None:
        """Allocate blocks for entries from entry_pos (to at least end_pos, 1 MiB ahead)."""
        if not self._reserved_end:  # first put through this object: the header and every slot
            self.mapped.reserve(0, self._entries_pos)
        end = max(end_pos, entry_pos + ENTRY_RESERVE_BYTES)
        self.mapped.reserve(entry_pos, end)
        self._reserved_end = end

    def is_time_matched(self, begin_ms: int, end_ms: int) -> bool:
        """Whether [begin_ms, end_ms] overlaps this file's time range (RocketMQ isTimeMatched)."""
        header = self.header()
        first, last = header.begin_timestamp_ms, header.end_timestamp_ms
        return (begin_ms < first and end_ms > last) or first <= begin_ms <= last or first <= end_ms <= last

    def select(self, key: str, max_num: int, begin_ms: int, end_ms: int, out: list[int]) -> None:
        """Append to `out` phy_offsets of entries with `key`'s hash in the time range, newest first."""
        header = self.header()
        mv = self.mapped.mv
        key_hash = index_key_hash(key)
        (index,) = INDEX_SLOT.unpack_from(mv, self._slot_pos(key_hash))
        if index <= INVALID_INDEX or index > header.index_count or header.index_count <= 1:
            return
        while len(out) < max_num:
            hash_read, phy_offset, time_diff_s, prev = INDEX_ENTRY.unpack_from(mv, self._entry_pos(index))
            if time_diff_s < 0:
                break
            time_read = header.begin_timestamp_ms + time_diff_s * 1000
            if hash_read == key_hash and begin_ms <= time_read <= end_ms:
                out.append(phy_offset)
            if prev <= INVALID_INDEX or prev > header.index_count or prev == index or time_read < begin_ms:
                break
            index = prev

    def repair_torn_put(self) -> bool:
        """Undo a put cut short before its header store (the writer was killed); True if one was.

        A put stores the entry at index_count (with prev = the old slot head), then the slot, then
        the header. Killed in between, the entry and maybe the slot point past index_count; the
        next put would overwrite that entry and leave the slot's chain unreachable (or looping).
        """
        header = self._live_header()
        index = header.index_count
        if index >= self.max_index_count:
            return False
        mv = self.mapped.mv
        entry_pos = self._entry_pos(index)
        if not any(mv[entry_pos:entry_pos + INDEX_ENTRY_SIZE]):
            return False
        key_hash, _, _, prev = INDEX_ENTRY.unpack_from(mv, entry_pos)
        slot_pos = self._slot_pos(key_hash)
        if INDEX_SLOT.unpack_from(mv, slot_pos)[0] == index:
            INDEX_SLOT.pack_into(mv, slot_pos, prev if INVALID_INDEX < prev < index else INVALID_INDEX)
        mv[entry_pos:entry_pos + INDEX_ENTRY_SIZE] = bytes(INDEX_ENTRY_SIZE)
        log.warning("%s: undid the torn put of entry %d (its header was never stored)", self.path, index)
        return True

    def truncate_beyond(self, phy_end: int) -> int:
        """Remove entries with phyOffset >= phy_end (newest first, restoring slot heads); returns count.

        A torn put past the header's index_count is undone first (and not counted).
        """
        self.repair_torn_put()
        header = self._live_header()
        mv = self.mapped.mv
        removed = 0
        index = header.index_count - 1
        while index > INVALID_INDEX:
            key_hash, phy_offset, _, prev = INDEX_ENTRY.unpack_from(mv, self._entry_pos(index))
            if phy_offset < phy_end:
                break
            slot_pos = self._slot_pos(key_hash)
            if INDEX_SLOT.unpack_from(mv, slot_pos)[0] == index:
                INDEX_SLOT.pack_into(mv, slot_pos, prev)
                header.hash_slot_count -= prev == INVALID_INDEX
            mv[self._entry_pos(index):self._entry_pos(index + 1)] = bytes(INDEX_ENTRY_SIZE)
            removed += 1
            index -= 1
        if removed:
            header.index_count = index + 1
            if index > INVALID_INDEX:
                _, phy_offset, time_diff_s, _ = INDEX_ENTRY.unpack_from(mv, self._entry_pos(index))
                header.end_phy_offset = phy_offset
                header.end_timestamp_ms = header.begin_timestamp_ms + time_diff_s * 1000
            else:
                header.end_phy_offset = header.begin_phy_offset
                header.end_timestamp_ms = header.begin_timestamp_ms
            self._store_header(header)
        return removed

    def entries(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(index, key_hash, phy_offset, time_diff_s, prev_index) of entries 1..index_count-1, in order."""
        count = self.header().index_count
        start = self._entry_pos(1)
        view = self.mapped.mv[start:self._entry_pos(max(count, 1))]
        for index, entry in enumerate(INDEX_ENTRY.iter_unpack(view), 1):
            yield (index, *entry)

    def used_slots(self) -> Iterator[tuple[int, int]]:
        """(slot, head index) of every non-empty slot."""
        view = self.mapped.mv[INDEX_HEADER_SIZE:self._entries_pos]
        for slot, (head,) in enumerate(INDEX_SLOT.iter_unpack(view)):
            if head:
                yield slot, head

    def flush(self) -> None:
        self.mapped.flush(0, self.mapped.file_size)

    def close(self) -> None:
        self.mapped.close()


class IndexService:
    """All index files of a store: put keys into the newest, query newest to oldest, roll when full.

    put_key/build_for_record/truncate_beyond/flush are for the single writer; query for anyone.
    """

    def __init__(self, store_dir: str, *, max_hash_slots: int = DEFAULT_MAX_HASH_SLOTS,
                 max_index_count: int = DEFAULT_MAX_INDEX_COUNT, readonly: bool) -> None:
        self.dir = os.path.join(store_dir, "index")
        self.max_hash_slots = max_hash_slots
        self.max_index_count = max_index_count
        self.readonly = readonly
        self.files: list[IndexFile] = []
        self._dirty: list[IndexFile] = []  # written since the last flush (two after a roll)
        if not readonly:
            os.makedirs(self.dir, exist_ok=True)
            remove_stale_tmp_files(self.dir)
        self.refresh()

    def refresh(self) -> None:
        """Map index files created by the writer since, unmap deleted ones."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if len(n) == INDEX_NAME_LENGTH and n.isdigit())
        except FileNotFoundError:
            names = []
        known = {os.path.basename(f.path): f for f in self.files}
        for name in set(known) - set(names):
            known[name].close()
        self.files = [known.get(name) or self._open(name) for name in names]

    def _open(self, name: str) -> IndexFile:
        return IndexFile.open(os.path.join(self.dir, name), self.max_hash_slots, self.max_index_count,
                              readonly=self.readonly)

    def _writable_last(self) -> IndexFile:
        if self.files and not self.files[-1].is_full():
            return self.files[-1]
        begin_phy = begin_ms = 0
        if self.files:
            last = self.files[-1].header()
            begin_phy, begin_ms = last.end_phy_offset, last.end_timestamp_ms
        now_ms = time.time_ns() // 1_000_000
        name = index_file_name(now_ms)
        while self.files and name <= os.path.basename(self.files[-1].path):
            now_ms += 1  # two files within one millisecond (or a clock step back): keep names ordered
            name = index_file_name(now_ms)
        created = IndexFile.create(os.path.join(self.dir, name), self.max_hash_slots, self.max_index_count,
                                   begin_phy, begin_ms)
        log.info("created index file %s", created.path)
        self.files.append(created)
        return created

    def put_key(self, topic: str, key: str, phy_offset: int, store_timestamp_ms: int) -> bool:
        """Index `topic#key` -> phy_offset in the newest file (rolling to a new file when full)."""
        return self._put_hash(index_key_hash(build_key(topic, key)), phy_offset, store_timestamp_ms)

    def _put_hash(self, key_hash: int, phy_offset: int, store_timestamp_ms: int) -> bool:
        return self._file_for_put().put_hash(key_hash, phy_offset, store_timestamp_ms)

    def _file_for_put(self) -> IndexFile:
        """The newest file with room (rolling when full), noted as dirty for the next flush."""
        index_file = self._writable_last()
        if not self._dirty or self._dirty[-1] is not index_file:
            self._dirty.append(index_file)
        return index_file

    def newest_end_phy_offset(self) -> int | None:
        """endPhyOffset of the newest file, None if it has no entry: records at or below are indexed."""
        return self.files[-1].end_phy_offset() if self.files else None

    def put_hashes(self, key_hashes: Sequence[int], phy_offsets: Sequence[int],
                   store_ms: Sequence[int]) -> None:
        """Append one entry per element of the parallel lists, in order, rolling to new files as
        `put_hash` would (the dispatcher's batch path; the hashes are `index_key_hash` values).

        Raises IndexPutError when the disk has no room: entries before its `done` stay written.
        """
        done = 0
        while done < len(key_hashes):
            try:
                put_upto = self._file_for_put().put_hashes(key_hashes, phy_offsets, store_ms, done)
            except OSError as exc:
                raise IndexPutError(done, exc) from exc
            if put_upto == done:  # a new file without room (max_index_count <= 1): as put_hash, drop
                break
            done = put_upto

    def build_for_record(self, phy_offset: int, record: MessageRecord) -> int:
        """Index the record's keys (`index_keys_of`); returns the number of keys put.

        Records at or below the newest file's endPhyOffset are skipped (already indexed: a safety
        net; recovery and the dispatcher cut the entries past their resume point before
        re-indexing). About 2 us per key: the dispatcher and recovery index through
        `put_hashes` (dispatch.py) and use this per record only after a ConsumeQueue write error.
        """
        keys = index_keys_of(record)
        if not keys:
            return 0
        if self.files:
            newest = self.files[-1].end_phy_offset()
            if newest is not None and phy_offset <= newest:
                return 0
        prefix = record.topic + "#"  # build_key, inlined
        store_ms = record.store_timestamp_ms
        index_file = self._file_for_put()  # once per record, not per key: this is the hot path
        for key in keys:
            key_hash = index_key_hash(prefix + key)
            if not index_file.put_hash(key_hash, phy_offset, store_ms):
                index_file = self._file_for_put()  # that file is full: roll to a new one
                index_file.put_hash(key_hash, phy_offset, store_ms)
        return len(keys)

    def query(self, topic: str, key: str, max_num: int = 64, begin_ms: int = 0,
              end_ms: int = 2**63 - 1) -> list[int]:
        """phy_offsets indexed under topic#key in [begin_ms, end_ms], newest first, across files.

        May include offsets of other keys with the same hash: check the records' keys.
        """
        if self.readonly:
            self.refresh()
        found: list[int] = []
        full_key = build_key(topic, key)
        for index_file in reversed(self.files):
            if index_file.is_time_matched(begin_ms, end_ms):
                index_file.select(full_key, max_num, begin_ms, end_ms, found)
            if len(found) >= max_num or index_file.header().begin_timestamp_ms < begin_ms:
                break
        return found

    def last_update(self) -> tuple[int, int]:
        """(endTimestamp ms, endPhyOffset) of the newest file: how far the index reaches; (0, 0) if empty."""
        if not self.files:
            return 0, 0
        header = self.files[-1].header()
        return header.end_timestamp_ms, header.end_phy_offset

    def truncate_beyond(self, phy_end: int) -> int:
        """Remove entries pointing at or past `phy_end` (only newest files); returns count.

        Recovery and a restarting dispatcher pass the position they re-index from."""
        removed = 0
        for index_file in reversed(self.files):
            removed += index_file.truncate_beyond(phy_end)
            if index_file.header().begin_phy_offset < phy_end:
                break
        return removed

    def delete_files_before(self, min_phy: int) -> int:
        """Delete files whose every entry points below `min_phy` (never the newest); returns count."""
        deleted = 0
        while len(self.files) > 1 and self.files[0].header().end_phy_offset < min_phy:
            index_file = self.files.pop(0)
            self._dirty = [f for f in self._dirty if f is not index_file]
            index_file.close()
            os.unlink(index_file.path)
            deleted += 1
        if deleted:
            fsync_dir(self.dir)
        return deleted

    def flush(self) -> None:
        """msync the files written since the last flush."""
        for mapped, start, end in self.take_flush_ranges():
            mapped.flush(start, end)

    def take_flush_ranges(self) -> list[tuple[MappedFile, int, int]]:
        """(mapping, 0, size) of every file written since the last flush, to msync now (here or in
        a flushing thread); they count as flushed from here on."""
        ranges = [(f.mapped, 0, f.mapped.file_size) for f in self._dirty if f in self.files]
        self._dirty = []
        return ranges

    def close(self) -> None:
        for index_file in self.files:
            index_file.close()
        self.files = []


def infer_geometry(path: str) -> tuple[int, int] | None:
    """(max_hash_slots, max_index_count) of an existing index file; None if it has no entry yet.

    RocketMQ's header does not record them, so `rmqd inspect`/`verify` find them from the bytes:
    the newest entry (index_count - 1) holds the file's last non-zero byte (or the one before a
    torn put) and points at endPhyOffset, and entry 1 at beginPhyOffset. RocketMQ's ratio of 4
    entries per slot is tried first. Raises CorruptFileError if no geometry fits.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = decode_index_header(f.read(INDEX_HEADER_SIZE))
        count = header.index_count
        if count <= 1:
            return None
        candidates = []
        if (size - INDEX_HEADER_SIZE) % (INDEX_SLOT_SIZE + 4 * INDEX_ENTRY_SIZE) == 0:
            candidates.append((size - INDEX_HEADER_SIZE) // (INDEX_SLOT_SIZE + 4 * INDEX_ENTRY_SIZE))
        last = _last_non_zero_byte(f.fileno(), size)
        for newest in (count - 1, count):
            low = last - INDEX_HEADER_SIZE - (newest + 1) * INDEX_ENTRY_SIZE + 1
            candidates += [slots_bytes // INDEX_SLOT_SIZE for slots_bytes in range(max(low, 4), low + 20)
                           if slots_bytes % INDEX_SLOT_SIZE == 0]
        for slots in candidates:
            entries_bytes = size - INDEX_HEADER_SIZE - slots * INDEX_SLOT_SIZE
            if entries_bytes % INDEX_ENTRY_SIZE or entries_bytes // INDEX_ENTRY_SIZE < count:
                continue
            entries_pos = INDEX_HEADER_SIZE + slots * INDEX_SLOT_SIZE
            first = INDEX_ENTRY.unpack(os.pread(f.fileno(), INDEX_ENTRY_SIZE, entries_pos + INDEX_ENTRY_SIZE))
            newest_entry = INDEX_ENTRY.unpack(
                os.pread(f.fileno(), INDEX_ENTRY_SIZE, entries_pos + (count - 1) * INDEX_ENTRY_SIZE))
            if first[1] == header.begin_phy_offset and newest_entry[1] == header.end_phy_offset:
                return slots, entries_bytes // INDEX_ENTRY_SIZE
    raise CorruptFileError(path, 0, "index file geometry",
                           f"hash slots and entries matching endPhyOffset {header.end_phy_offset}",
                           f"none of {len(candidates)} candidates")


def _last_non_zero_byte(fd: int, size: int, chunk_size: int = 1 << 16) -> int:
    """Position of the last non-zero byte (-1 if none); skips holes of sparse files (SEEK_HOLE)."""
    data_end = size
    try:
        pos, data_end = 0, 0
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            pos = data_end = os.lseek(fd, start, os.SEEK_HOLE)
    except OSError as err:
        if err.errno != errno.ENXIO:  # ENXIO: no data past pos; anything else: no SEEK_DATA here
            data_end = size
    end = data_end
    while end > 0:
        start = max(0, end - chunk_size)
        chunk = os.pread(fd, end - start, start).rstrip(b"\0")
        if chunk:
            return start + len(chunk) - 1
        end = start
    return -1


def describe_file(path: str, limit: int = 50, *, max_hash_slots: int | None = None,
                  max_index_count: int | None = None) -> dict:
    """Header and the first `limit` entries of an index file (for `rmqd inspect index`).

    Without explicit sizes they are inferred from the file (`infer_geometry`).
    """
    if max_hash_slots is None or max_index_count is None:
        geometry = infer_geometry(path)
        if geometry is None:  # no entry: any geometry shows the same header
            size = os.path.getsize(path)
            geometry = ((size - INDEX_HEADER_SIZE) // INDEX_SLOT_SIZE, 0)
        max_hash_slots, max_index_count = geometry
    index_file = IndexFile.open(path, max_hash_slots, max_index_count, readonly=True)
    try:
        header = index_file.header()
        entries = []
        for index in range(1, min(header.index_count, limit + 1)):
            key_hash, phy_offset, time_diff_s, prev = INDEX_ENTRY.unpack_from(
                index_file.mapped.mv, index_file._entry_pos(index))
            entries.append({"index": index, "key_hash": key_hash, "phy_offset": phy_offset,
                            "time_diff_s": time_diff_s, "prev_index": prev,
                            "store_time_ms": header.begin_timestamp_ms + time_diff_s * 1000})
        return {"path": path, "max_hash_slots": max_hash_slots, "max_index_count": max_index_count,
                "header": dataclasses.asdict(header), "entries": entries}
    finally:
        index_file.close()
