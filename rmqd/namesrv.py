"""Namesrv route table (RocketMQ RouteInfoManager): which broker serves which topic, and who is alive.

Library only: no sockets, no loops, no clock. The namesrv process (`workers/namesrv.py`) owns one
`RouteInfoManager`, feeds it decoded requests, passes the current time in, and calls
`scan_not_active_brokers` every 10 s. Not thread-safe: one caller (the process loop) at a time.

Tables (RocketMQ names):
    topic_queue_table   topic -> {broker_name: QueueData}      written by master registrations
    broker_addr_table   broker_name -> BrokerData(cluster, {broker_id: addr})
    cluster_addr_table  cluster -> {broker_name}
    broker_live_table   broker_addr -> BrokerLiveInfo(last_update_ms, ha_server_addr, digest)

Rules kept from RocketMQ:
  * Brokers register every 30 s; one silent for `broker_expiry_ms` (120 s) is removed by the scan.
  * Only a master (broker_id 0) registration writes queue data, and only when its topic configs
    changed since its last registration (RocketMQ compares the broker's dataVersion; rmqd uses the
    `dataVersion` of the body when present, else a digest of the topic config table). So a
    wipeWritePerm survives the broker's periodic re-registration, as in RocketMQ.
  * Queue data of a broker name disappears only when no address of that broker name is left; a
    topic with no queue data left disappears with it.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from rmqd.protocol.commands import Perm

log = logging.getLogger(__name__)

MASTER_ID = 0
BROKER_EXPIRY_MS = 120_000
SCAN_INTERVAL_MS = 10_000
DEFAULT_PERM = int(Perm.READ | Perm.WRITE)


@dataclass(slots=True)
class QueueData:
    """How many queues one broker (by name) serves for one topic, and with which permission."""

    broker_name: str
    read_queue_nums: int
    write_queue_nums: int
    perm: int = DEFAULT_PERM
    topic_sys_flag: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "brokerName": self.broker_name, "readQueueNums": self.read_queue_nums,
            "writeQueueNums": self.write_queue_nums, "perm": self.perm, "topicSysFlag": self.topic_sys_flag,
        }


@dataclass(slots=True)
class BrokerData:
    """Addresses of one broker name (a master and its slaves) in one cluster."""

    cluster: str
    broker_name: str
    broker_addrs: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        addrs = {str(broker_id): addr for broker_id, addr in sorted(self.broker_addrs.items())}
        return {"cluster": self.cluster, "brokerName": self.broker_name, "brokerAddrs": addrs}


@dataclass(slots=True)
class BrokerLiveInfo:
    last_update_ms: int
    ha_server_addr: str
    topic_digest: str


def queue_data_from_config(broker_name: str, topic: str, config: Any) -> QueueData:
    """QueueData from one entry of a registration's topicConfigTable. Raises ValueError if malformed."""
    if not isinstance(config, dict):
        raise ValueError(f"topic config of {topic!r} must be a JSON object, got {type(config).__name__}")
    values = {}
    for name, default in (("readQueueNums", None), ("writeQueueNums", None), ("perm", DEFAULT_PERM),
                          ("topicSysFlag", 0)):
        value = config.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"topic config of {topic!r}: {name} must be an integer >= 0, got {value!r}")
        values[name] = value
    return QueueData(broker_name, values["readQueueNums"], values["writeQueueNums"], values["perm"],
                     values["topicSysFlag"])


def topic_config_digest(topic_config_table: dict[str, Any], data_version: Any = None) -> str:
    """Identity of a registration's topic configs: its dataVersion if sent, else a content hash."""
    if data_version is not None:
        return "v:" + orjson.dumps(data_version, option=orjson.OPT_SORT_KEYS).decode()
    raw = orjson.dumps(topic_config_table, option=orjson.OPT_SORT_KEYS)
    return "h:" + hashlib.sha1(raw).hexdigest()


class RouteInfoManager:
    """The namesrv's route table. Not thread-safe (see the module docstring)."""

    def __init__(self, broker_expiry_ms: int = BROKER_EXPIRY_MS) -> None:
        self.broker_expiry_ms = broker_expiry_ms
        self.topic_queue_table: dict[str, dict[str, QueueData]] = {}
        self.broker_addr_table: dict[str, BrokerData] = {}
        self.cluster_addr_table: dict[str, set[str]] = {}
        self.broker_live_table: dict[str, BrokerLiveInfo] = {}

    # ---------------------------------------------------------------- registration

    def register_broker(
        self, cluster: str, broker_addr: str, broker_name: str, broker_id: int, ha_server_addr: str,
        topic_config_table: dict[str, Any] | None, now_ms: int, data_version: Any = None,
    ) -> dict[str, str]:
        """Record a broker's (re-)registration. Returns the response fields {masterAddr, haServerAddr}
        (filled for slaves). Raises ValueError for a malformed topic config (nothing is changed then).
        """
        table = topic_config_table or {}
        queue_datas = {topic: queue_data_from_config(broker_name, topic, cfg) for topic, cfg in table.items()}
        self.cluster_addr_table.setdefault(cluster, set()).add(broker_name)
        broker = self.broker_addr_table.setdefault(broker_name, BrokerData(cluster, broker_name))
        broker.cluster = cluster
        moved = [i for i, addr in broker.broker_addrs.items() if addr == broker_addr and i != broker_id]
        for other_id in moved:
            del broker.broker_addrs[other_id]  # the same address changed role (slave -> master)
        first = broker.broker_addrs.get(broker_id) != broker_addr
        broker.broker_addrs[broker_id] = broker_addr
        digest = topic_config_digest(table, data_version)
        previous = self.broker_live_table.get(broker_addr)
        if broker_id == MASTER_ID and (first or previous is None or previous.topic_digest != digest):
            for topic, queue_data in queue_datas.items():
                self.topic_queue_table.setdefault(topic, {})[broker_name] = queue_data
        self.broker_live_table[broker_addr] = BrokerLiveInfo(now_ms, ha_server_addr, digest)
        if first:
            log.info("registered broker %s (%s id %d, cluster %s) with %d topics",
                     broker_addr, broker_name, broker_id, cluster, len(table))
        return self._master_info(broker, broker_id)

    def _master_info(self, broker: BrokerData, broker_id: int) -> dict[str, str]:
        if broker_id == MASTER_ID:
            return {"masterAddr": "", "haServerAddr": ""}
        master_addr = broker.broker_addrs.get(MASTER_ID, "")
        live = self.broker_live_table.get(master_addr)
        return {"masterAddr": master_addr, "haServerAddr": live.ha_server_addr if live else ""}

    def unregister_broker(self, cluster: str, broker_addr: str, broker_name: str, broker_id: int) -> bool:
        """Forget one broker address (clean broker shutdown). Returns whether it was known."""
        broker = self.broker_addr_table.get(broker_name)
        if broker is None or broker.broker_addrs.get(broker_id) != broker_addr:
            self.broker_live_table.pop(broker_addr, None)
            return False
        log.info("unregistered broker %s (%s id %d, cluster %s)",
                 broker_addr, broker_name, broker_id, cluster)
        self._remove_broker_addr(broker_addr)
        return True

    def scan_not_active_brokers(self, now_ms: int) -> list[str]:
        """Remove brokers silent for more than broker_expiry_ms; returns their addresses."""
        expired = [addr for addr, live in self.broker_live_table.items()
                   if now_ms - live.last_update_ms > self.broker_expiry_ms]
        for addr in expired:
            silent_s = (now_ms - self.broker_live_table[addr].last_update_ms) / 1000
            log.warning("broker %s silent for %.1f s (limit %.1f s): removing it",
                        addr, silent_s, self.broker_expiry_ms / 1000)
            self._remove_broker_addr(addr)
        return expired

    def _remove_broker_addr(self, broker_addr: str) -> None:
        """RocketMQ onChannelDestroy: drop the address; a broker name with no address left loses its
        queue data, its cluster membership, and topics left empty disappear."""
        self.broker_live_table.pop(broker_addr, None)
        for broker_name, broker in list(self.broker_addr_table.items()):
            for broker_id in [i for i, addr in broker.broker_addrs.items() if addr == broker_addr]:
                del broker.broker_addrs[broker_id]
            if not broker.broker_addrs:
                del self.broker_addr_table[broker_name]
                self._forget_broker_name(broker.cluster, broker_name)

    def _forget_broker_name(self, cluster: str, broker_name: str) -> None:
        names = self.cluster_addr_table.get(cluster)
        if names is not None:
            names.discard(broker_name)
            if not names:
                del self.cluster_addr_table[cluster]
        for topic, per_broker in list(self.topic_queue_table.items()):
            per_broker.pop(broker_name, None)
            if not per_broker:
                del self.topic_queue_table[topic]

    # ---------------------------------------------------------------- queries

    def route(self, topic: str) -> dict[str, Any] | None:
        """TopicRouteData JSON for `topic`, or None when no live broker serves it (TOPIC_NOT_EXIST)."""
        per_broker = self.topic_queue_table.get(topic)
        if not per_broker:
            return None
        broker_datas = [self.broker_addr_table[name].to_json()
                        for name in sorted(per_broker) if name in self.broker_addr_table]
        if not broker_datas:
            return None
        queue_datas = [per_broker[name].to_json() for name in sorted(per_broker)]
        return {"orderTopicConf": None, "queueDatas": queue_datas, "brokerDatas": broker_datas,
                "filterServerTable": {}}

    def cluster_info(self) -> dict[str, Any]:
        """ClusterInfo JSON: {"brokerAddrTable": {name: BrokerData}, "clusterAddrTable": {cluster: names}}."""
        brokers = sorted(self.broker_addr_table.items())
        clusters = sorted(self.cluster_addr_table.items())
        return {
            "brokerAddrTable": {name: data.to_json() for name, data in brokers},
            "clusterAddrTable": {cluster: sorted(names) for cluster, names in clusters},
        }

    def topic_list(self) -> list[str]:
        return sorted(self.topic_queue_table)

    def topics_by_cluster(self, cluster: str) -> list[str]:
        names = self.cluster_addr_table.get(cluster, set())
        return sorted(topic for topic, per_broker in self.topic_queue_table.items()
                      if names & per_broker.keys())

    # ---------------------------------------------------------------- admin

    def wipe_write_perm(self, broker_name: str) -> int:
        """Clear the WRITE bit of every queue data of `broker_name`; returns the number of topics."""
        return self._operate_write_perm(broker_name, lambda perm: perm & ~Perm.WRITE)

    def add_write_perm(self, broker_name: str) -> int:
        """Restore READ|WRITE on every queue data of `broker_name`; returns the number of topics."""
        return self._operate_write_perm(broker_name, lambda _perm: DEFAULT_PERM)

    def _operate_write_perm(self, broker_name: str, change) -> int:
        count = 0
        for per_broker in self.topic_queue_table.values():
            queue_data = per_broker.get(broker_name)
            if queue_data is not None:
                queue_data.perm = int(change(queue_data.perm))
                count += 1
        return count

    def delete_topic(self, topic: str, cluster: str | None = None) -> bool:
        """Remove a topic's route (only the brokers of `cluster` when given). Returns whether it existed."""
        per_broker = self.topic_queue_table.get(topic)
        if per_broker is None:
            return False
        if cluster is None:
            del self.topic_queue_table[topic]
            return True
        for broker_name in self.cluster_addr_table.get(cluster, set()):
            per_broker.pop(broker_name, None)
        if not per_broker:
            del self.topic_queue_table[topic]
        return True
