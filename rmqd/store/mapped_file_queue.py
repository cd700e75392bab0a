"""MappedFileQueue: the ordered run of equal-size files that make up one logical byte space.

Owns a directory of files named `{start_offset:020d}` (see filenames.py), each exactly `file_size`
bytes, where start_offset is a multiple of file_size. Used by CommitLog (phy_offset space) and by
ConsumeQueue (byte space = queue_offset * 20). Gaps between files are allowed (a queue whose old
files were deleted); lookups go through a dict keyed by start offset.

Writers (`readonly=False`) create files through MappedFile.create (full size, warmed, published
atomically). Readers (`readonly=True`) map read-only and call `refresh()` to see files created or
deleted by other processes. Not thread-safe; one instance per process per directory.
"""
from __future__ import annotations

import logging
import os

from rmqd.store.filenames import is_offset_name, name_to_offset, offset_to_name
from rmqd.store.mapped_file import MappedFile, Warm, fsync_dir, prepare_file, remove_stale_tmp_files

log = logging.getLogger("rmqd.store")


class MappedFileQueue:
    """Files of one directory, sorted by start offset, mapped on open."""

    def __init__(self, dir_path: str, file_size: int, *, readonly: bool, sparse: bool = False,
                 warm: Warm = Warm.PAGES) -> None:
        """`warm`: how new files are warmed (mapped_file.Warm; sparse files never are)."""
        if file_size <= 0:
            raise ValueError(f"file_size must be > 0, got {file_size}")
        self.dir = dir_path
        self.file_size = file_size
        self.readonly = readonly
        self.sparse = sparse
        self.warm = warm
        self.files: list[MappedFile] = []
        self._by_start: dict[int, MappedFile] = {}
        if not readonly:
            os.makedirs(dir_path, exist_ok=True)
            remove_stale_tmp_files(dir_path)
        self.refresh()

    def _names_on_disk(self) -> list[str]:
        try:
            return [name for name in os.listdir(self.dir) if is_offset_name(name)]
        except FileNotFoundError:
            return []

    def refresh(self) -> None:
        """Map files that appeared on disk and unmap files that were deleted (by another process)."""
        on_disk = {name_to_offset(name) for name in self._names_on_disk()}
        for start in [s for s in self._by_start if s not in on_disk]:
            self._by_start.pop(start).close()
        for start in sorted(on_disk - self._by_start.keys()):
            self._check_alignment(start)
            self._by_start[start] = MappedFile.open(self._path(start), self.file_size, readonly=self.readonly)
        self.files = [self._by_start[s] for s in sorted(self._by_start)]

    def _check_alignment(self, start: int) -> None:
        if start % self.file_size:
            raise ValueError(
                f"{self._path(start)}: start offset is not a multiple of the file size {self.file_size}; "
                "was the store created with another mapped file size?")

    def _path(self, start_offset: int) -> str:
        return os.path.join(self.dir, offset_to_name(start_offset))

    def file_start(self, offset: int) -> int:
        """Start offset of the file that holds `offset`."""
        return offset - offset % self.file_size

    def find(self, offset: int) -> tuple[MappedFile, int] | None:
        """(file, file_pos) holding byte `offset`, or None if no mapped file holds it."""
        mapped = self._by_start.get(offset - offset % self.file_size)
        if mapped is None:
            return None
        return mapped, offset - mapped.start_offset

    def last(self) -> MappedFile | None:
        return self.files[-1] if self.files else None

    def first(self) -> MappedFile | None:
        return self.files[0] if self.files else None

    def min_offset(self) -> int:
        """Start offset of the first file (0 when there is none)."""
        return self.files[0].start_offset if self.files else 0

    def max_file_end(self) -> int:
        """End offset of the last file (0 when there is none)."""
        return self.files[-1].start_offset + self.file_size if self.files else 0

    def get_or_create(self, start_offset: int, *, warm: Warm | None = None) -> MappedFile:
        """The file starting at `start_offset`, using a prepared one if present, else creating it
        (warmed as `warm` says, default: this queue's setting)."""
        mapped = self._by_start.get(start_offset)
        if mapped is not None:
            return mapped
        if self.readonly:
            raise PermissionError(
                f"{self.dir} is open read-only; cannot create {offset_to_name(start_offset)}")
        self._check_alignment(start_offset)
        path = self._path(start_offset)
        mapped = MappedFile.create(path, self.file_size, warm=self.warm if warm is None else warm,
                                   sparse=self.sparse)
        self._by_start[start_offset] = mapped
        self.files = [self._by_start[s] for s in sorted(self._by_start)]
        return mapped

    def prepare(self, start_offset: int) -> None:
        """Create (and warm) a future file on disk without mapping it here (off the writer's hot path)."""
        self._check_alignment(start_offset)
        if start_offset not in self._by_start:
            os.makedirs(self.dir, exist_ok=True)
            prepare_file(self._path(start_offset), self.file_size, warm=self.warm, sparse=self.sparse)

    def truncate_after(self, offset: int) -> int:
        """Zero bytes from `offset` to the end of its file, in place; delete later files.

        Files are never shrunk (readers may map them). Returns bytes zeroed or deleted.
        """
        removed = 0
        for mapped in [f for f in self.files if f.start_offset > offset]:
            removed += self.file_size
            self._delete(mapped, f"after the valid end {offset}")
        found = self.find(offset)
        if found is not None:
            mapped, file_pos = found
            removed += mapped.zero(file_pos, self.file_size)
        return removed

    def delete_files_before(self, offset: int) -> list[str]:
        """Delete files that end at or before `offset`, never the last file; returns deleted paths."""
        deleted = []
        for mapped in self.files[:-1]:
            if mapped.start_offset + self.file_size > offset:
                break
            deleted.append(mapped.path)
            self._delete(mapped, f"wholly before {offset}")
        return deleted

    def delete_file(self, mapped: MappedFile, reason: str) -> None:
        """Unmap and delete one file (logged with `reason`)."""
        self._delete(mapped, reason)

    def _delete(self, mapped: MappedFile, reason: str) -> None:
        log.info("deleting %s: %s", mapped.path, reason)
        self._by_start.pop(mapped.start_offset, None)
        self.files = [f for f in self.files if f is not mapped]
        mapped.close()
        try:
            os.unlink(mapped.path)
        except FileNotFoundError:
            pass
        fsync_dir(self.dir)

    def flush(self, start_offset: int, end_offset: int) -> None:
        """msync every byte in [start_offset, end_offset) across files."""
        for mapped, start, end in self.flush_ranges(start_offset, end_offset):
            mapped.flush(start, end)

    def flush_ranges(self, start_offset: int, end_offset: int) -> list[tuple[MappedFile, int, int]]:
        """The (file, file_pos start, file_pos end) pieces of [start_offset, end_offset) to msync.

        A file another process created since our last look is mapped first (one directory scan,
        only then); a range whose file is gone (deleted by the cleaner) has nothing to flush.
        Callers that msync in another thread resolve the pieces here, in the owning thread.
        """
        pieces = []
        offset = start_offset
        while offset < end_offset:
            file_end = self.file_start(offset) + self.file_size
            found = self.find(offset)
            if found is None and not self.readonly:
                self.refresh()
                found = self.find(offset)
            if found is not None:
                mapped, file_pos = found
                pieces.append((mapped, file_pos, file_pos + min(end_offset, file_end) - offset))
            offset = file_end
        return pieces

    def close(self) -> None:
        for mapped in self.files:
            mapped.close()
        self.files = []
        self._by_start = {}
