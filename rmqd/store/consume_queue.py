"""ConsumeQueue: the per-(topic, queue_id) index of CommitLog records, one fixed-size unit each.

Path:  {store_dir}/consumequeue/{topic}/{queue_id}/{file_start_byte:020d}
       file_start_byte = first queue_offset of the file * 20; files are `file_size` bytes
       (RocketMQ mappedFileSizeConsumeQueue, default 300,000 units = 6,000,000 bytes).
Unit (RocketMQ ConsumeQueue CQ_STORE_UNIT_SIZE, big-endian, 20 bytes), at file_pos = queue_offset*20
       minus the file start; written only by the dispatcher (and recovery), in queue_offset order:
  0                8          12               20
  +----------------+----------+----------------+
  | phy_offset     | size     | tags_hash      |
  | int64          | int32    | int64          |
  +----------------+----------+----------------+
  = 8 + 4 + 8 = 20 bytes
  phy_offset: the record's CommitLog offset; size: its TOTALSIZE; tags_hash: Java hashCode of the
  TAGS property (0 without tags), or the delivery time in ms for the delay topic (see dispatch.py).
Files are created sparse at full size (zeros), so an all-zero unit (size 0) ends the valid data.
The dispatcher writes runs of consecutive units with `put_units` (one struct call per up to 256
units); `put` writes one.
Recovery (`truncate_beyond`): zero, in place, every unit whose phy_offset + size passes the
CommitLog end, and delete files left with no valid unit; units are re-put from the CommitLog.

Concurrency: one writer process (the dispatcher; recovery before it starts); any number of
readers (`readonly=True`, they refresh to see new files). Not thread-safe. ConsumeQueueStore
keeps at most `max_open` queues mapped (vm.max_map_count is 65530); do not keep a ConsumeQueue
obtained from it across later `get()` calls, it may have been closed.
"""
from __future__ import annotations

import collections
import logging
import os
import struct
from collections.abc import Callable, Sequence

from rmqd.store.mapped_file import MappedFile
from rmqd.store.mapped_file_queue import MappedFileQueue
from rmqd.store.packing import RunPacker

log = logging.getLogger("rmqd.store")

CQ_UNIT = struct.Struct(">qiq")
CQ_UNIT_SIZE = 20
CQ_SIZE = struct.Struct(">i")  # the size field alone, at unit position + 8
CQ_SIZE_POS = 8
DEFAULT_CQ_FILE_SIZE = 300_000 * CQ_UNIT_SIZE
DEFAULT_MAX_OPEN_QUEUES = 512  # each open queue holds >= 1 mapping (and 1 fd); see module docstring
# Files are sparse: put() allocates blocks 64 KiB (3,276 units) ahead (MappedFile.reserve), so a
# full disk fails a put with OSError(ENOSPC) instead of killing the dispatcher with SIGBUS.
UNIT_RESERVE_BYTES = 64 << 10
_UNITS = RunPacker(CQ_UNIT.format)  # for put_units


class ConsumeQueue:
    """The unit files of one (topic, queue_id)."""

    def __init__(self, store_dir: str, topic: str, queue_id: int, file_size: int = DEFAULT_CQ_FILE_SIZE, *,
                 readonly: bool) -> None:
        if file_size <= 0 or file_size % CQ_UNIT_SIZE:
            raise ValueError(
                f"ConsumeQueue file size {file_size} must be a positive multiple of {CQ_UNIT_SIZE}")
        self.topic = topic
        self.queue_id = queue_id
        self.file_size = file_size
        self.units_per_file = file_size // CQ_UNIT_SIZE
        self.readonly = readonly
        self.dir = os.path.join(store_dir, "consumequeue", topic, str(queue_id))
        self.queue = MappedFileQueue(self.dir, file_size, readonly=readonly, sparse=True)
        self._current: MappedFile | None = None
        self._reserved = (0, 0)  # queue byte range of _current whose blocks put() allocated
        self._dirty_start = self._dirty_end = 0  # byte range put since the last flush

    # ---- write ------------------------------------------------------------------------------

    def put(self, queue_offset: int, phy_offset: int, size: int, tags_hash: int) -> None:
        """Write the unit of `queue_offset` (overwrites: re-putting the same unit is harmless).

        Raises OSError (ENOSPC) before writing when the disk has no room for the unit's block.
        """
        byte = queue_offset * CQ_UNIT_SIZE
        mapped = self._current
        if mapped is None or not 0 <= byte - mapped.start_offset < self.file_size:
            mapped = self._current = self.queue.get_or_create(byte - byte % self.file_size)
            self._reserved = (0, 0)
        if not self._reserved[0] <= byte < self._reserved[1]:
            file_pos = byte - mapped.start_offset
            mapped.reserve(file_pos, file_pos + UNIT_RESERVE_BYTES)
            self._reserved = (byte, min(byte + UNIT_RESERVE_BYTES, mapped.start_offset + self.file_size))
        CQ_UNIT.pack_into(mapped.mv, byte - mapped.start_offset, phy_offset, size, tags_hash)
        if self._dirty_end == self._dirty_start:
            self._dirty_start, self._dirty_end = byte, byte + CQ_UNIT_SIZE
        else:
            self._dirty_start = min(self._dirty_start, byte)
            self._dirty_end = max(self._dirty_end, byte + CQ_UNIT_SIZE)

    def put_units(self, queue_offset: int, units: Sequence[int]) -> None:
        """Write consecutive units from `queue_offset`; `units` is flat (phy_offset, size, tags_hash) * n.

        The dispatcher's batch path (dispatch.py): per file touched, one block reservation check,
        one dirty-range update and one struct call per up to 256 units, instead of per unit.
        Same bytes as `put` per unit. Raises OSError (ENOSPC) before writing a file's part when the
        disk has no room for its blocks (parts in earlier files stay written: re-putting is harmless).
        """
        byte = queue_offset * CQ_UNIT_SIZE
        end = byte + len(units) // 3 * CQ_UNIT_SIZE
        done = 0
        while byte < end:
            mapped = self._current
            if mapped is None or not 0 <= byte - mapped.start_offset < self.file_size:
                mapped = self._current = self.queue.get_or_create(byte - byte % self.file_size)
                self._reserved = (0, 0)
            file_end = mapped.start_offset + self.file_size
            part_end = min(end, file_end)
            if not (self._reserved[0] <= byte and part_end <= self._reserved[1]):
                reserve_end = min(max(part_end, byte + UNIT_RESERVE_BYTES), file_end)
                mapped.reserve(byte - mapped.start_offset, reserve_end - mapped.start_offset)
                self._reserved = (byte, reserve_end)
            count = (part_end - byte) // CQ_UNIT_SIZE
            _UNITS.pack(mapped.mv, byte - mapped.start_offset, units, done, count)
            done += count
            if self._dirty_end == self._dirty_start:
                self._dirty_start, self._dirty_end = byte, part_end
            else:
                self._dirty_start = min(self._dirty_start, byte)
                self._dirty_end = max(self._dirty_end, part_end)
            byte = part_end

    def flush(self) -> None:
        """msync the units put since the last flush."""
        for mapped, start, end in self.take_flush_ranges():
            mapped.flush(start, end)

    def take_flush_ranges(self) -> list[tuple[MappedFile, int, int]]:
        """The file ranges put since the last flush, to msync now (here or in a flushing thread);
        the queue counts them as flushed from here on."""
        ranges = self.queue.flush_ranges(self._dirty_start, self._dirty_end) \
            if self._dirty_end > self._dirty_start else []
        self._dirty_start = self._dirty_end = 0
        return ranges

    # ---- read -------------------------------------------------------------------------------

    def _find(self, queue_offset: int) -> tuple[MappedFile, int] | None:
        byte = queue_offset * CQ_UNIT_SIZE
        found = self.queue.find(byte)
        if found is None and self.readonly and byte >= self.queue.max_file_end():
            self.queue.refresh()  # a newer file may have been created by the dispatcher
            found = self.queue.find(byte)
        return found

    def get(self, queue_offset: int) -> tuple[int, int, int] | None:
        """(phy_offset, size, tags_hash) of `queue_offset`, or None if that unit is empty or absent."""
        if queue_offset < 0:
            return None
        found = self._find(queue_offset)
        if found is None:
            return None
        unit = CQ_UNIT.unpack_from(found[0].mv, found[1])
        return unit if unit[1] > 0 else None

    def read_range(self, queue_offset: int, max_count: int) -> list[tuple[int, int, int]]:
        """Up to `max_count` consecutive valid units from `queue_offset` (stops at the first empty one)."""
        units: list[tuple[int, int, int]] = []
        while len(units) < max_count and queue_offset >= 0:
            found = self._find(queue_offset)
            if found is None:
                break
            mapped, file_pos = found
            n = min(max_count - len(units), (self.file_size - file_pos) // CQ_UNIT_SIZE)
            for unit in CQ_UNIT.iter_unpack(mapped.mv[file_pos:file_pos + n * CQ_UNIT_SIZE]):
                if unit[1] <= 0:
                    return units
                units.append(unit)
            queue_offset += n
        return units

    def min_offset(self, min_phy: int = 0) -> int:
        """First queue_offset on disk whose unit points at phy_offset >= `min_phy` (0 if no file)."""
        mapped = None
        for mapped in self.queue.files:  # normally only the first file (the cleaner deletes old ones)
            index = _first_index(mapped, self.units_per_file, lambda phy, size: size <= 0 or phy >= min_phy)
            if index < self.units_per_file:
                return mapped.start_offset // CQ_UNIT_SIZE + index
        return 0 if mapped is None else (mapped.start_offset + self.file_size) // CQ_UNIT_SIZE

    def max_offset(self) -> int:
        """queue_offset of the first empty unit: the next one to write (0 for an empty queue)."""
        last = self.queue.last()
        index = _first_index(last, self.units_per_file, _is_empty) if last is not None else 0
        if (self.readonly and index == self.units_per_file) or last is None:
            self.queue.refresh()  # the dispatcher may have started a new file (listdir only then)
            if self.queue.last() is not last:
                return self.max_offset()
        return 0 if last is None else last.start_offset // CQ_UNIT_SIZE + index

    # ---- recovery and cleaning --------------------------------------------------------------

    def truncate_beyond(self, phy_end: int) -> int:
        """Zero units whose phy_offset + size > `phy_end`, delete files left empty; returns units cut.

        Only the tail is examined: units are in phy_offset order within a queue.
        """
        cut = 0
        while (last := self.queue.last()) is not None:
            index = _first_index(last, self.units_per_file,
                                 lambda phy, size: size <= 0 or phy + size > phy_end)
            if index == self.units_per_file:
                break
            cut += max(0, _first_index(last, self.units_per_file, _is_empty) - index)
            last.zero(index * CQ_UNIT_SIZE, self.file_size)
            if index > 0 or len(self.queue.files) == 1:
                break
            self._current = None
            self.queue.delete_file(last, f"no ConsumeQueue unit below CommitLog end {phy_end}")
        if cut:
            log.warning("consumequeue %s: cut %d units beyond CommitLog end %d", self.dir, cut, phy_end)
        return cut

    def delete_files_before(self, min_phy: int) -> int:
        """Delete files whose last unit points below `min_phy` (never the last file); returns count."""
        deleted = 0
        for mapped in self.queue.files[:-1]:
            phy, size, _ = CQ_UNIT.unpack_from(mapped.mv, self.file_size - CQ_UNIT_SIZE)
            if size > 0 and phy >= min_phy:
                break
            if mapped is self._current:
                self._current = None
            self.queue.delete_file(mapped, f"every unit points below CommitLog min offset {min_phy}")
            deleted += 1
        return deleted

    def refresh(self) -> None:
        self.queue.refresh()

    def close(self) -> None:
        self._current = None
        self.queue.close()


def _is_empty(phy: int, size: int) -> bool:
    return size <= 0


def _first_index(mapped: MappedFile, count: int, is_past: Callable[[int, int], bool]) -> int:
    """Binary search: index of the first unit for which is_past(phy, size) holds (count if none).

    is_past must be False for a prefix of the units and True after it.
    """
    lo, hi = 0, count
    mv = mapped.mv
    while lo < hi:
        mid = (lo + hi) // 2
        phy, size, _ = CQ_UNIT.unpack_from(mv, mid * CQ_UNIT_SIZE)
        if is_past(phy, size):
            hi = mid
        else:
            lo = mid + 1
    return lo


class ConsumeQueueStore:
    """Every ConsumeQueue of a store, opened lazily, at most `max_open` mapped at a time (LRU)."""

    def __init__(self, store_dir: str, file_size: int = DEFAULT_CQ_FILE_SIZE, *, readonly: bool,
                 max_open: int = DEFAULT_MAX_OPEN_QUEUES) -> None:
        self.store_dir = store_dir
        self.file_size = file_size
        self.readonly = readonly
        self.max_open = max_open
        self._open: collections.OrderedDict[tuple[str, int], ConsumeQueue] = collections.OrderedDict()

    def get(self, topic: str, queue_id: int) -> ConsumeQueue:
        """The queue (opened, or created on first put); closes the least recently used beyond max_open."""
        key = (topic, queue_id)
        queue = self._open.get(key)
        if queue is not None:
            self._open.move_to_end(key)
            return queue
        queue = ConsumeQueue(self.store_dir, topic, queue_id, self.file_size, readonly=self.readonly)
        self._open[key] = queue
        while len(self._open) > self.max_open:
            _, evicted = self._open.popitem(last=False)
            self._close(evicted)
        return queue

    def _close(self, queue: ConsumeQueue) -> None:
        if not self.readonly:
            queue.flush()
        queue.close()

    def list_queues(self) -> list[tuple[str, int]]:
        """Every (topic, queue_id) with a directory under consumequeue/, sorted."""
        root = os.path.join(self.store_dir, "consumequeue")
        found = []
        for topic in _listdir(root):
            for name in _listdir(os.path.join(root, topic)):
                if name.isdigit():
                    found.append((topic, int(name)))
        return sorted(found)

    def flush_all(self) -> None:
        for mapped, start, end in self.take_flush_ranges():
            mapped.flush(start, end)

    def take_flush_ranges(self) -> list[tuple[MappedFile, int, int]]:
        """Every open queue's `take_flush_ranges`, together."""
        return [piece for queue in self._open.values() for piece in queue.take_flush_ranges()]

    def close_all(self) -> None:
        while self._open:
            self._close(self._open.popitem()[1])


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
