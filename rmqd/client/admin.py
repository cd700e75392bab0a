"""MQAdmin: the administration client behind `mqadmin` (RocketMQ DefaultMQAdminExt).

    admin = MQAdmin(namesrv="127.0.0.1:9876"); admin.start()
    admin.create_topic("Orders", read_queue_nums=8, write_queue_nums=8, cluster="DefaultCluster")
    admin.topic_list(); admin.topic_route("Orders"); admin.topic_status("Orders")
    admin.cluster_list(); admin.consumer_progress("cg"); admin.wipe_write_perm("broker-a")
    admin.broker_status(); admin.cluster_stats(); admin.stats_all(); admin.delete_expired_commitlog()
    admin.query_msg_by_key("Orders", "order-1"); admin.query_msg_by_id(send_result.offset_msg_id)
    admin.shutdown()

Every method talks to the namesrv(s) and brokers synchronously and returns plain dicts/lists
(JSON-ready, for the CLI's tables and --json). Broker errors raise MQBrokerError, missing routes
RouteNotFoundError, silent peers RemotingTimeoutError.

Thread-safe (the remoting client is); one MQAdmin can serve many threads.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import orjson

from rmqd.client._consumer_core import decode_messages
from rmqd.client._remoting import RemotingClient
from rmqd.client._route import NamesrvClient, TopicRoute, check_response, namesrv_addrs
from rmqd.errors import ClientError, MQClientError, RouteNotFoundError
from rmqd.message import MessageExt, is_system_topic, validate_topic
from rmqd.protocol import Command, Perm, RequestCode, ResponseCode, decode_json_body
from rmqd.store.record import Prop, decode_host, decode_offset_msg_id

DEFAULT_PERM = int(Perm.READ | Perm.WRITE)
DEFAULT_QUERY_MAX_NUM = 64  # RocketMQ's maxMsgsNumBatch
MAX_QUERY_NUM = 4096
QUERY_ANSWERS = (ResponseCode.SUCCESS, ResponseCode.QUERY_NOT_FOUND)  # QUERY_NOT_FOUND = no message
MASTER_ID = "0"


class MQAdmin:
    """Administration client; see the module docstring."""

    def __init__(self, namesrv: str | None = None, *, timeout_ms: int = 3000) -> None:
        self.namesrv_addrs = namesrv_addrs(namesrv)
        self.timeout_ms = timeout_ms
        self._remoting: RemotingClient | None = None

    def start(self) -> None:
        if self._remoting is None:
            self._remoting = RemotingClient(name="rmqd-admin")
            self._namesrv = NamesrvClient(self._remoting, self.namesrv_addrs, self.timeout_ms)

    def shutdown(self) -> None:
        if self._remoting is not None:
            self._remoting.close()
            self._remoting = None

    def __enter__(self) -> MQAdmin:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _running(self) -> RemotingClient:
        if self._remoting is None:
            raise MQClientError("MQAdmin is not started; call start() first")
        return self._remoting

    def _invoke(self, addr: str, code: int, fields: dict[str, Any] | None = None,
                body: bytes = b"") -> Command:
        response = self._running().invoke(addr, code, fields, body, timeout_ms=self.timeout_ms)
        return check_response(response, addr)

    # ---------------------------------------------------------------- subscription groups

    def update_subscription_group(
        self, group: str, *, consume_enable: bool = True, consume_broadcast_enable: bool = True,
        retry_queue_nums: int = 1, retry_max_times: int = 16, cluster: str | None = None,
        broker_addr: str | None = None,
    ) -> list[str]:
        """Create or update a consumer group (RocketMQ SubscriptionGroupConfig) on one broker or on
        every master of `cluster` (all masters when neither is given). Returns the addresses updated."""
        if not isinstance(group, str) or not group.strip():
            raise MQClientError(f"group must be a non-blank string, got {group!r}")
        if retry_max_times < 0 or retry_queue_nums < 0:
            raise MQClientError("retry_max_times and retry_queue_nums must be >= 0")
        addrs = [broker_addr] if broker_addr else self.master_addrs(cluster)
        if not addrs:
            raise RouteNotFoundError(f"no master broker found in cluster {cluster or '(any)'}")
        body = orjson.dumps({"groupName": group, "consumeEnable": consume_enable,
                             "consumeBroadcastEnable": consume_broadcast_enable,
                             "retryQueueNums": retry_queue_nums, "retryMaxTimes": retry_max_times})
        for addr in addrs:
            self._invoke(addr, RequestCode.UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, {}, body)
        return addrs

    def delete_subscription_group(self, group: str, cluster: str | None = None,
                                  broker_addr: str | None = None) -> list[str]:
        """Delete a consumer group's config from one broker or the masters of `cluster`."""
        addrs = [broker_addr] if broker_addr else self.master_addrs(cluster)
        for addr in addrs:
            self._invoke(addr, RequestCode.DELETE_SUBSCRIPTIONGROUP, {"groupName": group})
        return addrs

    def subscription_groups(self, broker_addr: str) -> dict[str, dict[str, Any]]:
        """Every group config of one broker: group name -> SubscriptionGroupConfig fields."""
        response = self._invoke(broker_addr, RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG)
        table = decode_json_body(response.body, "subscription group table")
        return dict(table.get("subscriptionGroupTable", {}))

    # ---------------------------------------------------------------- topics

    def create_topic(
        self, topic: str, read_queue_nums: int = 8, write_queue_nums: int = 8, perm: int = DEFAULT_PERM,
        cluster: str | None = None, broker_addr: str | None = None, order: bool = False,
    ) -> list[str]:
        """Create or update `topic` on one broker (`broker_addr`) or on every master of `cluster`
        (every master of every cluster when neither is given). Returns the broker addresses updated."""
        validate_topic(topic, allow_system=True)
        for name, value in (("read_queue_nums", read_queue_nums), ("write_queue_nums", write_queue_nums)):
            if not isinstance(value, int) or not 1 <= value <= 1024:
                raise MQClientError(f"{name} must be 1..1024, got {value!r}")
        if not isinstance(perm, int) or perm & ~7:
            raise MQClientError(f"perm must combine 4 (read), 2 (write), 1 (inherit), got {perm!r}")
        addrs = [broker_addr] if broker_addr else self.master_addrs(cluster)
        if not addrs:
            raise RouteNotFoundError(f"no master broker found in cluster {cluster or '(any)'}")
        fields = {"topic": topic, "defaultTopic": "TBW102", "readQueueNums": read_queue_nums,
                  "writeQueueNums": write_queue_nums, "perm": perm, "topicFilterType": "SINGLE_TAG",
                  "topicSysFlag": 0, "order": order}
        for addr in addrs:
            self._invoke(addr, RequestCode.UPDATE_AND_CREATE_TOPIC, fields)
        return addrs

    def delete_topic(self, topic: str, cluster: str | None = None) -> list[str]:
        """Delete `topic` from the masters of `cluster` (all when None) and from every namesrv."""
        addrs = self.master_addrs(cluster)
        for addr in addrs:
            self._invoke(addr, RequestCode.DELETE_TOPIC_IN_BROKER, {"topic": topic})
        fields = {"topic": topic, **({"clusterName": cluster} if cluster else {})}
        for addr in self.namesrv_addrs:
            self._invoke(addr, RequestCode.DELETE_TOPIC_IN_NAMESRV, fields)
        return addrs

    def topic_list(self) -> list[str]:
        """Every topic the namesrv knows, sorted."""
        body = self._namesrv.get_json(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER)
        return sorted(str(topic) for topic in body.get("topicList", []))

    def topic_route(self, topic: str) -> dict[str, Any]:
        """TopicRouteData JSON of `topic` ({"brokerDatas": [...], "queueDatas": [...]})."""
        self._running()
        addr, response = self._namesrv.invoke(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
        if response.code == ResponseCode.TOPIC_NOT_EXIST:
            raise RouteNotFoundError(f"topic {topic} does not exist (no route in the namesrv)")
        return decode_json_body(check_response(response, addr).body, f"route of {topic}")

    def _route(self, topic: str) -> TopicRoute:
        self._running()
        route = self._namesrv.get_route(topic)
        if route is None:
            raise RouteNotFoundError(f"topic {topic} does not exist (no route in the namesrv)")
        return route

    def topic_status(self, topic: str) -> list[dict[str, Any]]:
        """One row per queue: broker_name, queue_id, min_offset, max_offset, last_update_ms (None:
        not reported by this version)."""
        route = self._route(topic)
        rows = []
        for data in sorted(route.queue_datas, key=lambda q: q.broker_name):
            addr = route.master_addr(data.broker_name)
            if addr is None:
                continue
            for queue_id in range(max(data.read_queue_nums, data.write_queue_nums)):
                fields = {"topic": topic, "queueId": queue_id}
                rows.append((data.broker_name, queue_id, addr,
                             self._async(addr, RequestCode.GET_MIN_OFFSET, fields),
                             self._async(addr, RequestCode.GET_MAX_OFFSET, fields)))
        return [{"broker_name": name, "queue_id": qid, "min_offset": self._offset(addr, low),
                 "max_offset": self._offset(addr, high), "last_update_ms": None}
                for name, qid, addr, low, high in rows]

    def _async(self, addr: str, code: int, fields: dict[str, Any]) -> Future[Command]:
        return self._running().invoke_async(addr, code, fields, timeout_ms=self.timeout_ms)

    @staticmethod
    def _offset(addr: str, future: Future[Command]) -> int:
        return check_response(future.result(), addr).field_int("offset")

    # ---------------------------------------------------------------- cluster

    def cluster_list(self) -> dict[str, Any]:
        """ClusterInfo JSON: {"brokerAddrTable": {broker_name: {"cluster", "brokerName",
        "brokerAddrs": {id: addr}}}, "clusterAddrTable": {cluster: [broker_name]}}."""
        self._running()
        return self._namesrv.get_json(RequestCode.GET_BROKER_CLUSTER_INFO)

    def master_addrs(self, cluster: str | None = None) -> list[str]:
        """Master addresses of the brokers of `cluster` (of every cluster when None), sorted."""
        info = self.cluster_list()
        clusters = info.get("clusterAddrTable", {})
        if cluster:
            names = clusters.get(cluster, [])
        else:
            names = [name for members in clusters.values() for name in members]
        brokers = info.get("brokerAddrTable", {})
        return sorted({brokers[name]["brokerAddrs"][MASTER_ID] for name in names
                       if MASTER_ID in brokers.get(name, {}).get("brokerAddrs", {})})

    def wipe_write_perm(self, broker_name: str) -> int:
        """Make `broker_name` read-only in every namesrv; returns the number of topics changed."""
        return self._operate_write_perm(RequestCode.WIPE_WRITE_PERM_OF_BROKER, "wipeTopicCount", broker_name)

    def add_write_perm(self, broker_name: str) -> int:
        """Give `broker_name` write permission back in every namesrv; returns the topics changed."""
        return self._operate_write_perm(RequestCode.ADD_WRITE_PERM_OF_BROKER, "addTopicCount", broker_name)

    def _operate_write_perm(self, code: int, count_field: str, broker_name: str) -> int:
        counts = [self._invoke(addr, code, {"brokerName": broker_name}).field_int(count_field, 0)
                  for addr in self.namesrv_addrs]
        return max(counts, default=0)

    # ---------------------------------------------------------------- consumers

    def consumer_progress(self, group: str, topic: str | None = None) -> list[dict[str, Any]]:
        """Per queue: topic, broker_name, queue_id, broker_offset, consumer_offset, diff (the lag).

        Without `topic`, every non-system topic is examined and only queues where the group has a
        committed offset are listed.
        """
        topics = [topic] if topic else [t for t in self.topic_list() if not is_system_topic(t)]
        rows: list[dict[str, Any]] = []
        for name in topics:
            try:
                route = self._route(name)
            except RouteNotFoundError:
                continue
            rows.extend(self._progress_of_topic(group, route, listed_only=topic is None))
        return rows

    def _progress_of_topic(self, group: str, route: TopicRoute, listed_only: bool) -> list[dict[str, Any]]:
        rows = []
        for queue in route.subscribe_queues():
            addr = route.master_addr(queue.broker_name)
            if addr is None:
                continue
            fields = {"consumerGroup": group, "topic": queue.topic, "queueId": queue.queue_id}
            response = self._running().invoke(addr, RequestCode.QUERY_CONSUMER_OFFSET, fields,
                                              timeout_ms=self.timeout_ms)
            if response.code == ResponseCode.QUERY_NOT_FOUND and listed_only:
                continue
            check_response(response, addr, (ResponseCode.SUCCESS, ResponseCode.QUERY_NOT_FOUND))
            committed = response.field_int("offset", -1) if response.code == ResponseCode.SUCCESS else -1
            max_fields = {"topic": queue.topic, "queueId": queue.queue_id}
            broker_offset = self._offset(addr, self._async(addr, RequestCode.GET_MAX_OFFSET, max_fields))
            rows.append({"topic": queue.topic, "broker_name": queue.broker_name, "queue_id": queue.queue_id,
                         "broker_offset": broker_offset, "consumer_offset": committed,
                         "diff": broker_offset - max(committed, 0)})
        return rows


    # ---------------------------------------------------------------- messages

    def query_msg_by_key(self, topic: str, key: str, max_num: int = DEFAULT_QUERY_MAX_NUM, begin_ms: int = 0,
                         end_ms: int | None = None) -> list[MessageExt]:
        """Messages of `topic` whose KEYS or UNIQ_KEY contain `key`, stored in [begin_ms, end_ms]
        (epoch ms; `end_ms` None = no upper bound), from every master of the topic's route (RocketMQ
        queryMsgByKey). Newest first, at most `max_num` per broker and in all. Each broker checks
        the records behind its index hits (hash collisions never reach the caller)."""
        if not 1 <= max_num <= MAX_QUERY_NUM:
            raise MQClientError(f"max_num must be 1..{MAX_QUERY_NUM}, got {max_num!r}")
        route = self._route(topic)
        fields = {"topic": topic, "key": key, "maxNum": max_num, "beginTimestamp": begin_ms,
                  "endTimestamp": 2**63 - 1 if end_ms is None else end_ms}
        pending = [(name, addr, self._async(addr, RequestCode.QUERY_MESSAGE, fields))
                   for name in sorted(route.broker_addrs) if (addr := route.master_addr(name)) is not None]
        messages: list[MessageExt] = []
        for name, addr, future in pending:
            response = check_response(future.result(), addr, QUERY_ANSWERS)
            if response.code == ResponseCode.SUCCESS:
                messages += [m for m in decode_messages(response.body, name) if m.topic == topic
                             and key in (*m.keys, m.properties.get(Prop.UNIQ_KEY))]
        messages.sort(key=lambda m: (m.store_timestamp_ms, m.commitlog_offset), reverse=True)
        return messages[:max_num]

    def query_msg_by_id(self, offset_msg_id: str) -> MessageExt:
        """The message with this offset message id (VIEW_MESSAGE_BY_ID to the broker the id names:
        store host ip:port + CommitLog offset, as SendResult.offset_msg_id)."""
        try:
            store_host, phy_offset = decode_offset_msg_id(offset_msg_id)
            ip, port = decode_host(store_host)
        except ValueError as exc:
            raise MQClientError(f"{offset_msg_id!r} is not an offset message id: {exc}") from None
        addr = f"{ip}:{port}"
        body = self._invoke(addr, RequestCode.VIEW_MESSAGE_BY_ID, {"offsetMsgId": offset_msg_id}).body
        messages = decode_messages(body, self._broker_name_of(addr))
        if len(messages) != 1 or messages[0].commitlog_offset != phy_offset:
            raise MQClientError(f"broker {addr} answered {len(messages)} records for {offset_msg_id}")
        return messages[0]

    def _broker_name_of(self, addr: str) -> str:
        for name, data in self.cluster_list().get("brokerAddrTable", {}).items():
            if addr in data.get("brokerAddrs", {}).values():
                return name
        return ""

    # ---------------------------------------------------------------- operations

    def _targets(self, cluster: str | None, broker_addr: str | None) -> list[str]:
        addrs = [broker_addr] if broker_addr else self.master_addrs(cluster)
        if not addrs:
            raise RouteNotFoundError(f"no master broker found in cluster {cluster or '(any)'}")
        return addrs

    def _broker_json(self, addr: str, code: int, what: str) -> dict[str, Any]:
        body = self._invoke(addr, code).body
        return decode_json_body(body, f"{what} of {addr}") if len(body) else {}

    def broker_runtime_info(self, broker_addr: str) -> dict[str, str]:
        """GET_BROKER_RUNTIME_INFO of one broker: RocketMQ's key/value table (all values strings):
        putTps / getTransferedTps ("10 s, 1 min, 10 min"), putMessageDistributeTime (send RT
        histogram), flushLatencyMs, dispatchBehindBytes, commitLogDiskRatio, ring depths, ..."""
        return dict(self._broker_json(broker_addr, RequestCode.GET_BROKER_RUNTIME_INFO, "runtime info")
                    .get("table", {}))

    def broker_status(self, broker_addr: str | None = None, cluster: str | None = None) -> dict[str, dict]:
        """`mqadmin brokerStatus`: {broker address: runtime info table} of one broker or a cluster."""
        return {addr: self.broker_runtime_info(addr) for addr in self._targets(cluster, broker_addr)}

    def cluster_stats(self, cluster: str | None = None) -> list[dict[str, Any]]:
        """`mqadmin clusterList` rows: every broker with its TPS, dispatch lag and disk ratio
        (RocketMQ's #InTPS #OutTPS ... #SPACE columns, from each broker's runtime info)."""
        info = self.cluster_list()
        brokers = info.get("brokerAddrTable", {})
        rows = []
        for cluster_name, names in sorted(info.get("clusterAddrTable", {}).items()):
            if cluster and cluster_name != cluster:
                continue
            for name in sorted(names):
                for broker_id, addr in sorted(brokers.get(name, {}).get("brokerAddrs", {}).items()):
                    rows.append(self._cluster_row(cluster_name, name, broker_id, addr))
        return rows

    def _cluster_row(self, cluster: str, name: str, broker_id: str, addr: str) -> dict[str, Any]:
        try:
            table = self.broker_runtime_info(addr)
        except ClientError as exc:
            table = {"error": str(exc)}
        return {"cluster": cluster, "broker_name": name, "bid": broker_id, "addr": addr,
                "version": table.get("brokerVersionDesc", "-"),
                "in_tps": _first(table.get("putTps")), "out_tps": _first(table.get("getTransferedTps")),
                "send_rt_avg_ms": table.get("sendRtAvgMs", "-"),
                "flush_latency_ms": table.get("flushLatencyMs", "-"),
                "dispatch_behind_bytes": table.get("dispatchBehindBytes", "-"),
                "disk_ratio": table.get("commitLogDiskRatio", "-"),
                "writable": table.get("storeWritable", "-"),
                **({"error": table["error"]} if "error" in table else {})}

    def stats_all(self, cluster: str | None = None, broker_addr: str | None = None) -> list[dict[str, Any]]:
        """`mqadmin statsAll`: per topic and consumer group of each master, the accumulation (lag:
        max offset - committed offset, summed over queues) and the topic's message count, with the
        broker's in/out TPS. System topics are left out, as RocketMQ's statsAll leaves out %RETRY%."""
        rows = []
        for addr in self._targets(cluster, broker_addr):
            runtime = self.broker_runtime_info(addr)
            offsets = self._broker_json(addr, RequestCode.GET_ALL_CONSUMER_OFFSET, "consumer offsets")
            topics = self._broker_json(addr, RequestCode.GET_ALL_TOPIC_CONFIG, "topic config")
            for topic, config in sorted(topics.get("topicConfigTable", {}).items()):
                if is_system_topic(topic):
                    continue
                rows.extend(self._topic_stats(addr, topic, config, offsets.get("offsetTable", {}), runtime))
        return rows

    def _topic_stats(self, addr: str, topic: str, config: dict[str, Any], offset_table: dict[str, Any],
                     runtime: dict[str, str]) -> list[dict[str, Any]]:
        queues = max(int(config.get("readQueueNums", 0)), int(config.get("writeQueueNums", 0)))
        pending = [self._async(addr, RequestCode.GET_MAX_OFFSET, {"topic": topic, "queueId": q})
                   for q in range(queues)]
        max_offsets = {q: self._offset(addr, future) for q, future in enumerate(pending)}
        base = {"topic": topic, "messages": sum(max_offsets.values()), "broker": addr,
                "broker_in_tps": _first(runtime.get("putTps")),
                "broker_out_tps": _first(runtime.get("getTransferedTps"))}
        prefix = topic + "@"
        groups = {key[len(prefix):]: value for key, value in offset_table.items() if key.startswith(prefix)}
        if not groups:
            return [{**base, "group": "-", "accumulation": "-"}]
        return [{**base, "group": group, "accumulation": sum(
                    max(0, max_offsets.get(int(q), 0) - int(offset)) for q, offset in committed.items())}
                for group, committed in sorted(groups.items())]

    def delete_expired_commitlog(self, cluster: str | None = None,
                                 broker_addr: str | None = None) -> list[str]:
        """`mqadmin deleteExpiredCommitLog`: each broker's cleaner runs a pass now and deletes expired
        CommitLog files at any hour for its next passes. Returns the broker addresses asked."""
        addrs = self._targets(cluster, broker_addr)
        for addr in addrs:
            self._invoke(addr, RequestCode.DELETE_EXPIRED_COMMITLOG)
        return addrs


def _first(tps: str | None) -> str:
    """The 10-second figure of a RocketMQ-style "10s 1min 10min" TPS string."""
    return tps.split()[0] if tps else "-"
