"""How full the store's disk is, and what the cleaner does about it (RocketMQ's DiskCheck).

Three thresholds, percent of the disk that holds the store (RocketMQ DefaultMessageStore
CleanCommitLogService.isSpaceToDelete):

  used > diskMaxUsedSpaceRatio (75)         expired files are deleted at any hour, not only at deleteWhen
  used > diskSpaceCleanForciblyRatio (85)   "clean immediately": the oldest files go even if not expired
                                            (when cleanFileForciblyEnable)
  used > diskSpaceWarningLevelRatio (90)    the store is flagged not writable (NOT_WRITABLE_DISK_FULL):
                                            sends get SERVICE_NOT_AVAILABLE, reads keep working; the
                                            flag clears as soon as usage is back below the limit

"Used" is RocketMQ's getDiskPartitionSpaceUsedPercent: (total - free) / total with `free` counting
the blocks reserved for root (statvfs f_bfree), which is what `shutil.disk_usage` reports as used.

`DiskUsageSource` is injectable (tests pass a function returning any figures). Pure functions
otherwise; thread-safe.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

from rmqd.config import BrokerConfig
from shm import flags


@dataclass(frozen=True)
class DiskUsage:
    """Bytes of one file system: its size, what is used, what an unprivileged writer may still use."""

    total_bytes: int
    used_bytes: int
    available_bytes: int

    @property
    def used_ratio(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes else 0.0


DiskUsageSource = Callable[[str], DiskUsage]


def statvfs_usage(path: str) -> DiskUsage:
    """The real disk usage of the file system holding `path`."""
    usage = shutil.disk_usage(path)
    return DiskUsage(usage.total, usage.used, usage.free)


@dataclass(frozen=True)
class DiskLimits:
    """The thresholds as ratios (0..1), from the broker.conf percentages."""

    max_used_ratio: float = 0.75
    clean_forcibly_ratio: float = 0.85
    warning_ratio: float = 0.90

    @classmethod
    def from_config(cls, cfg: BrokerConfig) -> DiskLimits:
        return cls(cfg.diskMaxUsedSpaceRatio / 100, cfg.diskSpaceCleanForciblyRatio / 100,
                   cfg.diskSpaceWarningLevelRatio / 100)

    def packed(self) -> int:
        """For the shm position `disk_limits` (the front's SERVICE_NOT_AVAILABLE remark)."""
        return flags.pack_disk_limits(round(self.warning_ratio * 100), round(self.clean_forcibly_ratio * 100),
                                      round(self.max_used_ratio * 100))


@dataclass(frozen=True)
class DiskState:
    """One look at the disk, judged against the limits."""

    usage: DiskUsage
    full: bool                 # above the warning level: refuse writes
    clean_immediately: bool    # above the clean-forcibly level (or full): delete unexpired files too
    space_to_delete: bool      # above the max-used level: delete expired files at any hour

    @property
    def used_ppm(self) -> int:
        return round(self.usage.used_ratio * 1_000_000)


def check_disk(usage: DiskUsage, limits: DiskLimits) -> DiskState:
    """RocketMQ's isSpaceToDelete, without side effects."""
    ratio = usage.used_ratio
    full = ratio > limits.warning_ratio
    clean_immediately = full or ratio > limits.clean_forcibly_ratio
    return DiskState(usage, full, clean_immediately, clean_immediately or ratio > limits.max_used_ratio)


def cleaner_flags_for(current: int, state: DiskState, clean_forcibly_enable: bool) -> int:
    """The cleaner_flags word after looking at the disk: DISK_FULL and CLEAN_FORCIBLY follow the state."""
    updated = current & ~(flags.NOT_WRITABLE_DISK_FULL | flags.DISK_CLEAN_FORCIBLY)
    if state.full:
        updated |= flags.NOT_WRITABLE_DISK_FULL
    if state.clean_immediately and clean_forcibly_enable:
        updated |= flags.DISK_CLEAN_FORCIBLY
    return updated


def writer_may_retry(writer_flags: int, state: DiskState, room_needed_bytes: int) -> bool:
    """Ask the writer to retry after WRITE_ERROR? Only when the disk is not full and a new
    CommitLog file (`room_needed_bytes`) fits again: otherwise the retry would fail the same way."""
    return bool(writer_flags & flags.WRITE_ERROR) and not state.full and \
        state.usage.available_bytes >= room_needed_bytes
