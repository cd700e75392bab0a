"""MQAdmin: the administration client behind `mqadmin` (RocketMQ DefaultMQAdminExt).

    admin = MQAdmin(namesrv="127.0.0.1:9876"); admin.start()
    admin.create_topic("Orders", read_queue_nums=8, write_queue_nums=8, cluster="DefaultCluster")
    admin.topic_list(); admin.topic_route("Orders"); admin.topic_status("Orders")
    admin.cluster_list(); admin.consumer_progress("cg"); admin.wipe_write_perm("broker-a")
    admin.shutdown()

Every method talks to the namesrv(s) and brokers synchronously and returns plain dicts/lists
(JSON-ready, for the CLI's tables and --json). Broker errors raise MQBrokerError, missing routes
RouteNotFoundError, silent peers RemotingTimeoutError.

Thread-safe (the remoting client is); one MQAdmin can serve many threads.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from rmqd.client._remoting import RemotingClient
from rmqd.client._route import NamesrvClient, TopicRoute, check_response, namesrv_addrs
from rmqd.errors import MQClientError, RouteNotFoundError
from rmqd.message import is_system_topic, validate_topic
from rmqd.protocol import Command, Perm, RequestCode, ResponseCode, decode_json_body

DEFAULT_PERM = int(Perm.READ | Perm.WRITE)
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

    def _invoke(self, addr: str, code: int, fields: dict[str, Any] | None = None) -> Command:
        return check_response(self._running().invoke(addr, code, fields, timeout_ms=self.timeout_ms), addr)

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

