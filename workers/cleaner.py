"""Cleaner: store housekeeping — next-file preparation, min offset, disk usage and self-protection.

Reads shm:   positions.write_pos (writer)
Writes shm:  positions.min_phy_offset, positions.disk_used_ppm, positions.cleaner_flags,
             heartbeats[cleaner]
Files:       commitlog/* (creates the NEXT file ahead of the writer; deletes expired files in the
             operations issue), nothing else
On crash:    restartable: everything it publishes is re-derived from the files and the disk

Preparing the next CommitLog file (fallocate, touch every page through the mapping, fdatasync)
costs ~0.5-1 s of CPU per GiB (PERFORMANCE_NOTES); doing it here keeps it off the writer's path,
like RocketMQ's AllocateMappedFileService. The writer falls back to creating the file itself if it
ever reaches the end first (logged).

Above diskSpaceWarningLevelRatio (90 %) the store is flagged not writable (NOT_WRITABLE_DISK_FULL):
sends get SERVICE_NOT_AVAILABLE, reads keep working; the flag clears when usage drops again.
"""
from __future__ import annotations

import logging
import shutil
import time

from rmqd.store.mapped_file_queue import MappedFileQueue
from shm import flags
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.cleaner")
# How far ahead of the end of the current file the next one is prepared.
PREPARE_AHEAD_FRACTION = 0.5
CHECK_INTERVAL_S = 0.2


class Cleaner(WorkerProcess):
    name = "cleaner"
    idle_timeout_s = CHECK_INTERVAL_S

    def setup(self) -> None:
        cfg = self.cfg
        self.file_size = cfg.mappedFileSizeCommitLog
        self.files = MappedFileQueue(cfg.commitlog_dir, self.file_size, readonly=True)
        self.positions = self.shm.positions
        self.full_ratio = cfg.diskSpaceWarningLevelRatio / 100.0
        self.next_disk_check = 0.0
        self.run_once()

    def run_once(self) -> bool:
        self.files.refresh()
        self.positions.set_min_phy_offset(self.files.min_offset())
        prepared = self.maybe_prepare_next_file()
        now = time.monotonic()
        if now >= self.next_disk_check:
            self.next_disk_check = now + 1.0
            self.check_disk()
        return prepared

    def maybe_prepare_next_file(self) -> bool:
        write_pos = self.positions.write_pos
        current_start = write_pos - write_pos % self.file_size
        next_start = current_start + self.file_size
        if write_pos - current_start < self.file_size * PREPARE_AHEAD_FRACTION:
            return False
        if self.files.find(next_start) is not None:
            return False
        started = time.monotonic()
        self.files.prepare(next_start)
        log.info("prepared CommitLog file %020d in %.3f s", next_start, time.monotonic() - started)
        return True

    def check_disk(self) -> None:
        usage = shutil.disk_usage(self.cfg.store_dir)
        ratio = usage.used / usage.total if usage.total else 0.0
        self.positions.set_disk_used_ppm(int(ratio * 1_000_000))
        current = self.positions.cleaner_flags
        if ratio >= self.full_ratio and not current & flags.NOT_WRITABLE_DISK_FULL:
            self.positions.set_cleaner_flags(current | flags.NOT_WRITABLE_DISK_FULL)
            log.error("disk of %s is %.1f%% full (limit %.0f%%): store is not writable until space is freed",
                      self.cfg.store_dir, ratio * 100, self.full_ratio * 100)
        elif ratio < self.full_ratio and current & flags.NOT_WRITABLE_DISK_FULL:
            self.positions.set_cleaner_flags(current & ~flags.NOT_WRITABLE_DISK_FULL)
            log.warning("disk of %s back to %.1f%%: store writable again", self.cfg.store_dir, ratio * 100)


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Cleaner, argv)


if __name__ == "__main__":
    raise SystemExit(main())
