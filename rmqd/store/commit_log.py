"""CommitLog: every message of every topic, appended in one global byte space (phy_offset).

Path:  {store_dir}/commitlog/{file_start_phy_offset:020d}, files of `file_size` bytes (RocketMQ
       default 1 GiB; tests use 64 KiB). File k holds phy_offset [k*file_size, (k+1)*file_size).
Records: see record.py for the byte diagram. A record never spans files: when the next record
       does not fit with 8 bytes to spare (RocketMQ END_FILE_MIN_BLANK_LENGTH), an 8-byte blank
       record (TOTALSIZE = bytes remaining in the file, MAGIC 0xcbd43194) ends the file and the
       record goes to the start of the next file. Unwritten space is zeros.
Invariant: the record at phy_offset P has PHYSICALOFFSET == P.
Recovery (`recover`): scan from a known record boundary, validating MAGIC, TOTALSIZE, lengths,
       BODYCRC and PHYSICALOFFSET; a valid blank continues at the next file; the first zero or bad
       record is the end. The torn tail is zeroed in place (files are never shrunk) and files
       wholly after the end are deleted.

Concurrency: exactly one process (the writer) appends; any process may read (`readonly=True`,
`refresh()` to see new files), reading only below a write position published by the writer.
Not thread-safe.
"""
from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator

from rmqd.errors import CorruptFileError, CorruptRecordError, RecordTooLargeError, StoreError
from rmqd.store.mapped_file import MappedFile, Warm
from rmqd.store.mapped_file_queue import MappedFileQueue
from rmqd.store.record import (
    BLANK_MAGIC,
    BLANK_RECORD_SIZE,
    RECORD_FIXED_SIZE,
    MessageRecord,
    decode_record,
    encode_blank,
    patch_stored,
    peek_size_magic,
)

log = logging.getLogger("rmqd.store")

TOTALSIZE = struct.Struct(">i")


class CommitLog:
    """The CommitLog files of one store, for the writer or for readers."""

    def __init__(self, store_dir: str, file_size: int, *, readonly: bool, warm: Warm = Warm.PAGES) -> None:
        if file_size <= RECORD_FIXED_SIZE + BLANK_RECORD_SIZE:
            raise ValueError(f"CommitLog file size {file_size} is too small")
        self.dir = os.path.join(store_dir, "commitlog")
        self.file_size = file_size
        self.readonly = readonly
        self.queue = MappedFileQueue(self.dir, file_size, readonly=readonly, warm=warm)
        self._write_pos = 0
        self._flushed_pos = self.queue.min_offset()
        self.records_scanned = 0  # set by recover()
        self.truncated_bytes = 0  # set by recover()

    # ---- writer side -------------------------------------------------------------------------

    @property
    def write_pos(self) -> int:
        """phy_offset where the next record goes."""
        return self._write_pos

    def set_write_pos(self, phy_offset: int) -> None:
        """Set where the next append goes (the end returned by `recover`)."""
        self._write_pos = phy_offset

    @property
    def flushed_pos(self) -> int:
        return self._flushed_pos

    def set_flushed_pos(self, phy_offset: int) -> None:
        self._flushed_pos = phy_offset

    def _record_sizes(self, src: memoryview, count: int) -> list[int]:
        sizes = []
        src_pos = 0
        for _ in range(count):
            size = TOTALSIZE.unpack_from(src, src_pos)[0]
            if size > self.file_size - BLANK_RECORD_SIZE:
                raise RecordTooLargeError(
                    f"record of {size} bytes does not fit in a CommitLog file of {self.file_size} bytes")
            if size < RECORD_FIXED_SIZE:
                raise ValueError(
                    f"record at source position {src_pos} has TOTALSIZE {size} < {RECORD_FIXED_SIZE}")
            sizes.append(size)
            src_pos += size
        if src_pos > len(src):
            raise ValueError(f"{count} records need {src_pos} bytes, the source holds {len(src)}")
        return sizes

    def open_for_append(self) -> None:
        """Map the file holding write_pos, creating and warming it if missing (writer boot).

        Done once at boot so the first send does not pay for preparing a whole file (about 1 s per
        GiB); later files are prepared ahead of time by the cleaner.
        """
        self._file_for_write(self._write_pos)

    def _file_for_write(self, phy_offset: int, *, warm: Warm | None = None) -> MappedFile:
        return self.queue.get_or_create(self.queue.file_start(phy_offset), warm=warm)

    def append_records(
        self, src: memoryview, count: int, queue_offset: int, store_timestamp_ms: int,
    ) -> list[int]:
        """Append `count` contiguous encoded records of one (topic, queue); return their phy_offsets.

        Copies each run that fits in the current file with one slice assignment, then patches
        QUEUEOFFSET (queue_offset, queue_offset+1, ...), PHYSICALOFFSET and STORETIMESTAMP in place.
        Rolls to the next file (after a blank record) when a record does not fit.
        Raises RecordTooLargeError (nothing written) if a record exceeds file_size - 8.
        """
        sizes = self._record_sizes(src, count)
        file_size = self.file_size
        phy = self._write_pos
        mapped = self._file_for_write(phy, warm=Warm.OFF)  # never warm on the send path
        mv = mapped.mv
        file_pos = phy - mapped.start_offset
        phy_offsets: list[int] = []
        i = src_pos = 0
        while i < count:
            room = file_size - file_pos - BLANK_RECORD_SIZE
            j, run = i, 0
            while j < count and run + sizes[j] <= room:
                run += sizes[j]
                j += 1
            if j == i:  # the next record does not fit: end this file with a blank record, roll
                encode_blank(mv, file_pos, file_size - file_pos)
                phy += file_size - file_pos
                mapped = self._file_for_write(phy, warm=Warm.OFF)  # never warm on the send path
                mv, file_pos = mapped.mv, 0
                continue
            mv[file_pos:file_pos + run] = src[src_pos:src_pos + run]
            for k in range(i, j):
                patch_stored(mv, file_pos, queue_offset + k, phy, store_timestamp_ms)
                phy_offsets.append(phy)
                file_pos += sizes[k]
                phy += sizes[k]
            src_pos += run
            i = j
        self._write_pos = phy
        return phy_offsets

    def flush(self, to_phy: int | None = None) -> int:
        """msync everything from the last flushed position to `to_phy` (default: write_pos).

        Returns the flushed position. A separate flush process opens the CommitLog writable,
        passes the write position it read from shm and calls set_flushed_pos once at start.
        """
        end = self._write_pos if to_phy is None else to_phy
        if end > self._flushed_pos:
            self.queue.flush(self._flushed_pos, end)
            self._flushed_pos = end
        return self._flushed_pos

    # ---- reader side -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Readers: pick up files created or deleted by other processes."""
        self.queue.refresh()

    def min_offset(self) -> int:
        """phy_offset of the first byte still on disk."""
        return self.queue.min_offset()

    def _find(self, phy_offset: int) -> tuple[MappedFile, int]:
        found = self.queue.find(phy_offset)
        if found is None:
            self.queue.refresh()
            found = self.queue.find(phy_offset)
        if found is None:
            raise StoreError(f"no CommitLog file in {self.dir} holds phy_offset {phy_offset} "
                             f"(files cover {self.queue.min_offset()}..{self.queue.max_file_end()})")
        return found

    def read(self, phy_offset: int, size: int) -> memoryview:
        """Zero-copy view of [phy_offset, phy_offset + size), which must lie inside one file."""
        mapped, file_pos = self._find(phy_offset)
        if file_pos + size > self.file_size:
            raise ValueError(f"{size} bytes at phy_offset {phy_offset} cross the end of {mapped.path}")
        return mapped.mv[file_pos:file_pos + size]

    def read_record(self, phy_offset: int, *, verify_crc: bool = True) -> MessageRecord:
        """Decode the record at `phy_offset`; CorruptRecordError names the file and position."""
        mapped, file_pos = self._find(phy_offset)
        return _decode_in_file(mapped, file_pos, verify_crc)

    def iter_records(
        self, from_phy: int, to_phy: int, verify_crc: bool = True,
    ) -> Iterator[tuple[int, MessageRecord]]:
        """(phy_offset, record) for every record in [from_phy, to_phy); blank records are skipped.

        `from_phy` must be a record boundary and everything below `to_phy` must be written.
        """
        phy = from_phy
        while phy < to_phy:
            mapped, file_pos = self._find(phy)
            size, magic = peek_size_magic(mapped.mv, file_pos)
            if magic == BLANK_MAGIC:
                phy = mapped.start_offset + self.file_size
                continue
            rec = _decode_in_file(mapped, file_pos, verify_crc)
            yield phy, rec
            phy += rec.total_size

    def read_for_dispatch(self, phy: int, to_phy: int, max_bytes: int) -> bytes:
        """A copy of [phy, min(to_phy, phy + max_bytes, end of phy's file)): the dispatcher's input.

        dispatch.py walks the copy's records with bytes slices and searches, which are cheaper
        than slicing the mapping per field. Only below the writer's published position.
        """
        mapped, file_pos = self._find(phy)
        end = min(self.file_size, file_pos + max_bytes, to_phy - mapped.start_offset)
        return mapped.mv[file_pos:end].tobytes()

    # ---- recovery ----------------------------------------------------------------------------

    def recover(self, start_phy: int) -> int:
        """Validate records from `start_phy` (a record boundary), cut the torn tail, return the valid end.

        Sets write_pos to the end, and records_scanned / truncated_bytes for the caller's report.
        """
        if self.readonly:
            raise PermissionError(f"{self.dir} is open read-only; recovery needs the writer")
        self.records_scanned = 0
        if not self.queue.files:
            self._write_pos = self.truncated_bytes = 0
            return 0
        phy = self._clamp_start(start_phy)
        reason = "end of files"
        while True:
            found = self.queue.find(phy)
            if found is None:
                break
            step, reason = self._check_at(*found, phy)
            if step == 0:
                break
            phy += step
        self._cut_tail(phy, reason)
        self._write_pos = phy
        return phy

    def boundary_before(self, phy: int, window: int) -> int:
        """A record boundary B <= phy - window (B < phy in any case), in the file holding phy - 1.

        Hops TOTALSIZEs from that file's start (files start with a record); the hop stops early at
        a size that cannot be right, and that is a boundary too: the damage is in the record there.
        Recovery re-validates [B, phy) because the record before a checkpoint position can be
        damaged after the checkpoint was written (RocketMQ's recoverNormally rescans the last
        files for the same reason). Cost: ~0.3 us per record between the file start and B.
        """
        found = self.queue.find(phy - 1) if phy > 0 else None
        if found is None:
            return phy
        mapped = found[0]
        target = max(mapped.start_offset, phy - max(window, 1))
        mv, file_pos = mapped.mv, 0
        end_file_pos = target - mapped.start_offset
        while file_pos < end_file_pos:
            size = TOTALSIZE.unpack_from(mv, file_pos)[0]
            if size <= 0 or file_pos + size > end_file_pos:
                break
            file_pos += size
        return mapped.start_offset + file_pos

    def _clamp_start(self, start_phy: int) -> int:
        first, last = self.queue.files[0], self.queue.files[-1]
        if start_phy < first.start_offset:
            return first.start_offset
        if start_phy >= last.start_offset + self.file_size:
            log.warning("recovery start %d is past the last CommitLog file %s; "
                        "scanning that file from its start", start_phy, last.path)
            return last.start_offset
        return start_phy

    def _check_at(self, mapped: MappedFile, file_pos: int, phy: int) -> tuple[int, str]:
        """(bytes to skip, "") for a valid record or blank at phy; (0, reason) at the end."""
        remaining = self.file_size - file_pos
        if remaining < BLANK_RECORD_SIZE:
            return 0, f"only {remaining} bytes left in the file, no room for a record"
        size, magic = peek_size_magic(mapped.mv, file_pos)
        if magic == BLANK_MAGIC:
            if size == remaining:
                return size, ""
            return 0, f"blank record TOTALSIZE {size} != {remaining} bytes remaining"
        if size == 0 and magic == 0:
            return 0, "zero record (end of written data)"
        try:
            rec = _decode_in_file(mapped, file_pos, True)
        except CorruptRecordError as err:
            return 0, str(err)
        if rec.phy_offset != phy:
            return 0, f"PHYSICALOFFSET {rec.phy_offset} != position {phy}"
        if size > remaining - BLANK_RECORD_SIZE:
            return 0, f"record of {size} bytes leaves no room for the blank record"
        self.records_scanned += 1
        return size, ""

    def _cut_tail(self, end: int, reason: str) -> None:
        before = self.queue.max_file_end()
        found = self.queue.find(end)
        where = f"{found[0].path} at file position {found[1]}" if found else f"phy_offset {end} (no file)"
        self.truncated_bytes = self.queue.truncate_after(end)
        level = logging.INFO if self.truncated_bytes == 0 or reason.startswith("zero") else logging.WARNING
        log.log(level, "commitlog recovery: valid data ends in %s (phy_offset %d): %s; "
                "zeroed/deleted %d bytes (files ended at %d)",
                where, end, reason, self.truncated_bytes, before)

    def delete_files_before(self, phy_offset: int) -> list[str]:
        """Delete files wholly below `phy_offset` (never the last one); returns their paths."""
        return self.queue.delete_files_before(phy_offset)

    def close(self) -> None:
        self.queue.close()


def _decode_in_file(mapped: MappedFile, file_pos: int, verify_crc: bool) -> MessageRecord:
    try:
        return decode_record(mapped.mv, file_pos, verify_crc=verify_crc, limit=mapped.file_size)
    except CorruptFileError as err:
        raise CorruptRecordError(mapped.path, file_pos, err.field, err.expected, err.actual) from None
