"""MappedFile: one fixed-size store file mapped MAP_SHARED into this process.

Owns the mapping of one CommitLog or ConsumeQueue file. The file is always full-size: it is created
as `{path}.{pid}.tmp`, reserved with posix_fallocate, warmed (see `Warm`: its blocks are written, so
the first commits into it need no extent conversion), fdatasync'ed, then published under its final
name with link() (atomic, and it never replaces a file another process already published). So no
process ever maps a half-prepared file. Files are never shrunk while mapped (that would SIGBUS
readers).

Not thread-safe. Any process may open files read-only; only the owner of a format writes to it.
"""
from __future__ import annotations

import enum
import logging
import mmap
import os

from rmqd.errors import CorruptFileError
from rmqd.store.filenames import is_offset_name, name_to_offset

log = logging.getLogger("rmqd.store")

WARM_PAGE_SIZE = 4096


class Warm(enum.Enum):
    """How a new file is warmed: which page-cache folios it gets decides what an msync writes back.

    PAGES: zeros written one 4 KiB page per write(). The page cache holds 4 KiB folios, so an
        msync of a few KiB writes back a few KiB: for SYNC_FLUSH, whose group commits are small.
        (Measured on kernel 6.18, 20 KiB per commit: 110 us and 20 KiB written; 0.86 s of CPU per
        GiB to warm. Bigger write() calls make large folios.)
    FOLIOS: one byte per page touched through a mapping. The sequential faults ramp readahead up
        to 2 MiB folios: the writer then takes one fault per folio instead of per page and the
        flusher walks fewer folios (ASYNC_FLUSH 1 KiB at full speed: writer 0.11 against 0.18
        core, flusher 0.01 against 0.07), but an msync of 20 KiB writes back 2 MiB (290 us), which
        only ASYNC_FLUSH's large periodic flushes can afford.
    OFF: blocks reserved only (fallocate); the writer's first write to each page pays for it.
    """

    OFF = "off"
    PAGES = "pages"
    FOLIOS = "folios"


def fsync_dir(path: str) -> None:
    """fsync a directory so that a create/rename/unlink inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MappedFile:
    """A full-size file and its shared mapping; `mv` is a memoryview over the whole file."""

    def __init__(self, path: str, file_size: int, mm: mmap.mmap, readonly: bool) -> None:
        self.path = path
        self.file_size = file_size
        name = os.path.basename(path)
        # Offset-named files (CommitLog, ConsumeQueue) know their start; others (IndexFile) start at 0.
        self.start_offset = name_to_offset(name) if is_offset_name(name) else 0
        self.readonly = readonly
        self._mm = mm
        self.mv = memoryview(mm)

    @classmethod
    def open(cls, path: str, file_size: int, *, readonly: bool) -> MappedFile:
        """Map an existing file; raises CorruptFileError if its length is not `file_size`."""
        fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            actual = os.fstat(fd).st_size
            if actual != file_size:
                raise CorruptFileError(path, 0, "file length", file_size, actual)
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
            mm = mmap.mmap(fd, file_size, access=access)
        finally:
            os.close(fd)  # mmap keeps its own descriptor
        return cls(path, file_size, mm, readonly)

    @classmethod
    def create(cls, path: str, file_size: int, *, warm: Warm = Warm.PAGES,
               sparse: bool = False) -> MappedFile:
        """Create, preallocate, warm and publish `path` (or open it if another process won the race).

        `sparse=True` only sets the length (no blocks reserved, no warming): for the many small
        ConsumeQueue files, whose disk reservation would otherwise be 5.7 MB per queue.
        """
        prepare_file(path, file_size, warm=warm, sparse=sparse)
        return cls.open(path, file_size, readonly=False)

    def reserve(self, start_file_pos: int, end_file_pos: int) -> None:
        """Allocate the blocks of [start, end) of a sparse file before writing there through the map.

        A write fault on a hole of a sparse file must allocate a block; on a full disk that fails
        with SIGBUS, which kills the process (PERFORMANCE_NOTES, mmap pitfalls). posix_fallocate
        fails with OSError(ENOSPC) instead, which the writer of the file can handle. Cheap on
        ranges already allocated. Raises OSError.
        """
        end_file_pos = min(end_file_pos, self.file_size)
        if end_file_pos <= start_file_pos:
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, start_file_pos, end_file_pos - start_file_pos)
        finally:
            os.close(fd)

    def flush(self, start_file_pos: int, end_file_pos: int) -> None:
        """msync(MS_SYNC) bytes [start_file_pos, end_file_pos); the start is rounded down to a page."""
        if end_file_pos <= start_file_pos or self.readonly:
            return
        aligned = start_file_pos - start_file_pos % mmap.PAGESIZE
        self._mm.flush(aligned, min(end_file_pos, self.file_size) - aligned)

    def zero(self, start_file_pos: int, end_file_pos: int) -> int:
        """Zero [start, end) in place through the mapping, skipping chunks already zero.

        Returns the bytes that held data: per rewritten 1 MiB chunk, up to its last non-zero byte.
        """
        changed = 0
        pos = start_file_pos
        while pos < end_file_pos:
            n = min(_ZERO_CHUNK_SIZE, end_file_pos - pos)
            data = self.mv[pos:pos + n].tobytes()  # comparing the memoryview itself is 15x slower
            if data != _ZERO_CHUNK[:n]:
                self.mv[pos:pos + n] = _ZERO_CHUNK[:n]
                changed += len(data.rstrip(b"\0"))
            pos += n
        return changed

    def close(self) -> None:
        """Unmap. Views handed out earlier keep the mapping alive until they are released."""
        self.mv.release()
        try:
            self._mm.close()
        except BufferError:
            log.debug("mapping of %s still referenced by a view; unmapped when it is released", self.path)

    def __repr__(self) -> str:
        return f"MappedFile({self.path!r}, start_offset={self.start_offset}, readonly={self.readonly})"


_ZERO_CHUNK_SIZE = 1 << 20
_ZERO_CHUNK = bytes(_ZERO_CHUNK_SIZE)


# Warming makes the file durable every WARM_SYNC_BYTES. With one fdatasync of the whole 1 GiB at
# the end, a 20 KiB commit running meanwhile (what SYNC_FLUSH does all the time) waited up to
# 274-343 ms behind it. Measured during a warm-up (commit p99 / max): 8 MiB 3.8 / 7.0 ms (many small
# waits), 16 MiB 0.33 / 17 ms, 64 MiB 0.28-0.32 / 38-45 ms.
WARM_SYNC_BYTES = 16 << 20


def _warm(fd: int, file_size: int, warm: Warm) -> None:
    """Write every page of the file once, as `warm` says (see Warm), and make it durable piecewise."""
    if warm is Warm.OFF:
        return
    zero_page = bytes(WARM_PAGE_SIZE)
    pwrite = os.pwrite
    mm = mmap.mmap(fd, file_size, access=mmap.ACCESS_WRITE) if warm is Warm.FOLIOS else None
    try:
        for start in range(0, file_size, WARM_SYNC_BYTES):
            end = min(file_size, start + WARM_SYNC_BYTES)
            if mm is None:  # PAGES (a mapping with MADV_RANDOM also gives 4 KiB folios, at 4x the CPU)
                for offset in range(start, end, WARM_PAGE_SIZE):
                    pwrite(fd, zero_page, offset)
            else:
                mm[start:end:WARM_PAGE_SIZE] = bytes(len(range(start, end, WARM_PAGE_SIZE)))
            os.fdatasync(fd)
    finally:
        if mm is not None:
            mm.close()


def prepare_file(path: str, file_size: int, *, warm: Warm = Warm.PAGES, sparse: bool = False) -> bool:
    """Create `path` full-size (and warmed), atomically. Returns False if it already existed."""
    if os.path.exists(path):
        return False
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if sparse:
            os.ftruncate(fd, file_size)
        else:
            os.posix_fallocate(fd, 0, file_size)
            _warm(fd, file_size, warm)
        os.fdatasync(fd)
    except BaseException:
        os.unlink(tmp)  # a failed fallocate (ENOSPC) may keep blocks: give them back to the full disk
        raise
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # unlike rename, never replaces a file another process published
        published = True
    except FileExistsError:
        published = False
    finally:
        os.unlink(tmp)
    fsync_dir(os.path.dirname(path) or ".")
    return published


def remove_stale_tmp_files(dir_path: str) -> None:
    """Delete `*.{pid}.tmp` files whose creating process is gone (it crashed while preparing)."""
    for name in os.listdir(dir_path):
        parts = name.split(".")
        if len(parts) != 3 or parts[2] != "tmp" or not parts[1].isdigit():
            continue
        if not _pid_alive(int(parts[1])):
            log.warning("removing %s: left by crashed process %s while preparing a file",
                        os.path.join(dir_path, name), parts[1])
            os.unlink(os.path.join(dir_path, name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
