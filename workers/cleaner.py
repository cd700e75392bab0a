"""Cleaner: store housekeeping — next-file preparation, disk self-protection, clean-expired passes.

Reads shm:   positions.write_pos (writer), dispatch_pos / cq_flush_pos (dispatcher), flush_pos
             (flusher), writer_flags (writer), clean_requested (front: mqadmin deleteExpiredCommitLog)
Writes shm:  positions.min_phy_offset, disk_used_ppm, disk_limits, cleaner_flags, write_retry_seq,
             files_deleted_seq, heartbeats[cleaner]
Files:       commitlog/* (creates the NEXT file ahead of the writer; deletes old files),
             consumequeue/*/*/* and index/* (deletes files wholly below the CommitLog min offset)
On crash:    restartable: everything it publishes is re-derived from the files and the disk

Every second: look at the disk (rmqd.ops.disk). Above diskSpaceWarningLevelRatio (90 %) the store
is flagged not writable (NOT_WRITABLE_DISK_FULL): sends get SERVICE_NOT_AVAILABLE with a remark
giving the ratios (shm/flags.py), reads keep working, and the flag clears when usage drops. If the
writer hit ENOSPC or an I/O error (WRITE_ERROR) and a new CommitLog file fits on the disk again,
bump write_retry_seq: the writer clears its flag and tries again (at most once a clean interval).
Every cleanResourceInterval (10 s), and at once when clean_requested changes: one clean pass
(rmqd.ops.clean: deleteWhen / 75 % / 85 % rules, at most 10 files, never the file being written).

Preparing the next CommitLog file (fallocate, touch every page through the mapping, fdatasync)
costs ~0.5-1 s of CPU per GiB (PERFORMANCE_NOTES); doing it here keeps it off the writer's path,
like RocketMQ's AllocateMappedFileService. The writer creates the file itself if it reaches the end
first. On a full disk the preparation fails with ENOSPC: logged, retried next time.
"""
from __future__ import annotations

import logging
import os
import time

from rmqd.ops import disk
from rmqd.ops.clean import StoreCleaner
from rmqd.store.filenames import offset_to_name
from shm import flags
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.cleaner")
# How far into the current file the writer must be before the next one is prepared: at once (as
# RocketMQ's AllocateMappedFileService). Warming 1 GiB takes seconds of CPU on a busy machine; with
# half a file of lead (0.5) a writer at 130 MB/s reached the end first and had to create the file.
PREPARE_AHEAD_FRACTION = 0.0
CHECK_INTERVAL_S = 0.2
DISK_CHECK_INTERVAL_S = 1.0
PREPARE_RETRY_S = 10.0  # after a failed preparation (ENOSPC): the writer may create it itself meanwhile


class Cleaner(WorkerProcess):
    name = "cleaner"
    idle_timeout_s = CHECK_INTERVAL_S
    # Injectable for tests (set on the instance before setup): the disk figures and the wall clock.
    disk_usage_source: disk.DiskUsageSource = staticmethod(disk.statvfs_usage)
    clock = staticmethod(time.time)

    def setup(self) -> None:
        cfg = self.cfg
        self.file_size = cfg.mappedFileSizeCommitLog
        self.positions = self.shm.positions
        self.store_cleaner = StoreCleaner(cfg, self.positions, clock=self.clock, sleep=self.sleep_beating)
        self.files = self.store_cleaner.commitlog
        self.limits = disk.DiskLimits.from_config(cfg)
        self.positions.set_disk_limits(self.limits.packed())
        self.clean_interval_s = cfg.cleanResourceInterval / 1000.0
        self.clean_seen = self.positions.clean_requested
        self.next_disk_check = self.next_prepare = self.next_retry = 0.0
        self.next_clean = time.monotonic() + self.clean_interval_s  # the other processes boot first
        self.disk_state = self.check_disk()
        self.run_once()

    def run_once(self) -> bool:
        self.files.refresh()
        self.positions.set_min_phy_offset(self.files.min_offset())
        did = self.maybe_prepare_next_file()
        now = time.monotonic()
        if now >= self.next_disk_check:
            self.next_disk_check = now + DISK_CHECK_INTERVAL_S
            self.disk_state = self.check_disk()
            self.maybe_ask_writer_to_retry(now)
        requested = self.positions.clean_requested
        if requested != self.clean_seen:
            self.clean_seen = requested
            log.info("deleteExpiredCommitLog requested: expired files may go at any hour for the next passes")
            self.store_cleaner.request_manual()
            self.next_clean = now
        if now >= self.next_clean:
            self.next_clean = now + self.clean_interval_s
            did |= self.store_cleaner.run_pass(self.disk_state).deleted_anything
        return did

    def sleep_beating(self, seconds: float) -> None:
        """The pause between deletions: keep the heartbeat fresh through a long pass."""
        self.shm.heartbeats.beat(self.name)
        if not self.stop_requested:
            time.sleep(seconds)

    def maybe_prepare_next_file(self) -> bool:
        write_pos = self.positions.write_pos
        current_start = write_pos - write_pos % self.file_size
        next_start = current_start + self.file_size
        if write_pos - current_start < self.file_size * PREPARE_AHEAD_FRACTION:
            return False
        if self.files.find(next_start) is not None or time.monotonic() < self.next_prepare:
            return False
        started = time.monotonic()
        try:
            self.files.prepare(next_start)
        except OSError as exc:
            self.next_prepare = time.monotonic() + PREPARE_RETRY_S
            self._remove_own_tmp(next_start)
            log.warning("cannot prepare CommitLog file %s (%s); retrying in %.0f s",
                        offset_to_name(next_start), exc, PREPARE_RETRY_S)
            return False
        log.info("prepared CommitLog file %s in %.3f s", offset_to_name(next_start),
                 time.monotonic() - started)
        return True

    def _remove_own_tmp(self, start: int) -> None:
        """A failed preparation leaves `{name}.{pid}.tmp` (mapped_file.prepare_file): free its blocks."""
        try:
            os.unlink(os.path.join(self.files.dir, f"{offset_to_name(start)}.{os.getpid()}.tmp"))
        except FileNotFoundError:
            pass

    def check_disk(self) -> disk.DiskState:
        state = disk.check_disk(self.disk_usage_source(self.cfg.store_dir), self.limits)
        self.positions.set_disk_used_ppm(state.used_ppm)
        current = self.positions.cleaner_flags
        updated = disk.cleaner_flags_for(current, state, self.cfg.cleanFileForciblyEnable)
        if updated != current:
            self.positions.set_cleaner_flags(updated)
            self._log_flag_change(current, updated, state)
        return state

    def _log_flag_change(self, before: int, after: int, state: disk.DiskState) -> None:
        ratio = state.usage.used_ratio * 100
        if after & flags.NOT_WRITABLE_DISK_FULL and not before & flags.NOT_WRITABLE_DISK_FULL:
            log.error("disk of %s is %.1f%% full (limit diskSpaceWarningLevelRatio=%.0f%%): store is not "
                      "writable until space is freed", self.cfg.store_dir, ratio,
                      self.limits.warning_ratio * 100)
        elif before & flags.NOT_WRITABLE_DISK_FULL and not after & flags.NOT_WRITABLE_DISK_FULL:
            log.warning("disk of %s back to %.1f%%: store writable again", self.cfg.store_dir, ratio)
        if after & flags.DISK_CLEAN_FORCIBLY and not before & flags.DISK_CLEAN_FORCIBLY:
            log.warning("disk of %s is %.1f%% full (above diskSpaceCleanForciblyRatio=%.0f%%): the oldest "
                        "files will be deleted even if not expired", self.cfg.store_dir, ratio,
                        self.limits.clean_forcibly_ratio * 100)

    def maybe_ask_writer_to_retry(self, now: float) -> None:
        writer_flags = self.positions.writer_flags
        if now < self.next_retry or not disk.writer_may_retry(writer_flags, self.disk_state, self.file_size):
            return
        self.next_retry = now + self.clean_interval_s
        self.positions.set_write_retry_seq(self.positions.write_retry_seq + 1)
        log.warning("writer flagged %s; the disk has %d bytes free again: asking it to retry",
                    "/".join(flags.describe(writer_flags, 0)), self.disk_state.usage.available_bytes)

    def teardown(self) -> None:
        self.store_cleaner.close()


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Cleaner, argv)


if __name__ == "__main__":
    raise SystemExit(main())
