"""Writer: the single process that appends to the CommitLog (group commit's producer side).

Reads shm:   ring "request" (front -> writer), positions.cleaner_flags (disk full),
             positions.write_retry_seq (cleaner: the disk has room again after a write error)
Writes shm:  ring "ack" (writer -> front), positions.write_pos, put_* counters, writer_flags,
             heartbeats[writer]; rings doorbells "dispatch" and (SYNC_FLUSH) "flush"
Files:       commitlog/* (read-write mmap), checkpoint and consumequeue/* during boot recovery
On crash:    the supervisor restarts the whole broker tree (policy RESTART_ALL): boot recovery runs
             again from the checkpoint, so the writer never resumes on a half-known tail.

One wake-up = one group: drain every AppendRequest in the ring, append each with one copy into
the mmap (rmqd.store.commit_log.CommitLog.append_records), publish write_pos ONCE, push the
AppendResults and ring the front, the dispatcher and (SYNC_FLUSH) the flusher once. The writer
never waits for anything but the page cache: the fdatasync of a SYNC_FLUSH group is the flusher's,
and the front holds those acks until flush_pos passes them.
"""

from __future__ import annotations

import errno
import logging
import time

from rmqd.errors import RecordTooLargeError
from rmqd.store import append_request as ar
from rmqd.store.commit_log import CommitLog
from rmqd.store.recovery import recover_store
from shm import flags
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.writer")


class Writer(WorkerProcess):
    name = "writer"

    def setup(self) -> None:
        cfg = self.cfg
        started = time.monotonic()
        result = recover_store(
            cfg.store_dir,
            commitlog_file_size=cfg.mappedFileSizeCommitLog,
            cq_file_size=cfg.mappedFileSizeConsumeQueue,
            abnormal=self.abnormal,
            delay_levels_ms=cfg.delay_levels_ms,
            index_enabled=cfg.messageIndexEnable,
            max_hash_slots=cfg.maxHashSlotNum,
            max_index_count=cfg.maxIndexNum,
        )
        log.info(
            "%s recovery done in %.3f s: write_pos %d, %d records scanned, %d bytes truncated, %d queues",
            "abnormal" if self.abnormal else "normal",
            time.monotonic() - started,
            result.write_pos,
            result.records_scanned,
            result.truncated_bytes,
            len(result.queue_offsets),
        )
        self.commit_log = CommitLog(cfg.store_dir, cfg.mappedFileSizeCommitLog, readonly=False,
                                    warm=cfg.warm_commit_log)
        self.commit_log.set_write_pos(result.write_pos)
        self.commit_log.open_for_append()
        self.queue_offsets: dict[tuple[bytes, int], int] = {
            (topic.encode(), qid): offset for (topic, qid), offset in result.queue_offsets.items()
        }
        self.requests = self.shm.rings["request"]
        self.acks = self.shm.rings["ack"]
        self.positions = self.shm.positions
        self.positions.set_write_pos(result.write_pos)
        self.sync_flush = cfg.flush_sync
        self.write_error = False
        self.retry_seq_seen = self.positions.write_retry_seq
        self.add_wait_source(self.requests.doorbell, self.requests.ready)

    def run_once(self) -> bool:
        if self.write_error and self.positions.write_retry_seq != self.retry_seq_seen:
            self._clear_write_error()  # checked while idle too: the front sends nothing meanwhile
        entries = self.requests.entries()
        if not entries:
            return False
        now_ms = time.time_ns() // 1_000_000
        disk_full = bool(self.positions.cleaner_flags & flags.NOT_WRITABLE_DISK_FULL)
        messages = 0
        start_pos = self.commit_log.write_pos
        for _kind, entry in entries:
            request = ar.decode_append_request(entry)
            if disk_full or self.write_error:
                self._ack(request.request_id, ar.PutStatus.SERVICE_NOT_AVAILABLE, -1, [])
                continue
            messages += self._append(request, now_ms)
        self.requests.release()
        self._publish(messages, self.commit_log.write_pos - start_pos)
        return True

    def _append(self, request: ar.AppendRequest, now_ms: int) -> int:
        key = (request.topic, request.queue_id)
        queue_offset = self.queue_offsets.get(key, 0)
        try:
            phys = self.commit_log.append_records(request.records, request.record_count, queue_offset, now_ms)
        except RecordTooLargeError as exc:
            log.warning(
                "rejected request %d for %s-%d: %s",
                request.request_id,
                request.topic.decode(),
                request.queue_id,
                exc,
            )
            self._ack(request.request_id, ar.PutStatus.MESSAGE_ILLEGAL, -1, [])
            return 0
        except OSError as exc:
            self._flag_write_error(exc)
            self._ack(request.request_id, ar.PutStatus.UNKNOWN_ERROR, -1, [])
            return 0
        self.queue_offsets[key] = queue_offset + request.record_count
        self._ack(request.request_id, ar.PutStatus.PUT_OK, queue_offset, phys)
        return request.record_count

    def _flag_write_error(self, exc: OSError) -> None:
        """Store-wide failure is a flag: the front answers SERVICE_NOT_AVAILABLE from now on."""
        self.write_error = True
        no_space = flags.WRITE_ERROR_NO_SPACE if exc.errno == errno.ENOSPC else 0
        self.positions.set_writer_flags(self.positions.writer_flags | flags.WRITE_ERROR | no_space)
        reason = "disk full" if no_space else "I/O error"
        log.error(
            "CommitLog append failed at write_pos %d (%s: %s); store flagged not writable",
            self.commit_log.write_pos,
            reason,
            exc,
        )

    def _clear_write_error(self) -> None:
        """The cleaner saw room on the disk again (write_retry_seq moved): try appending again."""
        self.retry_seq_seen = self.positions.write_retry_seq
        self.write_error = False
        cleared = self.positions.writer_flags & ~(flags.WRITE_ERROR | flags.WRITE_ERROR_NO_SPACE)
        self.positions.set_writer_flags(cleared)
        log.warning("retrying CommitLog appends at write_pos %d after the write error",
                    self.commit_log.write_pos)

    def _ack(self, request_id: int, status: ar.PutStatus, queue_offset: int, phys: list[int]) -> None:
        size = ar.append_result_size(len(phys))
        view = self.acks.reserve(size)
        if view is None:
            # The front bounds requests in flight far below the ack ring's capacity; if it is full
            # anyway the front is gone or stuck: drop the ack, the producer times out and retries.
            log.warning("ack ring full; dropped the result of request %d", request_id)
            return
        ar.encode_append_result(view, request_id, status, queue_offset, self.commit_log.write_pos, phys)
        self.acks.commit(0)

    def _publish(self, messages: int, record_bytes: int) -> None:
        positions = self.positions
        positions.set_write_pos(self.commit_log.write_pos)
        positions.set_put_messages_total(positions.put_messages_total + messages)
        positions.set_put_bytes_total(positions.put_bytes_total + record_bytes)
        positions.set_write_groups_total(positions.write_groups_total + 1)
        self.acks.publish()
        self.shm.doorbells["dispatch"].ring()
        if self.sync_flush:
            self.shm.doorbells["flush"].ring()

    def teardown(self) -> None:
        # Finish what the front already handed over (graceful stop: "finish batches").
        deadline = time.monotonic() + 5.0
        while self.run_once() and time.monotonic() < deadline:
            pass
        self.commit_log.close()


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Writer, argv)


if __name__ == "__main__":
    raise SystemExit(main())
