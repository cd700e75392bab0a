"""Status bits published in shm (RocketMQ RunningFlags), one bit set per owner process.

`writer_flags` is written only by the writer, `cleaner_flags` only by the cleaner (layout.py), so a
read-modify-write by the owner is safe. Everyone else reads, e.g. the front before queueing a send:
    ok, reason = is_writable(positions)
`reason` is the remark sent with SERVICE_NOT_AVAILABLE: for a full disk it gives the disk's used
ratio and the configured thresholds (the cleaner publishes them in `disk_limits`, packed by
`pack_disk_limits`), as RocketMQ's "the broker's disk is full [...]" remark does.

Who clears what:
  NOT_WRITABLE_DISK_FULL  the cleaner, once usage is below diskSpaceWarningLevelRatio again
  WRITE_ERROR(_NO_SPACE)  the writer, when the cleaner bumps `write_retry_seq` (it does so once the
                          disk has room for a new CommitLog file again); a retry that fails sets them
                          again, so an I/O error that persists keeps the store read-only
Thread-safety: pure functions over snapshot values.
"""
from __future__ import annotations

from typing import Protocol

# writer_flags (owner: writer)
WRITE_ERROR = 1 << 0        # a CommitLog append failed (I/O error); sends are refused until a retry works
WRITER_STOPPING = 1 << 1    # graceful shutdown: the writer drains what it has and takes no more
WRITE_ERROR_NO_SPACE = 1 << 2  # set with WRITE_ERROR when the failure was ENOSPC (disk full)

# cleaner_flags (owner: cleaner)
NOT_WRITABLE_DISK_FULL = 1 << 0   # disk use above diskSpaceWarningLevelRatio: refuse sends
DISK_CLEAN_FORCIBLY = 1 << 1      # disk use above diskSpaceCleanForciblyRatio: deleting unexpired files

WRITER_FLAG_NAMES = {WRITE_ERROR: "WRITE_ERROR", WRITER_STOPPING: "WRITER_STOPPING",
                     WRITE_ERROR_NO_SPACE: "WRITE_ERROR_NO_SPACE"}
CLEANER_FLAG_NAMES = {NOT_WRITABLE_DISK_FULL: "NOT_WRITABLE_DISK_FULL",
                      DISK_CLEAN_FORCIBLY: "DISK_CLEAN_FORCIBLY"}


class _FlagSource(Protocol):
    @property
    def writer_flags(self) -> int: ...

    @property
    def cleaner_flags(self) -> int: ...

    @property
    def disk_used_ppm(self) -> int: ...

    @property
    def disk_limits(self) -> int: ...


def pack_disk_limits(warning_pct: int, forcibly_pct: int, max_used_pct: int) -> int:
    """The cleaner's thresholds in one i64 (position `disk_limits`): one byte per percentage."""
    return (warning_pct & 0xFF) | (forcibly_pct & 0xFF) << 8 | (max_used_pct & 0xFF) << 16


def unpack_disk_limits(packed: int) -> tuple[int, int, int]:
    """(diskSpaceWarningLevelRatio, diskSpaceCleanForciblyRatio, diskMaxUsedSpaceRatio) in percent."""
    return packed & 0xFF, packed >> 8 & 0xFF, packed >> 16 & 0xFF


def disk_remark(positions: _FlagSource) -> str:
    """'93.1% of the store's disk used (...)', with the thresholds when the cleaner published them."""
    used = f"{positions.disk_used_ppm / 10_000:.1f}% of the store's disk used"
    warning, forcibly, max_used = unpack_disk_limits(positions.disk_limits)
    if not warning:
        return used
    return (f"{used}; writes stop above diskSpaceWarningLevelRatio={warning}%, "
            f"unexpired files are deleted above diskSpaceCleanForciblyRatio={forcibly}%, "
            f"expired files at any hour above diskMaxUsedSpaceRatio={max_used}%")


def is_writable(positions: _FlagSource) -> tuple[bool, str]:
    """(True, "") if the broker may accept sends now, else (False, reason for the client)."""
    cleaner_flags = positions.cleaner_flags
    if cleaner_flags & NOT_WRITABLE_DISK_FULL:
        return False, f"disk full ({disk_remark(positions)}): store not writable; reads keep working"
    writer_flags = positions.writer_flags
    if writer_flags & WRITE_ERROR_NO_SPACE:
        return False, (f"commit log write error: no space left on device ({disk_remark(positions)}): "
                       "store not writable until space is freed")
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
