"""Consumer offset stores: on the broker (CLUSTERING) or in a local file (BROADCASTING).

An offset is the next queue offset to consume. Both stores keep the latest offset of each queue in
memory (`update`, cheap, called after every consumed batch) and write them out on `persist` (every
persistConsumerOffsetInterval = 5 s, when a queue is given up, and at shutdown):

- RemoteBrokerOffsetStore (RocketMQ RemoteBrokerOffsetStore): UPDATE_CONSUMER_OFFSET to the broker
  of each queue, every persist, changed or not (as RocketMQ's persistAll: a broker restarted after
  a kill -9 lost its last seconds of commits and re-learns them within one interval);
  `read_from_store` asks the broker (QUERY_CONSUMER_OFFSET). The broker writes
  config/consumerOffset.json every 5 s.
- LocalFileOffsetStore (RocketMQ LocalFileOffsetStore): one JSON file per client and group, written
  tmp -> fsync -> rename, so a crash leaves the previous or the new copy, never half of one:

      {local_offset_store_dir}/{client ip}@{instance_name}/{group}/offsets.json
      {"group": "cg", "offsetTable": [{"topic": "T", "brokerName": "broker-a", "queueId": 0,
                                       "offset": 12}, ...]}

  `local_offset_store_dir` defaults to $RMQD_LOCAL_OFFSET_STORE_DIR, else ~/.rmqd_offsets
  (RocketMQ: -Drocketmq.client.localOffsetStoreDir, else ~/.rocketmq_offsets). The path does not
  depend on the process id, so a restarted consumer with the same instance name finds its offsets;
  two broadcasting consumers of one group on one host need different instance names (one process
  refuses to open the same file twice).

Thread-safe: every method takes the store's lock; network waits happen outside it.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError

import orjson

from rmqd.errors import ClientError, MQClientError, RemotingTimeoutError, RmqError
from rmqd.message import MessageQueue

log = logging.getLogger(__name__)

LOCAL_OFFSET_STORE_DIR_ENV = "RMQD_LOCAL_OFFSET_STORE_DIR"
DEFAULT_LOCAL_OFFSET_STORE_DIR = "~/.rmqd_offsets"
PERSIST_WAIT_S = 5.0  # how long persist() waits for the brokers' answers

_open_paths: set[str] = set()  # local offset files opened by live consumers of this process
_open_paths_lock = threading.Lock()


def local_offset_store_path(group: str, client_ip: str, instance_name: str,
                            store_dir: str | None = None) -> str:
    """Where a BROADCASTING consumer keeps its offsets (see the module docstring)."""
    root = store_dir or os.environ.get(LOCAL_OFFSET_STORE_DIR_ENV) or DEFAULT_LOCAL_OFFSET_STORE_DIR
    return os.path.join(os.path.expanduser(root), f"{client_ip}@{instance_name}", group, "offsets.json")


class _MemoryTable:
    """The in-memory part both stores share."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offsets: dict[MessageQueue, int] = {}

    def read(self, queue: MessageQueue) -> int | None:
        """The offset held in memory for `queue`, or None."""
        with self._lock:
            return self._offsets.get(queue)

    def update(self, queue: MessageQueue, offset: int, *, increase_only: bool = False) -> None:
        """Remember `offset` for `queue`; with `increase_only`, never move it backwards."""
        with self._lock:
            old = self._offsets.get(queue)
            if old is None or not increase_only or offset > old:
                self._offsets[queue] = offset

    def remove(self, queue: MessageQueue) -> None:
        with self._lock:
            self._offsets.pop(queue, None)

    def snapshot(self, queues: Iterable[MessageQueue] | None = None) -> dict[MessageQueue, int]:
        with self._lock:
            if queues is None:
                return dict(self._offsets)
            return {q: self._offsets[q] for q in queues if q in self._offsets}


class RemoteBrokerOffsetStore(_MemoryTable):
    """CLUSTERING offsets, persisted to the broker of each queue.

    Args:
        query: asks the broker for a queue's committed offset (None when it has none).
        commit_async: sends UPDATE_CONSUMER_OFFSET; the future fails on a broker error.
    """

    def __init__(self, query: Callable[[MessageQueue], int | None],
                 commit_async: Callable[[MessageQueue, int], Future]) -> None:
        super().__init__()
        self._query = query
        self._commit_async = commit_async

    def open(self) -> None:
        """Nothing to open: offsets are read from the broker queue by queue."""

    def close(self) -> None:
        """Nothing to close."""

    def read_from_store(self, queue: MessageQueue) -> int | None:
        """The broker's committed offset (also kept in memory); raises on network/broker errors."""
        offset = self._query(queue)
        if offset is not None:
            self.update(queue, offset)
        return offset

    def persist(self, queues: Iterable[MessageQueue] | None = None) -> list[RmqError]:
        """Send the offset of every queue of `queues` (all when None); return the errors, if any."""
        sent: list[tuple[MessageQueue, int, Future]] = []
        errors: list[RmqError] = []
        for queue, offset in self.snapshot(queues).items():
            try:
                sent.append((queue, offset, self._commit_async(queue, offset)))
            except RmqError as exc:
                errors.append(exc)
        for queue, offset, future in sent:
            try:
                future.result(timeout=PERSIST_WAIT_S)
            except FutureTimeoutError:
                errors.append(RemotingTimeoutError(f"offset {offset} of {queue} not confirmed in time"))
            except RmqError as exc:
                errors.append(exc)
        return errors


class LocalFileOffsetStore(_MemoryTable):
    """BROADCASTING offsets in a local JSON file (see the module docstring)."""

    def __init__(self, group: str, path: str) -> None:
        super().__init__()
        self.group = group
        self.path = os.path.abspath(path)

    def open(self) -> None:
        """Claim the file for this consumer and load it; raises MQClientError when another live
        consumer of this process has it open, or when it is unreadable."""
        with _open_paths_lock:
            if self.path in _open_paths:
                raise MQClientError(f"offset file {self.path} is in use by another consumer of this process; "
                                    f"give each broadcasting consumer its own instance_name")
            _open_paths.add(self.path)
        try:
            self.load()
        except MQClientError:
            self.close()
            raise

    def close(self) -> None:
        with _open_paths_lock:
            _open_paths.discard(self.path)

    def load(self) -> None:
        """Read the file if it exists; raises MQClientError naming the file when it is unreadable."""
        try:
            with open(self.path, "rb") as file:
                rows = orjson.loads(file.read())["offsetTable"]
            loaded = {MessageQueue(str(r["topic"]), str(r["brokerName"]), int(r["queueId"])): int(r["offset"])
                      for r in rows}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MQClientError(f"offset store {self.path} is unreadable: {exc}") from exc
        with self._lock:
            self._offsets.update(loaded)
        log.info("loaded %d offsets of group %s from %s", len(loaded), self.group, self.path)

    def read_from_store(self, queue: MessageQueue) -> int | None:
        """The offset loaded from the file (or updated since)."""
        return self.read(queue)

    def remove(self, queue: MessageQueue) -> None:
        """Keep the offset: a broadcasting consumer that gets the queue back resumes there (RocketMQ's
        LocalFileOffsetStore.removeOffset does nothing either)."""

    def persist(self, queues: Iterable[MessageQueue] | None = None) -> list[RmqError]:
        """Write every offset held (the file is one document); return the errors, if any."""
        rows = [{"topic": q.topic, "brokerName": q.broker_name, "queueId": q.queue_id, "offset": o}
                for q, o in sorted(self.snapshot().items())]
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp_path = f"{self.path}.tmp"
            document = {"group": self.group, "offsetTable": rows}
            with open(tmp_path, "wb") as tmp:
                tmp.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_path, self.path)
        except OSError as exc:
            return [ClientError(f"cannot write offset store {self.path}: {exc}")]
        return []
