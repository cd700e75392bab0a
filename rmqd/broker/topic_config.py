"""Topic configuration of one broker: `{store}/config/topics.json`, RocketMQ's TopicConfigManager.

File format (RocketMQ's, so operators' tooling reads it):

    {"topicConfigTable": {"Orders": {"topicName": "Orders", "readQueueNums": 8,
                                     "writeQueueNums": 8, "perm": 6, "topicFilterType": "SINGLE_TAG",
                                     "topicSysFlag": 0, "order": false}, ...},
     "dataVersion": {"timestamp": 1700000000000, "counter": 3}}

Written tmp -> fsync -> rename with a `.bak` of the previous version (rmqd.store.files).
Owned by the front process (the only process that serves topic commands); not thread-safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rmqd.broker.config_table import ConfigTable

PERM_PRIORITY = 0x8
PERM_READ = 0x4
PERM_WRITE = 0x2
PERM_INHERIT = 0x1

TOPIC_NAME_RE = re.compile(r"^[%|a-zA-Z0-9_-]+$")
TOPIC_MAX_LENGTH = 127

AUTO_CREATE_TOPIC_KEY_TOPIC = "TBW102"
SELF_TEST_TOPIC = "SELF_TEST_TOPIC"
OFFSET_MOVED_EVENT = "OFFSET_MOVED_EVENT"
SCHEDULE_TOPIC = "SCHEDULE_TOPIC_XXXX"
TRANS_HALF_TOPIC = "RMQ_SYS_TRANS_HALF_TOPIC"
TRANS_OP_HALF_TOPIC = "RMQ_SYS_TRANS_OP_HALF_TOPIC"
SYSTEM_TOPICS = frozenset(
    {
        AUTO_CREATE_TOPIC_KEY_TOPIC,
        SELF_TEST_TOPIC,
        OFFSET_MOVED_EVENT,
        SCHEDULE_TOPIC,
        TRANS_HALF_TOPIC,
        TRANS_OP_HALF_TOPIC,
    }
)


@dataclass
class TopicConfig:
    topicName: str  # noqa: N815 - RocketMQ's JSON field names
    readQueueNums: int = 16  # noqa: N815
    writeQueueNums: int = 16  # noqa: N815
    perm: int = PERM_READ | PERM_WRITE
    topicFilterType: str = "SINGLE_TAG"  # noqa: N815
    topicSysFlag: int = 0  # noqa: N815
    order: bool = False

    @property
    def writable(self) -> bool:
        return bool(self.perm & PERM_WRITE)

    @property
    def readable(self) -> bool:
        return bool(self.perm & PERM_READ)


def topic_name_problem(topic: str) -> str | None:
    """Why `topic` is not a valid topic name, or None if it is."""
    if not topic:
        return "the topic name is empty"
    if len(topic) > TOPIC_MAX_LENGTH:
        return f"the topic name is {len(topic)} characters long; at most {TOPIC_MAX_LENGTH} are allowed"
    if not TOPIC_NAME_RE.match(topic):
        return f"the topic name {topic!r} has characters outside [%|a-zA-Z0-9_-]"
    return None


class TopicConfigManager(ConfigTable[TopicConfig]):
    """The broker's topic table, persisted to `path` (rmqd.broker.config_table)."""

    TABLE_KEY = "topicConfigTable"

    def __init__(
        self, path: str, *, cluster_name: str, broker_name: str, auto_create: bool, default_queue_nums: int
    ) -> None:
        super().__init__(path)
        self.topics = self.entries  # the same dict, under its domain name
        for name, raw in self._read_table().items():
            fields = {k: v for k, v in raw.items() if k in TopicConfig.__dataclass_fields__}
            fields["topicName"] = name
            self.topics[name] = TopicConfig(**fields)
        self._add_system_topics(cluster_name, broker_name, auto_create, default_queue_nums)

    def _add_system_topics(self, cluster: str, broker: str, auto_create: bool, queue_nums: int) -> None:
        wanted = [
            TopicConfig(SELF_TEST_TOPIC, 1, 1),
            TopicConfig(OFFSET_MOVED_EVENT, 1, 1),
            TopicConfig(SCHEDULE_TOPIC, 18, 18),
            TopicConfig(cluster, 16, 16, PERM_READ | PERM_WRITE),
            TopicConfig(broker, 1, 1, PERM_READ | PERM_WRITE),
        ]
        if auto_create:
            wanted.append(
                TopicConfig(
                    AUTO_CREATE_TOPIC_KEY_TOPIC, queue_nums, queue_nums, PERM_INHERIT | PERM_READ | PERM_WRITE
                )
            )
        for config in wanted:
            self.topics.setdefault(config.topicName, config)

    def update(self, config: TopicConfig) -> None:
        """Create or replace a topic and persist the table."""
        self._put(config.topicName, config)

    def create_in_send(self, topic: str, default_topic: str, queue_nums: int) -> TopicConfig | None:
        """RocketMQ's createTopicInSendMessageMethod: derive a new topic from an inheritable default.

        Returns the new config, or None when the default topic is missing or not inheritable
        (autoCreateTopicEnable=false removes TBW102, which is how auto-creation is switched off).
        """
        template = self.topics.get(default_topic)
        if template is None or not template.perm & PERM_INHERIT:
            return None
        nums = max(1, min(queue_nums, template.writeQueueNums))
        config = TopicConfig(topic, nums, nums, template.perm & ~PERM_INHERIT)
        self.update(config)
        return config
