"""Local consumer offsets for BROADCASTING consumers (RocketMQ LocalFileOffsetStore).

File (optional; JSON, written tmp -> fsync -> rename so a crash leaves the old or the new copy):
    {"group": "cg", "offsets": [[topic, broker_name, queue_id, next_queue_offset], ...]}

Not thread-safe: the consumer calls it under its own lock.
"""
from __future__ import annotations

import os

import orjson

from rmqd.errors import MQClientError
from rmqd.message import MessageQueue


class LocalOffsetStore:
    """Offsets kept in memory, and in `path` when one is given."""

    def __init__(self, group: str, path: str | None) -> None:
        self.group = group
        self.path = path
        self.offsets: dict[MessageQueue, int] = {}

    def load(self) -> None:
        """Read `path` if it exists; raises MQClientError naming the file when it is unreadable."""
        if not self.path:
            return
        try:
            with open(self.path, "rb") as file:
                rows = orjson.loads(file.read())["offsets"]
            self.offsets = {MessageQueue(str(t), str(b), int(q)): int(o) for t, b, q, o in rows}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MQClientError(f"offset store {self.path} is unreadable: {exc}") from exc

    def get(self, queue: MessageQueue) -> int | None:
        return self.offsets.get(queue)

    def update(self, queue: MessageQueue, offset: int) -> None:
        self.offsets[queue] = offset

    def persist(self) -> None:
        """Write every offset to `path` (no-op without one)."""
        if not self.path:
            return
        rows = [[queue.topic, queue.broker_name, queue.queue_id, offset]
                for queue, offset in sorted(self.offsets.items())]
        tmp_path = f"{self.path}.tmp"
        with open(tmp_path, "wb") as tmp:
            tmp.write(orjson.dumps({"group": self.group, "offsets": rows}))
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, self.path)
