"""Committed consumer offsets of clustering groups: `{store}/config/consumerOffset.json`.

RocketMQ's ConsumerOffsetManager format, so its tooling and habits carry over:

    {"offsetTable": {"Orders@cg": {"0": 1200, "1": 1187}, ...}}

An offset is the next queue offset the group will consume. The table lives in the front process
(the only process serving offset commands) and is persisted every flushConsumerOffsetInterval
(5 s) and at stop, tmp -> fsync -> rename with a `.bak`. A crash loses at most the commits of the
last interval, which consumers then see again (at-least-once). Not thread-safe.
"""

from __future__ import annotations

from rmqd.store.files import atomic_write_json, read_json_with_bak

TOPIC_GROUP_SEPARATOR = "@"


class ConsumerOffsetManager:
    def __init__(self, path: str) -> None:
        self.path = path
        self.table: dict[str, dict[int, int]] = {}
        self.dirty = False
        data = read_json_with_bak(path) or {}
        for key, queues in data.get("offsetTable", {}).items():
            self.table[key] = {int(qid): int(offset) for qid, offset in queues.items()}

    @staticmethod
    def key(topic: str, group: str) -> str:
        return f"{topic}{TOPIC_GROUP_SEPARATOR}{group}"

    def commit(self, group: str, topic: str, queue_id: int, queue_offset: int) -> None:
        queues = self.table.setdefault(self.key(topic, group), {})
        if queues.get(queue_id) != queue_offset:
            queues[queue_id] = queue_offset
            self.dirty = True

    def query(self, group: str, topic: str, queue_id: int) -> int | None:
        return self.table.get(self.key(topic, group), {}).get(queue_id)

    def groups_of_topic(self, topic: str) -> list[str]:
        prefix = topic + TOPIC_GROUP_SEPARATOR
        return sorted(k[len(prefix) :] for k in self.table if k.startswith(prefix))

    def offsets_of(self, group: str, topic: str) -> dict[int, int]:
        return dict(self.table.get(self.key(topic, group), {}))

    def all_entries(self) -> dict[str, dict[int, int]]:
        return {k: dict(v) for k, v in self.table.items()}

    def maybe_persist(self) -> bool:
        """Write the table if anything changed since the last write; return whether it wrote."""
        if not self.dirty:
            return False
        self.persist()
        return True

    def persist(self) -> None:
        encoded = {k: {str(q): o for q, o in sorted(v.items())} for k, v in sorted(self.table.items())}
        atomic_write_json(self.path, {"offsetTable": encoded})
        self.dirty = False
