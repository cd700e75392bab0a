"""The broker's request handlers off the hot path: topics, offsets, consumer groups, queries.

Each handler takes the decoded `Command` and returns a `Reply`; the front encodes and sends it.
Sends and pulls (the hot path, tied to the shared-memory rings) stay in `workers/front.py`.
Handlers never raise for bad input: a missing or malformed field is a ProtocolError that the
front turns into an INVALID_PARAMETER reply naming the field.

Runs in the front process; not thread-safe.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rmqd.broker.consumer_offsets import ConsumerOffsetManager
from rmqd.broker.subscription_group import SubscriptionGroupManager, parse_group_config
from rmqd.broker.topic_config import TopicConfig, TopicConfigManager, topic_name_problem
from rmqd.errors import ProtocolError, StoreError
from rmqd.ops.figures import runtime_figures
from rmqd.protocol import codec
from rmqd.protocol.codec import Command
from rmqd.protocol.commands import MAX_FRAME_BYTES, RequestCode, ResponseCode
from rmqd.store import record as rec
from rmqd.store.index_file import IndexService, index_keys_of
from shm import ShmError, open_broker_shm, shm_path_for_store

log = logging.getLogger("rmqd.front")
CLIENT_EXPIRED_S = 120.0  # RocketMQ's channelExpiredTimeout
DEFAULT_QUERY_MAX_NUM = 64  # RocketMQ's maxMsgsNumBatch: most messages one QUERY_MESSAGE returns
MAX_QUERY_CANDIDATES = 4096  # index entries one query may examine (see query_message)
QUERY_BODY_LIMIT_BYTES = MAX_FRAME_BYTES - (64 << 10)  # stay under the client's frame limit


@dataclass
class Reply:
    code: int = ResponseCode.SUCCESS
    remark: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    body: bytes | memoryview | list[bytes | memoryview] = b""  # a list: parts (codec.encode_response)


@dataclass
class ConsumerClient:
    client_id: str
    last_seen: float
    subscriptions: dict[str, str]  # topic -> expression
    message_model: str = "CLUSTERING"
    consume_from_where: str = "CONSUME_FROM_LAST_OFFSET"
    identity: bytes | None = None  # ZeroMQ routing identity of its connection (for NOTIFY pushes)


class ConsumerGroups:
    """Live consumers per group, from HEART_BEAT (RocketMQ's ConsumerManager).

    A group's membership changes when a client joins (first heartbeat), changes its subscriptions,
    unregisters, or is not heard from for `expired_after_s` (RocketMQ channelExpiredTimeout). Each
    change puts the group in `changed`; the front drains it with `take_notifications()` and pushes
    NOTIFY_CONSUMER_IDS_CHANGED to every remaining member, which then rebalances at once (RocketMQ's
    DefaultConsumerIdsChangeListener). Not thread-safe: used by the front's loop only.
    """

    def __init__(self, expired_after_s: float = CLIENT_EXPIRED_S) -> None:
        self.groups: dict[str, dict[str, ConsumerClient]] = {}
        self.expired_after_s = expired_after_s
        self.changed: set[str] = set()

    def heartbeat(self, client_id: str, data: dict, now: float, identity: bytes | None = None) -> list[str]:
        """Register the consumer data sets of one client; return groups whose membership changed."""
        changed = []
        for consumer in data.get("consumerDataSet") or []:
            group = str(consumer.get("groupName", ""))
            if not group:
                continue
            subs = {
                str(s.get("topic")): str(s.get("subString", "*"))
                for s in consumer.get("subscriptionDataSet") or []
                if s.get("topic")
            }
            members = self.groups.setdefault(group, {})
            previous = members.get(client_id)
            members[client_id] = ConsumerClient(
                client_id,
                now,
                subs,
                str(consumer.get("messageModel", "CLUSTERING")),
                str(consumer.get("consumeFromWhere", "CONSUME_FROM_LAST_OFFSET")),
                identity if identity is not None else (previous.identity if previous else None),
            )
            if previous is None:
                log.info("consumer %s joined group %s", client_id, group)
                changed.append(group)
            elif previous.subscriptions != subs:
                log.info("consumer %s of group %s changed its subscriptions to %s", client_id, group, subs)
                changed.append(group)
            if previous is None or previous.subscriptions != subs:
                self._warn_inconsistent(group)
        self.changed.update(changed)
        return changed

    def _warn_inconsistent(self, group: str) -> None:
        members = list(self.groups.get(group, {}).values())
        if len({tuple(sorted(m.subscriptions.items())) for m in members}) > 1:
            log.warning(
                "consumers of group %s subscribe differently: %s; messages may be lost or skipped; "
                "give every consumer of a group the same subscriptions",
                group,
                {m.client_id: m.subscriptions for m in members},
            )

    def unregister(self, client_id: str, group: str) -> bool:
        removed = self.groups.get(group, {}).pop(client_id, None) is not None
        if removed:
            log.info("consumer %s left group %s", client_id, group)
            self.changed.add(group)
        return removed

    def expire(self, now: float) -> list[str]:
        changed = []
        for group, members in self.groups.items():
            stale = [cid for cid, c in members.items() if now - c.last_seen > self.expired_after_s]
            for cid in stale:
                log.info(
                    "consumer %s of group %s expired (no heartbeat for %.0f s)",
                    cid,
                    group,
                    self.expired_after_s,
                )
                del members[cid]
            if stale:
                changed.append(group)
        self.changed.update(changed)
        return changed

    def client_ids(self, group: str) -> list[str]:
        return sorted(self.groups.get(group, {}))

    def take_notifications(self) -> list[tuple[bytes, str]]:
        """(identity, group) of every member to tell that its group changed; clears `changed`."""
        notices = [
            (client.identity, group)
            for group in sorted(self.changed)
            for client in self.groups.get(group, {}).values()
            if client.identity is not None
        ]
        self.changed.clear()
        return notices


def open_index_reader(cfg: Any) -> IndexService | None:
    """The front's read-only IndexService for QUERY_MESSAGE (None when messageIndexEnable=false).

    `cfg` is the BrokerConfig (messageIndexEnable, maxHashSlotNum, maxIndexNum, store_dir).
    """
    if not cfg.messageIndexEnable:
        return None
    return IndexService(cfg.store_dir, max_hash_slots=cfg.maxHashSlotNum, max_index_count=cfg.maxIndexNum,
                        readonly=True)


class AdminHandlers:
    """Topic, offset, consumer-group and query requests of one broker."""

    def __init__(
        self,
        *,
        topics: TopicConfigManager,
        offsets: ConsumerOffsetManager,
        consumers: ConsumerGroups,
        cq_store: Any,
        commit_log: Any,
        runtime_info: Callable[[], dict[str, Any]],
        on_topics_changed: Callable[[], None],
        shm: Any = None,
        index: Any = None,
        sub_groups: SubscriptionGroupManager | None = None,
    ) -> None:
        self.topics = topics
        self.sub_groups = sub_groups  # None: groups are not managed (library use, tests)
        self.offsets = offsets
        self.consumers = consumers
        self.cq_store = cq_store
        self.commit_log = commit_log
        self.runtime_info = runtime_info
        self.on_topics_changed = on_topics_changed
        self.index = index  # read-only IndexService; None when messageIndexEnable=false
        self._shm = shm  # BrokerShm; None: attached on first use (_broker_shm)
        self._shm_attach_tried = shm is not None
        self.table: dict[int, Callable[[Command], Reply]] = {
            RequestCode.UPDATE_AND_CREATE_TOPIC: self.update_topic,
            RequestCode.DELETE_TOPIC_IN_BROKER: self.delete_topic,
            RequestCode.GET_ALL_TOPIC_CONFIG: self.all_topic_config,
            RequestCode.GET_TOPIC_CONFIG: self.topic_config,
            RequestCode.QUERY_CONSUMER_OFFSET: self.query_consumer_offset,
            RequestCode.UPDATE_CONSUMER_OFFSET: self.update_consumer_offset,
            RequestCode.GET_ALL_CONSUMER_OFFSET: self.all_consumer_offsets,
            RequestCode.GET_MAX_OFFSET: self.max_offset,
            RequestCode.GET_MIN_OFFSET: self.min_offset,
            RequestCode.SEARCH_OFFSET_BY_TIMESTAMP: self.search_offset_by_timestamp,
            RequestCode.GET_EARLIEST_MSG_STORETIME: self.earliest_store_time,
            RequestCode.VIEW_MESSAGE_BY_ID: self.view_message_by_id,
            RequestCode.QUERY_MESSAGE: self.query_message,
            RequestCode.HEART_BEAT: self.heartbeat,
            RequestCode.UNREGISTER_CLIENT: self.unregister_client,
            RequestCode.GET_CONSUMER_LIST_BY_GROUP: self.consumer_list,
            RequestCode.GET_BROKER_RUNTIME_INFO: self.broker_runtime_info,
            RequestCode.DELETE_EXPIRED_COMMITLOG: self.delete_expired_commitlog,
            RequestCode.UPDATE_AND_CREATE_SUBSCRIPTIONGROUP: self.update_sub_group,
            RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG: self.all_sub_groups,
            RequestCode.GET_SUBSCRIPTIONGROUP_CONFIG: self.sub_group,
            RequestCode.DELETE_SUBSCRIPTIONGROUP: self.delete_sub_group,
        }

    # -- topics --------------------------------------------------------------------------------
    def update_topic(self, cmd: Command) -> Reply:
        topic = cmd.field_str("topic")
        problem = topic_name_problem(topic)
        if problem:
            return Reply(
                ResponseCode.INVALID_PARAMETER,
                f"{problem}; choose a name of [%|a-zA-Z0-9_-], at most 127 characters",
            )
        read_nums = cmd.field_int("readQueueNums", 16)
        write_nums = cmd.field_int("writeQueueNums", 16)
        if not (1 <= read_nums <= 1024 and 1 <= write_nums <= 1024):
            return Reply(
                ResponseCode.INVALID_PARAMETER,
                f"queue numbers must be 1..1024, got read {read_nums} write {write_nums}",
            )
        config = TopicConfig(
            topic,
            read_nums,
            write_nums,
            cmd.field_int("perm", 6),
            cmd.field_str("topicFilterType", "SINGLE_TAG"),
            cmd.field_int("topicSysFlag", 0),
            cmd.field_bool("order", False),
        )
        self.topics.update(config)
        log.info(
            "topic %s created/updated: read %d write %d perm %d", topic, read_nums, write_nums, config.perm
        )
        self.on_topics_changed()
        return Reply()

    def delete_topic(self, cmd: Command) -> Reply:
        topic = cmd.field_str("topic")
        if not self.topics.delete(topic):
            return Reply(ResponseCode.TOPIC_NOT_EXIST, f"topic {topic} does not exist on this broker")
        self.on_topics_changed()
        return Reply()

    def all_topic_config(self, cmd: Command) -> Reply:
        return Reply(body=codec.encode_json_body(self.topics.encode()))

    def topic_config(self, cmd: Command) -> Reply:
        topic = cmd.field_str("topic")
        config = self.topics.get(topic)
        if config is None:
            return Reply(ResponseCode.TOPIC_NOT_EXIST, f"topic {topic} does not exist on this broker")
        return Reply(body=codec.encode_json_body(self.topics.encode()["topicConfigTable"][topic]))

    # -- subscription groups -------------------------------------------------------------------
    def _groups(self) -> SubscriptionGroupManager:
        if self.sub_groups is None:
            raise ProtocolError("this broker does not manage subscription groups")
        return self.sub_groups

    def update_sub_group(self, cmd: Command) -> Reply:
        """UPDATE_AND_CREATE_SUBSCRIPTIONGROUP: the body is a SubscriptionGroupConfig as JSON."""
        try:
            config = parse_group_config(codec.decode_json_body(cmd.body, "subscription group body"))
        except ValueError as exc:
            return Reply(ResponseCode.INVALID_PARAMETER, f"bad subscription group: {exc}")
        self._groups().update(config)
        log.info("subscription group %s created/updated: %s", config.groupName, asdict(config))
        return Reply()

    def all_sub_groups(self, cmd: Command) -> Reply:
        return Reply(body=codec.encode_json_body(self._groups().encode()))

    def sub_group(self, cmd: Command) -> Reply:
        group = cmd.field_str("group")
        config = self._groups().get(group)
        if config is None:
            return Reply(ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST,
                         f"subscription group [{group}] does not exist on this broker")
        return Reply(body=codec.encode_json_body(asdict(config)))

    def delete_sub_group(self, cmd: Command) -> Reply:
        group = cmd.field_str("groupName")
        if not self._groups().delete(group):
            return Reply(ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST,
                         f"subscription group [{group}] does not exist on this broker")
        log.info("subscription group %s deleted", group)
        return Reply()

    # -- offsets -------------------------------------------------------------------------------
    def _queue(self, cmd: Command) -> tuple[str, int, Reply | None]:
        topic = cmd.field_str("topic")
        queue_id = cmd.field_int("queueId")
        config = self.topics.get(topic)
        if config is None:
            return topic, queue_id, Reply(ResponseCode.TOPIC_NOT_EXIST, f"topic {topic} does not exist")
        if not 0 <= queue_id < max(config.readQueueNums, config.writeQueueNums):
            return (
                topic,
                queue_id,
                Reply(
                    ResponseCode.INVALID_PARAMETER,
                    f"queueId {queue_id} out of range for topic {topic} ({config.readQueueNums} read queues)",
                ),
            )
        return topic, queue_id, None

    def query_consumer_offset(self, cmd: Command) -> Reply:
        group = cmd.field_str("consumerGroup")
        topic, queue_id, error = self._queue(cmd)
        if error:
            return error
        offset = self.offsets.query(group, topic, queue_id)
        if offset is not None:
            return Reply(fields={"offset": offset})
        # RocketMQ's rule (ConsumerManageProcessor.queryConsumerOffset): a group with no offset on a
        # queue that still holds its very first message (min offset 0) starts from 0, whatever its
        # ConsumeFromWhere, so a new group sees a new topic's first messages. rmqd keeps the whole
        # queue addressable, so "still in memory" is simply "nothing deleted yet".
        if self.cq_store.get(topic, queue_id).min_offset() <= 0:
            return Reply(fields={"offset": 0})
        return Reply(ResponseCode.QUERY_NOT_FOUND, f"group {group} has no offset for {topic}:{queue_id}")

    def update_consumer_offset(self, cmd: Command) -> Reply:
        group = cmd.field_str("consumerGroup")
        topic, queue_id, error = self._queue(cmd)
        if error:
            return error
        self.offsets.commit(group, topic, queue_id, cmd.field_int("commitOffset"))
        return Reply()

    def all_consumer_offsets(self, cmd: Command) -> Reply:
        table = {key: {str(queue_id): offset for queue_id, offset in queues.items()}  # JSON keys are str
                 for key, queues in self.offsets.all_entries().items()}
        return Reply(body=codec.encode_json_body({"offsetTable": table}))

    def max_offset(self, cmd: Command) -> Reply:
        topic, queue_id, error = self._queue(cmd)
        return error or Reply(fields={"offset": self.cq_store.get(topic, queue_id).max_offset()})

    def min_offset(self, cmd: Command) -> Reply:
        topic, queue_id, error = self._queue(cmd)
        return error or Reply(fields={"offset": self.cq_store.get(topic, queue_id).min_offset()})

    def _store_time_at(self, topic: str, queue_id: int, queue_offset: int) -> int | None:
        unit = self.cq_store.get(topic, queue_id).get(queue_offset)
        if unit is None:
            return None
        try:
            return self.commit_log.read_record(unit[0]).store_timestamp_ms
        except Exception:  # noqa: BLE001 - a unit past a deleted file has no time
            return None

    def search_offset_by_timestamp(self, cmd: Command) -> Reply:
        """First queue offset whose store time is >= timestamp (binary search, RocketMQ's rule)."""
        topic, queue_id, error = self._queue(cmd)
        if error:
            return error
        timestamp = cmd.field_int("timestamp")
        cq = self.cq_store.get(topic, queue_id)
        low, high = cq.min_offset(), cq.max_offset()
        while low < high:
            mid = (low + high) // 2
            stored = self._store_time_at(topic, queue_id, mid)
            if stored is None or stored < timestamp:
                low = mid + 1
            else:
                high = mid
        return Reply(fields={"offset": low})

    def earliest_store_time(self, cmd: Command) -> Reply:
        topic, queue_id, error = self._queue(cmd)
        if error:
            return error
        stored = self._store_time_at(topic, queue_id, self.cq_store.get(topic, queue_id).min_offset())
        return Reply(fields={"timestamp": stored or 0})

    def view_message_by_id(self, cmd: Command) -> Reply:
        msg_id = cmd.field_str("offsetMsgId", cmd.fields.get("msgId") or "")
        try:
            _host, phy_offset = rec.decode_offset_msg_id(msg_id)
            record = self.commit_log.read_record(phy_offset)
        except Exception as exc:  # noqa: BLE001 - any failure means "no such message here"
            return Reply(ResponseCode.SYSTEM_ERROR, f"no message with offset id {msg_id!r}: {exc}")
        return Reply(body=bytes(self.commit_log.read(phy_offset, record.total_size)))

    def query_message(self, cmd: Command) -> Reply:
        """Records of `topic` whose UNIQ_KEY or KEYS contain `key`, stored in [beginTimestamp,
        endTimestamp] ms, newest first, at most maxNum (RocketMQ QueryMessageProcessor).

        The index keeps whole seconds (time_read <= store time < time_read + 1 s) and only key
        hashes, so candidates are read from a window one second wider and each record is checked
        exactly: topic, keys and store time. When that check drops candidates and the index had
        more, the window is queried again with a larger cap (at most MAX_QUERY_CANDIDATES).
        """
        if self.index is None:
            return Reply(ResponseCode.SYSTEM_ERROR, "the message index is disabled on this broker "
                         "(messageIndexEnable=false): no query by key")
        topic, key = cmd.field_str("topic"), cmd.field_str("key")
        max_num = max(1, min(cmd.field_int("maxNum", DEFAULT_QUERY_MAX_NUM), MAX_QUERY_CANDIDATES))
        begin_ms, end_ms = cmd.field_int("beginTimestamp", 0), cmd.field_int("endTimestamp", 2**63 - 1)
        limit = max_num
        while True:
            candidates = self.index.query(topic, key, limit, max(0, begin_ms - 999), end_ms)
            found = self._matching_records(candidates, topic, key, begin_ms, end_ms)
            if len(found) >= max_num or len(candidates) < limit or limit >= MAX_QUERY_CANDIDATES:
                break
            limit = min(limit * 4, MAX_QUERY_CANDIDATES)
        last_ms, last_phy = self.index.last_update()
        fields = {"indexLastUpdateTimestamp": last_ms, "indexLastUpdatePhyoffset": last_phy}
        body = self._records_body(found[:max_num])
        if not body:
            remark = f"can not find message of topic {topic} with key {key}, maybe time range not correct"
            return Reply(ResponseCode.QUERY_NOT_FOUND, remark, fields)
        return Reply(fields=fields, body=body)

    def _matching_records(self, phy_offsets: list[int], topic: str, key: str, begin_ms: int,
                          end_ms: int) -> list[int]:
        found = []
        for phy_offset in phy_offsets:
            try:
                record = self.commit_log.read_record(phy_offset)
            except (StoreError, ValueError) as exc:  # deleted by the cleaner, or not readable
                log.debug("query %s#%s: no record at phy offset %d: %s", topic, key, phy_offset, exc)
                continue
            if (record.topic == topic and begin_ms <= record.store_timestamp_ms <= end_ms
                    and key in index_keys_of(record)):
                found.append(phy_offset)
        return found

    def _records_body(self, phy_offsets: list[int]) -> bytes:
        parts, size = [], 0
        for phy_offset in phy_offsets:
            total_size = rec.peek_size_magic(self.commit_log.read(phy_offset, 8), 0)[0]
            if size + total_size > QUERY_BODY_LIMIT_BYTES:
                break
            parts.append(bytes(self.commit_log.read(phy_offset, total_size)))
            size += total_size
        return b"".join(parts)

    # -- clients -------------------------------------------------------------------------------
    def heartbeat(self, cmd: Command, identity: bytes | None = None) -> Reply:
        data = codec.decode_json_body(cmd.body, "heartbeat body")
        client_id = str(data.get("clientID", ""))
        if not client_id:
            return Reply(ResponseCode.INVALID_PARAMETER, "heartbeat body has no clientID")
        if self.sub_groups is not None:  # RocketMQ creates a consumer's group at its heartbeat
            for consumer in data.get("consumerDataSet") or []:
                self.sub_groups.find_or_create(str(consumer.get("groupName", "")))
        self.consumers.heartbeat(client_id, data, time.monotonic(), identity)
        return Reply()

    def unregister_client(self, cmd: Command) -> Reply:
        client_id = cmd.field_str("clientID")
        group = cmd.field_str("consumerGroup", "")
        if group:
            self.consumers.unregister(client_id, group)
        return Reply()

    def consumer_list(self, cmd: Command) -> Reply:
        group = cmd.field_str("consumerGroup")
        ids = self.consumers.client_ids(group)
        if not ids:
            return Reply(ResponseCode.SYSTEM_ERROR, f"no consumer of group {group} is online")
        return Reply(body=codec.encode_json_body({"consumerIdList": ids}))

    def broker_runtime_info(self, cmd: Command) -> Reply:
        table = {k: str(v) for k, v in self.runtime_info().items()}
        shm = self._broker_shm()
        if shm is not None:  # the operations figures: TPS, RT histogram, flush latency, lags, disk
            table.update(runtime_figures(shm))
        return Reply(body=codec.encode_json_body({"table": table}))

    # -- operations ----------------------------------------------------------------------------
    def delete_expired_commitlog(self, cmd: Command) -> Reply:
        """DELETE_EXPIRED_COMMITLOG (329): hand the request to the cleaner through shm clean_requested.

        The cleaner then runs a pass at once and lets expired files go at any hour for its next
        passes (RocketMQ executeDeleteFilesManually); unexpired files stay unless the disk is above
        diskSpaceCleanForciblyRatio.
        """
        shm = self._broker_shm()
        if shm is None:
            return Reply(ResponseCode.SYSTEM_ERROR, "the broker's shared memory is not reachable")
        positions = shm.positions
        positions.set_clean_requested(positions.clean_requested + 1)  # owner: front (this process)
        log.info("deleteExpiredCommitLog: asked the cleaner for a pass (request %d)",
                 positions.clean_requested)
        return Reply(remark="the cleaner deletes expired CommitLog files now")

    def _broker_shm(self) -> Any:
        """The front's BrokerShm; attached here from the store path when the front did not pass it."""
        if not self._shm_attach_tried:
            self._shm_attach_tried = True
            store_dir = os.path.dirname(getattr(self.commit_log, "dir", ""))
            try:
                self._shm = open_broker_shm(shm_path_for_store(store_dir), {})
            except (ShmError, OSError, ValueError) as exc:
                log.warning("cannot attach the broker's shared memory for %s: %s", store_dir, exc)
        return self._shm
