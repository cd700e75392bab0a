"""One shared-memory segment: a plain file in /dev/shm mapped MAP_SHARED (create, attach, close, unlink).

Owns the file's lifecycle and the magic/version/size checks; the byte layout belongs to layout.py.
The supervisor creates (and finally unlinks) the segment; children attach. We map a plain file instead
of multiprocessing.shared_memory because Python 3.11 registers every SharedMemory attach with the
resource tracker, which may unlink the segment when an attaching process exits.

Not thread-safe for create/close; the mapping itself is shared by everyone who attached.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Mapping

from shm.layout import LAYOUT_VERSION, RINGS, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC, Layout, decode_header


class ShmError(Exception):
    """The shm segment is missing, in use, damaged or unusable (message names the path)."""


class ShmVersionMismatch(ShmError):
    """The segment was created by an rmqd with another layout version."""

    def __init__(self, path: str, found: int, expected: int) -> None:
        super().__init__(
            f"shm segment {path} has layout version {found}, this rmqd expects {expected}: it was created "
            f"by another rmqd version; stop that broker (or delete the file if no broker runs)")
        self.path = path
        self.found = found
        self.expected = expected


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Segment:
    """A mapped segment. Use `create` (supervisor) or `attach` (everyone else)."""

    def __init__(self, path: str, fd: int, mapping: mmap.mmap, layout: Layout, readonly: bool) -> None:
        self.path = path
        self.layout = layout
        self.readonly = readonly
        self._fd = fd
        self._mmap = mapping
        self.buf = memoryview(mapping)
        self.header = decode_header(self.buf)
        self._views: list[memoryview] = []

    @classmethod
    def create(cls, path: str, ring_sizes: Mapping[str, int]) -> Segment:
        """Create the file with O_EXCL, size it, write the header. Replaces a stale file of a dead creator.

        Raises ShmError if a live process created the existing file, or if /dev/shm has no room.
        """
        layout = Layout(ring_sizes)
        fd = _create_exclusive(path)
        try:
            try:
                os.posix_fallocate(fd, 0, layout.total_size)
            except OSError as exc:
                raise ShmError(f"cannot reserve {layout.total_size} bytes for shm segment {path}: {exc}; "
                               f"free space in /dev/shm or lower the shm*RingBytes settings") from exc
            mapping = mmap.mmap(fd, layout.total_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        layout.encode_header(memoryview(mapping), os.getpid(), time.time_ns())
        return cls(path, fd, mapping, layout, readonly=False)

    @classmethod
    def attach(cls, path: str, *, readonly: bool = False) -> Segment:
        """Map an existing segment; checks magic, layout version and size.

        Raises ShmError (missing or damaged) or ShmVersionMismatch, both naming the path.
        """
        try:
            fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        except FileNotFoundError as exc:
            raise ShmError(f"shm segment {path} does not exist: is the broker running?") from exc
        try:
            layout = _verify(path, fd)
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
            mapping = mmap.mmap(fd, layout.total_size, access=access)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mapping, layout, readonly)

    def view(self, offset: int, size: int, fmt: str = "B") -> memoryview:
        """A view of [offset, offset + size) cast to `fmt`; released by close()."""
        mv = self.buf[offset:offset + size]
        if fmt != "B":
            cast = mv.cast(fmt)
            mv.release()
            mv = cast
        self._views.append(mv)
        return mv

    def close(self) -> None:
        """Unmap. If a caller still holds a view (e.g. a ring entry), the unmap happens when it is freed."""
        if self._fd < 0:
            return
        for mv in self._views:
            mv.release()
        self._views.clear()
        self.buf.release()
        with contextlib.suppress(BufferError):
            self._mmap.close()
        os.close(self._fd)
        self._fd = -1

    def unlink(self) -> None:
        """Remove the file (supervisor only, at shutdown). Attached processes keep their mapping."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _create_exclusive(path: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _attempt in range(3):
        try:
            return os.open(path, flags, 0o600)
        except FileExistsError:
            _remove_if_stale(path)
    raise ShmError(f"cannot create shm segment {path}: it keeps reappearing (another supervisor starting?)")


def _remove_if_stale(path: str) -> None:
    try:
        with open(path, "rb") as file:
            raw = file.read(SEGMENT_HEADER_SIZE)
    except FileNotFoundError:
        return
    if len(raw) == SEGMENT_HEADER_SIZE:
        header = decode_header(raw + bytes(64))
        if header.magic == SEGMENT_MAGIC and header.creator_pid != os.getpid() \
                and _pid_alive(header.creator_pid):
            raise ShmError(f"shm segment {path} is in use by live pid {header.creator_pid}; "
                           f"is another broker running on the same store?")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _verify(path: str, fd: int) -> Layout:
    file_size = os.fstat(fd).st_size
    raw = os.pread(fd, 2 * SEGMENT_HEADER_SIZE, 0)
    if len(raw) < 2 * SEGMENT_HEADER_SIZE:
        raise ShmError(f"shm segment {path} is {file_size} bytes: too short to hold a header")
    header = decode_header(raw)
    if header.magic != SEGMENT_MAGIC:
        expected = SEGMENT_MAGIC.to_bytes(8, "little")
        raise ShmError(f"shm segment {path}: bad magic {raw[:8]!r}, expected {expected!r}: "
                       f"not an rmqd segment (or not yet initialised)")
    if header.layout_version != LAYOUT_VERSION:
        raise ShmVersionMismatch(path, header.layout_version, LAYOUT_VERSION)
    if header.ring_count != len(RINGS):
        raise ShmError(f"shm segment {path}: has {header.ring_count} rings, this rmqd expects {len(RINGS)}")
    try:
        layout = Layout(header.ring_capacities)
    except ValueError as exc:
        raise ShmError(f"shm segment {path}: bad ring table: {exc}") from exc
    if layout.total_size != header.total_size or file_size < layout.total_size:
        raise ShmError(f"shm segment {path}: header says {header.total_size} bytes, layout needs "
                       f"{layout.total_size}, file has {file_size}")
    return layout
