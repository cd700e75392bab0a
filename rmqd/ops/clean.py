"""Deleting old store files: RocketMQ's CleanCommitLogService and CleanConsumeQueueService.

Called by the cleaner process (workers/cleaner.py) every cleanResourceInterval (10 s), and at once
after `mqadmin deleteExpiredCommitLog`. One pass:

1. Decide (`plan_pass`) whether CommitLog files may go now, from the hour, the disk and manual
   requests (RocketMQ deleteExpiredFiles):
     - the current local hour is in deleteWhen ("04", a ';' list), or
     - the disk is above diskMaxUsedSpaceRatio (75 %), or
     - a manual request is pending (each request allows MANUAL_DELETE_PASSES passes, as RocketMQ's
       manualDeleteFileSeveralTimes = 20).
   Above diskSpaceCleanForciblyRatio (85 %) with cleanFileForciblyEnable the pass deletes the
   oldest files even if they have not expired ("clean at once").
2. Pick files (`select_commitlog_files`), oldest first: a file goes when its last modification is
   older than fileReservedTime (48 h), or always when cleaning at once. The scan stops at the first
   file that must stay, so no file in the middle is ever deleted (a clock that jumped must not punch
   holes in the log), at DELETE_FILES_BATCH_MAX (10) files, and at `deletable_end`: never the file
   holding write_pos, never the last file, never a byte not yet dispatched and flushed.
3. Delete them one by one, deleteCommitLogFilesInterval (100 ms) apart: publish the new
   min_phy_offset FIRST (readers then treat the file as gone), drop its page cache, unlink it.
4. When the CommitLog min offset moved, delete ConsumeQueue files whose every unit points below it
   (deleteConsumeQueueFilesInterval after each queue that lost files) and IndexFiles wholly below it.
5. If anything was deleted, bump `files_deleted_seq`: every broker process then drops its mappings
   of deleted files (workers/base.py), which is what actually frees their disk blocks.

The clock (epoch seconds), the sleep and the shm positions are injected, so every rule is testable
without waiting for 04:00. Not thread-safe: one StoreCleaner per process.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rmqd.config import BrokerConfig
from rmqd.errors import StoreError
from rmqd.ops.disk import DiskState
from rmqd.store.consume_queue import ConsumeQueue, ConsumeQueueStore
from rmqd.store.index_file import IndexService
from rmqd.store.mapped_file_queue import MappedFileQueue

log = logging.getLogger("rmqd.cleaner")

DELETE_FILES_BATCH_MAX = 10   # RocketMQ deleteFileBatchMax: CommitLog files per pass
MANUAL_DELETE_PASSES = 20     # RocketMQ MANUAL_DELETE_FILE_SEVERAL_TIMES

Clock = Callable[[], float]   # seconds since the epoch (time.time)
Sleep = Callable[[float], None]


class StorePositions(Protocol):
    """The shm positions a clean pass reads and publishes (shm.positions.Positions has them all)."""

    @property
    def write_pos(self) -> int: ...
    @property
    def dispatch_pos(self) -> int: ...
    @property
    def flush_pos(self) -> int: ...
    @property
    def cq_flush_pos(self) -> int: ...
    @property
    def files_deleted_seq(self) -> int: ...
    def set_min_phy_offset(self, value: int) -> None: ...
    def set_files_deleted_seq(self, value: int) -> None: ...


@dataclass(frozen=True)
class CleanPolicy:
    """The clean keys of broker.conf, in the units the rules use."""

    delete_hours: frozenset[int] = frozenset({4})
    file_reserved_s: float = 48 * 3600.0
    clean_forcibly_enable: bool = True
    delete_files_interval_s: float = 0.1
    delete_cq_interval_s: float = 0.1
    batch_max: int = DELETE_FILES_BATCH_MAX

    @classmethod
    def from_config(cls, cfg: BrokerConfig) -> CleanPolicy:
        return cls(frozenset(cfg.delete_hours), cfg.fileReservedTime * 3600.0, cfg.cleanFileForciblyEnable,
                   cfg.deleteCommitLogFilesInterval / 1000, cfg.deleteConsumeQueueFilesInterval / 1000)


@dataclass(frozen=True)
class PassPlan:
    """Whether CommitLog files may be deleted in this pass, and why."""

    run: bool
    clean_at_once: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class CommitLogFile:
    start: int
    end: int
    mtime_s: float
    path: str


@dataclass
class PassResult:
    plan: PassPlan
    commitlog_deleted: list[str] = field(default_factory=list)
    consume_queue_files_deleted: int = 0
    index_files_deleted: int = 0

    @property
    def deleted_anything(self) -> bool:
        return bool(self.commitlog_deleted or self.consume_queue_files_deleted or self.index_files_deleted)


def is_time_to_delete(policy: CleanPolicy, now_s: float) -> bool:
    """The local hour of `now_s` is one of deleteWhen's hours (RocketMQ UtilAll.isItTimeToDo)."""
    return time.localtime(now_s).tm_hour in policy.delete_hours


def plan_pass(policy: CleanPolicy, now_s: float, disk: DiskState, manual: bool) -> PassPlan:
    """RocketMQ deleteExpiredFiles' condition: time up, disk above 75 %, or a manual request."""
    reasons = []
    if is_time_to_delete(policy, now_s):
        reasons.append(f"hour {time.localtime(now_s).tm_hour:02d} is in deleteWhen")
    if disk.space_to_delete:
        reasons.append(f"disk {disk.usage.used_ratio:.1%} used")
    if manual:
        reasons.append("manual request (deleteExpiredCommitLog)")
    clean_at_once = bool(reasons) and policy.clean_forcibly_enable and disk.clean_immediately
    return PassPlan(bool(reasons), clean_at_once, tuple(reasons))


def deletable_end(write_pos: int, dispatch_pos: int, flush_pos: int, cq_flush_pos: int,
                  file_size: int) -> int:
    """phy_offset below which files may be deleted: not the file being written, nothing undispatched
    (the ConsumeQueue must exist for what it points at) and nothing unflushed."""
    return min(write_pos - write_pos % file_size, dispatch_pos, flush_pos, cq_flush_pos)


def select_commitlog_files(files: Sequence[CommitLogFile], now_s: float, policy: CleanPolicy,
                           clean_at_once: bool, safe_end: int) -> list[CommitLogFile]:
    """RocketMQ deleteExpiredFileByTime: the oldest files that may go, stopping at the first that stays."""
    chosen: list[CommitLogFile] = []
    for candidate in files[:-1]:  # never the last file
        if candidate.end > safe_end:
            break
        expired = now_s >= candidate.mtime_s + policy.file_reserved_s
        if not (expired or clean_at_once):
            break  # never delete a file in the middle
        chosen.append(candidate)
        if len(chosen) >= policy.batch_max:
            break
    return chosen


class StoreCleaner:
    """Runs clean passes over one store: CommitLog, ConsumeQueue and IndexFile."""

    def __init__(self, cfg: BrokerConfig, positions: StorePositions, *, clock: Clock = time.time,
                 sleep: Sleep = time.sleep, policy: CleanPolicy | None = None) -> None:
        self.cfg = cfg
        self.positions = positions
        self.clock = clock
        self.sleep = sleep
        self.policy = policy or CleanPolicy.from_config(cfg)
        self.file_size = cfg.mappedFileSizeCommitLog
        self.commitlog = MappedFileQueue(cfg.commitlog_dir, self.file_size, readonly=True,
                                         warm=cfg.warm_commit_log)
        self.manual_passes_left = 0
        self.last_logic_min = 0  # RocketMQ lastPhysicalMinOffset: CQ/index cleaning ran up to here

    def request_manual(self) -> None:
        """`mqadmin deleteExpiredCommitLog`: expired files may go at any hour for the next passes."""
        self.manual_passes_left = MANUAL_DELETE_PASSES

    def run_pass(self, disk: DiskState) -> PassResult:
        manual = self.manual_passes_left > 0
        if manual:
            self.manual_passes_left -= 1
        now_s = self.clock()
        result = PassResult(plan_pass(self.policy, now_s, disk, manual))
        if result.plan.run:
            result.commitlog_deleted = self.delete_commitlog_files(result.plan, now_s)
            if not result.commitlog_deleted and disk.space_to_delete:
                log.warning("disk %.1f%% used but no CommitLog file could be deleted: %s",
                            disk.usage.used_ratio * 100, self.why_nothing_deletable(now_s))
        result.consume_queue_files_deleted, result.index_files_deleted = self.delete_logic_files()
        if result.deleted_anything:
            self.positions.set_files_deleted_seq(self.positions.files_deleted_seq + 1)
        return result

    def commitlog_files(self) -> list[CommitLogFile]:
        self.commitlog.refresh()
        files = []
        for mapped in self.commitlog.files:
            try:
                mtime_s = os.stat(mapped.path).st_mtime
            except FileNotFoundError:
                continue
            files.append(CommitLogFile(mapped.start_offset, mapped.start_offset + self.file_size, mtime_s,
                                       mapped.path))
        return files

    def safe_end(self) -> int:
        p = self.positions
        return deletable_end(p.write_pos, p.dispatch_pos, p.flush_pos, p.cq_flush_pos, self.file_size)

    def delete_commitlog_files(self, plan: PassPlan, now_s: float) -> list[str]:
        chosen = select_commitlog_files(self.commitlog_files(), now_s, self.policy, plan.clean_at_once,
                                        self.safe_end())
        deleted = []
        for index, candidate in enumerate(chosen):
            if index:
                self.sleep(self.policy.delete_files_interval_s)
            age_h = (now_s - candidate.mtime_s) / 3600
            reason = (f"{'forced (disk above diskSpaceCleanForciblyRatio), ' if plan.clean_at_once else ''}"
                      f"last written {age_h:.1f} h ago (fileReservedTime "
                      f"{self.policy.file_reserved_s / 3600:g} h); pass because {', '.join(plan.reasons)}")
            self.positions.set_min_phy_offset(candidate.end)  # readers see it gone before it is
            self._delete(candidate, reason)
            deleted.append(candidate.path)
        return deleted

    def _delete(self, candidate: CommitLogFile, reason: str) -> None:
        found = self.commitlog.find(candidate.start)
        drop_page_cache(candidate.path)
        if found is not None:
            self.commitlog.delete_file(found[0], reason)

    def why_nothing_deletable(self, now_s: float) -> str:
        files = self.commitlog_files()
        if len(files) < 2:
            return "only the file being written is left"
        first = files[0]
        if first.end > self.safe_end():
            return (f"the oldest file ends at {first.end}, past what is written, dispatched and flushed "
                    f"({self.safe_end()})")
        age_h = (now_s - first.mtime_s) / 3600
        return (f"the oldest file was written {age_h:.1f} h ago, within fileReservedTime "
                f"{self.policy.file_reserved_s / 3600:g} h, and forced cleaning is off or not due")

    def delete_logic_files(self) -> tuple[int, int]:
        """ConsumeQueue and IndexFile files wholly below the CommitLog min offset (when it moved)."""
        self.commitlog.refresh()
        min_phy = self.commitlog.min_offset()
        if min_phy <= self.last_logic_min:
            return 0, 0
        self.last_logic_min = min_phy
        return self.delete_consume_queue_files(min_phy), self.delete_index_files(min_phy)

    def delete_consume_queue_files(self, min_phy: int) -> int:
        cfg = self.cfg
        deleted = 0
        queues = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True).list_queues()
        for topic, queue_id in queues:
            try:
                queue = ConsumeQueue(cfg.store_dir, topic, queue_id, cfg.mappedFileSizeConsumeQueue,
                                     readonly=True)
            except (StoreError, ValueError, OSError) as exc:
                log.warning("cannot clean consumequeue %s/%d: %s", topic, queue_id, exc)
                continue
            try:
                count = queue.delete_files_before(min_phy)
            finally:
                queue.close()
            deleted += count
            if count and self.policy.delete_cq_interval_s:
                self.sleep(self.policy.delete_cq_interval_s)
        return deleted

    def delete_index_files(self, min_phy: int) -> int:
        cfg = self.cfg
        try:
            index = IndexService(cfg.store_dir, max_hash_slots=cfg.maxHashSlotNum,
                                 max_index_count=cfg.maxIndexNum, readonly=True)
        except (StoreError, ValueError, OSError) as exc:
            log.warning("cannot clean index files: %s", exc)
            return 0
        try:
            return index.delete_files_before(min_phy)
        finally:
            index.close()

    def close(self) -> None:
        self.commitlog.close()


def drop_page_cache(path: str) -> None:
    """Drop a file's clean pages before unlinking it, so they do not push hot data out (PERFORMANCE_NOTES)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
