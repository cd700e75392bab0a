"""Store recovery at broker start: make CommitLog, ConsumeQueues, index and checkpoint agree again.

Called once, by the supervisor (or writer) before any other process opens the store for writing.
Work is bounded by the data written after the checkpoint, never by the store size:

  1. load the checkpoint (a corrupt one is logged and replaced by a scan from the first file);
  2. scan the CommitLog from min(cq_dispatch_pos, commitlog_flush_pos, index_dispatch_pos) (and
     from up to 1 MiB before it, at least its last record: RECHECK_BEFORE_CHECKPOINT_BYTES),
     validating every record (magic, sizes, body CRC, PHYSICALOFFSET), zero the torn tail in
     place and delete files past it (CommitLog.recover); the end found is the new write position;
  3. cut ConsumeQueue units (every queue, only its last file(s)) that point at or past that end,
     and index entries (newest files) at or past index_dispatch_pos;
  4. re-put the ConsumeQueue unit of every record from cq_dispatch_pos to the end (idempotent;
     dispatch.py decides the unit, skipping prepared/rolled-back transactional records), and
     re-index the keys of every record from index_dispatch_pos (both by dispatch.dispatch_range,
     the dispatcher's code);
  5. fsync the CommitLog range scanned, the ConsumeQueues and the index, then write the
     checkpoint with commitlog_flush_pos = cq_dispatch_pos = index_dispatch_pos = end.

Normal and abnormal starts run the same steps: after a clean stop they find nothing to cut or
re-put, and running them anyway protects against a dispatcher that stopped early. `abnormal`
only changes how loudly a cut is logged.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

from rmqd.errors import CorruptFileError
from rmqd.store.checkpoint import Checkpoint, CheckpointData
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import DEFAULT_CQ_FILE_SIZE, ConsumeQueueStore
from rmqd.store.dispatch import DEFAULT_DELAY_LEVELS_MS, dispatch_range
from rmqd.store.index_file import DEFAULT_MAX_HASH_SLOTS, DEFAULT_MAX_INDEX_COUNT, IndexService

log = logging.getLogger("rmqd.store")

CHECKPOINT_FILE_NAME = "checkpoint"
# Records this far before the checkpoint position are validated again (at least the last one):
# a record can be damaged after the checkpoint vouched for it (a clean stop, then a torn copy or a
# bad disk), and RocketMQ's normal recovery rescans its last files for that reason. 1 MiB costs a
# few ms of CRC and decoding; see CommitLog.boundary_before for the hop that finds the start.
RECHECK_BEFORE_CHECKPOINT_BYTES = 1 << 20


@dataclasses.dataclass
class RecoveryResult:
    write_pos: int  # CommitLog end: where the writer appends next
    queue_offsets: dict[tuple[str, int], int]  # (topic, queue_id) -> next queue_offset
    records_scanned: int
    truncated_bytes: int  # CommitLog bytes of data zeroed or deleted past the end
    cq_units_redispatched: int = 0
    cq_units_cut: int = 0
    index_keys_rebuilt: int = 0
    index_entries_cut: int = 0
    checkpoint: CheckpointData = dataclasses.field(default_factory=CheckpointData)


@dataclasses.dataclass
class _Stores:
    commit_log: CommitLog
    cq_store: ConsumeQueueStore
    index: IndexService | None


def load_checkpoint_or_zero(store_dir: str) -> CheckpointData:
    """The checkpoint, or zeros (= scan from the first file) if it is corrupt (logged)."""
    checkpoint = Checkpoint(os.path.join(store_dir, CHECKPOINT_FILE_NAME))
    try:
        return checkpoint.load()
    except CorruptFileError as err:
        log.error("ignoring corrupt checkpoint (%s); recovery scans the CommitLog from its first file", err)
        return CheckpointData()


def recover_store(store_dir: str, *, commitlog_file_size: int, cq_file_size: int = DEFAULT_CQ_FILE_SIZE,
                  abnormal: bool, delay_levels_ms: Sequence[int] = DEFAULT_DELAY_LEVELS_MS,
                  index_enabled: bool = False, max_hash_slots: int = DEFAULT_MAX_HASH_SLOTS,
                  max_index_count: int = DEFAULT_MAX_INDEX_COUNT,
                  recheck_bytes: int = RECHECK_BEFORE_CHECKPOINT_BYTES) -> RecoveryResult:
    """Recover the store in `store_dir` (see the module docstring). Returns what the writer needs.

    `index_enabled` (RocketMQ messageIndexEnable) also repairs and extends the index files; turn it
    on together with a dispatcher that maintains the index and checkpoint.index_dispatch_pos.
    """
    data = load_checkpoint_or_zero(store_dir)
    log.info("store recovery (%s start) of %s from checkpoint %s",
             "abnormal" if abnormal else "normal", store_dir, data)
    index = None
    if index_enabled:
        index = IndexService(store_dir, max_hash_slots=max_hash_slots, max_index_count=max_index_count,
                             readonly=False)
    stores = _Stores(CommitLog(store_dir, commitlog_file_size, readonly=False),
                     ConsumeQueueStore(store_dir, cq_file_size, readonly=False), index)
    try:
        result = _recover(stores, data, abnormal, delay_levels_ms, recheck_bytes)
        Checkpoint(os.path.join(store_dir, CHECKPOINT_FILE_NAME)).store(result.checkpoint)
    finally:
        stores.cq_store.close_all()
        stores.commit_log.close()
        if index is not None:
            index.close()
    log.info("store recovery done: write_pos %d, %d records scanned, %d bytes cut, %d units re-put, "
             "%d units cut, %d keys re-indexed, %d index entries cut, %d queues",
             result.write_pos, result.records_scanned, result.truncated_bytes,
             result.cq_units_redispatched, result.cq_units_cut, result.index_keys_rebuilt,
             result.index_entries_cut, len(result.queue_offsets))
    return result


def _recover(stores: _Stores, data: CheckpointData, abnormal: bool, delay_levels_ms: Sequence[int],
             recheck_bytes: int) -> RecoveryResult:
    commit_log, cq_store, index = stores.commit_log, stores.cq_store, stores.index
    min_phy = commit_log.min_offset()
    index_pos = data.index_dispatch_pos if index is not None else data.cq_dispatch_pos
    checkpoint_pos = max(min(data.cq_dispatch_pos, data.commitlog_flush_pos, index_pos), min_phy)
    scan_start = max(commit_log.boundary_before(checkpoint_pos, recheck_bytes), min_phy)
    end = commit_log.recover(scan_start)
    if commit_log.truncated_bytes and not abnormal:
        log.warning("CommitLog had a torn tail after a clean stop; %d bytes cut", commit_log.truncated_bytes)
    result = RecoveryResult(end, {}, commit_log.records_scanned, commit_log.truncated_bytes)
    result.cq_units_cut = sum(cq_store.get(*key).truncate_beyond(end) for key in cq_store.list_queues())
    cq_start = min(max(data.cq_dispatch_pos, min_phy), end)
    index_start = min(max(index_pos, min_phy), end)
    # Index entries are appended, not put at a fixed place like CQ units: cut every entry from
    # index_start (not only past the end) so that the re-index below is exact, even for a record
    # whose first key was indexed and its second not when the dispatcher died.
    result.index_entries_cut = index.truncate_beyond(index_start) if index is not None else 0
    last_store_ms = _redispatch(stores, cq_start, index_start, end, delay_levels_ms, result)
    commit_log.set_flushed_pos(min(scan_start, end))
    commit_log.flush(end)
    cq_store.flush_all()
    if index is not None:
        index.flush()
    result.queue_offsets = {key: cq_store.get(*key).max_offset() for key in cq_store.list_queues()}
    result.checkpoint = dataclasses.replace(
        data, commitlog_flush_pos=end, cq_dispatch_pos=end,
        index_dispatch_pos=end if index is not None else min(data.index_dispatch_pos, end))
    if last_store_ms:
        stamps = result.checkpoint
        stamps.physic_msg_timestamp_ms = max(stamps.physic_msg_timestamp_ms, last_store_ms)
        stamps.logics_msg_timestamp_ms = max(stamps.logics_msg_timestamp_ms, last_store_ms)
        if index is not None:
            stamps.index_msg_timestamp_ms = max(stamps.index_msg_timestamp_ms, last_store_ms)
    return result


def _redispatch(stores: _Stores, cq_start: int, index_start: int, end: int, delay_levels_ms: Sequence[int],
                result: RecoveryResult) -> int:
    """Re-put CQ units from cq_start and index keys from index_start up to end; returns last store time.

    The dispatcher's code (dispatch.dispatch_range), so recovery writes what the dispatcher would.
    """
    done = dispatch_range(stores.commit_log, stores.cq_store, stores.index, min(cq_start, index_start), end,
                          delay_levels_ms, cq_from=cq_start, index_from=index_start)
    if done.error is not None:
        raise done.error
    result.cq_units_redispatched += done.cq_units
    result.index_keys_rebuilt += done.index_keys
    return done.last_store_ms
