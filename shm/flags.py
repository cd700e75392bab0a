"""Status bits published in shm (RocketMQ RunningFlags), one bit set per owner process.

`writer_flags` is written only by the writer, `cleaner_flags` only by the cleaner (layout.py), so a
read-modify-write by the owner is safe. Everyone else reads, e.g. the front before queueing a send:
    ok, reason = is_writable(positions)
Thread-safety: pure functions over snapshot values.
"""
from __future__ import annotations

from typing import Protocol

# writer_flags (owner: writer)
WRITE_ERROR = 1 << 0        # a CommitLog append failed (I/O error); sends are refused until fixed
WRITER_STOPPING = 1 << 1    # graceful shutdown: the writer drains what it has and takes no more

# cleaner_flags (owner: cleaner)
NOT_WRITABLE_DISK_FULL = 1 << 0   # disk use above diskSpaceWarningLevelRatio: refuse sends
DISK_CLEAN_FORCIBLY = 1 << 1      # disk use above diskSpaceCleanForciblyRatio: deleting unexpired files

WRITER_FLAG_NAMES = {WRITE_ERROR: "WRITE_ERROR", WRITER_STOPPING: "WRITER_STOPPING"}
CLEANER_FLAG_NAMES = {NOT_WRITABLE_DISK_FULL: "NOT_WRITABLE_DISK_FULL",
                      DISK_CLEAN_FORCIBLY: "DISK_CLEAN_FORCIBLY"}


class _FlagSource(Protocol):
    @property
    def writer_flags(self) -> int: ...

    @property
    def cleaner_flags(self) -> int: ...

    @property
    def disk_used_ppm(self) -> int: ...


def is_writable(positions: _FlagSource) -> tuple[bool, str]:
    """(True, "") if the broker may accept sends now, else (False, reason for the client)."""
    cleaner_flags = positions.cleaner_flags
    if cleaner_flags & NOT_WRITABLE_DISK_FULL:
        return False, f"disk full ({positions.disk_used_ppm / 10_000:.1f}% used): store not writable"
    writer_flags = positions.writer_flags
    if writer_flags & WRITE_ERROR:
        return False, "commit log write error: store not writable"
    if writer_flags & WRITER_STOPPING:
        return False, "broker is shutting down"
    return True, ""


def describe(writer_flags: int, cleaner_flags: int) -> list[str]:
    """Names of the bits set (unknown bits as hex), for `rmqd status`."""
    return _names(writer_flags, WRITER_FLAG_NAMES) + _names(cleaner_flags, CLEANER_FLAG_NAMES)


def _names(flags: int, names: dict[int, str]) -> list[str]:
    out = [name for bit, name in names.items() if flags & bit]
    unknown = flags & ~sum(names)
    if unknown:
        out.append(hex(unknown))
    return out
