"""The namesrv route table (rmqd.namesrv.RouteInfoManager), driven with explicit times."""
from __future__ import annotations

import pytest

from rmqd.namesrv import RouteInfoManager

CONFIG = {"Orders": {"topicName": "Orders", "readQueueNums": 4, "writeQueueNums": 4, "perm": 6,
                     "topicSysFlag": 0}}


def register(routes: RouteInfoManager, name="broker-a", addr="10.0.0.1:10911", broker_id=0, now_ms=0,
             config=None, cluster="DefaultCluster"):
    return routes.register_broker(cluster, addr, name, broker_id, f"{addr}-ha", config or CONFIG, now_ms)


def test_route_lists_the_master_and_its_queue_data():
    routes = RouteInfoManager()
    register(routes)
    route = routes.route("Orders")
    assert route["brokerDatas"] == [{"cluster": "DefaultCluster", "brokerName": "broker-a",
                                     "brokerAddrs": {"0": "10.0.0.1:10911"}}]
    assert route["queueDatas"] == [{"brokerName": "broker-a", "readQueueNums": 4, "writeQueueNums": 4,
                                    "perm": 6, "topicSysFlag": 0}]
    assert routes.route("Unknown") is None


def test_a_slave_learns_its_master_and_joins_the_broker_addresses():
    routes = RouteInfoManager()
    register(routes)
    answer = register(routes, addr="10.0.0.2:10911", broker_id=1)
    assert answer == {"masterAddr": "10.0.0.1:10911", "haServerAddr": "10.0.0.1:10911-ha"}
    assert routes.route("Orders")["brokerDatas"][0]["brokerAddrs"] == {"0": "10.0.0.1:10911",
                                                                       "1": "10.0.0.2:10911"}


def test_slave_registrations_do_not_change_queue_data():
    routes = RouteInfoManager()
    register(routes)
    register(routes, addr="10.0.0.2:10911", broker_id=1, config={"Other": CONFIG["Orders"]})
    assert routes.topic_list() == ["Orders"]


def test_silent_brokers_expire_after_120_s_and_take_their_topics_along():
    routes = RouteInfoManager()
    register(routes, now_ms=0)
    register(routes, name="broker-b", addr="10.0.0.3:10911", now_ms=100_000)
    assert routes.scan_not_active_brokers(120_000) == []
    assert routes.scan_not_active_brokers(120_001) == ["10.0.0.1:10911"]
    assert [b["brokerName"] for b in routes.route("Orders")["brokerDatas"]] == ["broker-b"]
    assert routes.scan_not_active_brokers(220_001) == ["10.0.0.3:10911"]
    assert routes.route("Orders") is None and routes.cluster_info()["clusterAddrTable"] == {}


def test_queue_data_stays_while_one_address_of_the_broker_name_lives():
    routes = RouteInfoManager()
    register(routes, now_ms=0)
    register(routes, addr="10.0.0.2:10911", broker_id=1, now_ms=100_000)
    routes.scan_not_active_brokers(150_000)
    assert routes.route("Orders")["brokerDatas"][0]["brokerAddrs"] == {"1": "10.0.0.2:10911"}


def test_wipe_write_perm_clears_the_write_bit_until_added_back_and_survives_reregistration():
    routes = RouteInfoManager()
    register(routes)
    assert routes.wipe_write_perm("broker-a") == 1
    register(routes, now_ms=30_000)  # the periodic registration carries unchanged topic configs
    assert routes.route("Orders")["queueDatas"][0]["perm"] == 4
    assert routes.add_write_perm("broker-a") == 1
    assert routes.route("Orders")["queueDatas"][0]["perm"] == 6
    assert routes.wipe_write_perm("no-such-broker") == 0


def test_changed_topic_configs_update_the_queue_data():
    routes = RouteInfoManager()
    register(routes)
    register(routes, config={"Orders": dict(CONFIG["Orders"], writeQueueNums=16, readQueueNums=16)})
    assert routes.route("Orders")["queueDatas"][0]["writeQueueNums"] == 16


def test_unregister_removes_the_broker_at_once():
    routes = RouteInfoManager()
    register(routes)
    assert routes.unregister_broker("DefaultCluster", "10.0.0.1:10911", "broker-a", 0)
    assert routes.route("Orders") is None and not routes.unregister_broker("DefaultCluster", "x", "y", 0)


def test_delete_topic_everywhere_or_in_one_cluster():
    routes = RouteInfoManager()
    register(routes)
    register(routes, name="broker-b", addr="10.0.0.3:10911", cluster="Other")
    assert routes.topics_by_cluster("Other") == ["Orders"]
    assert routes.delete_topic("Orders", cluster="Other")
    assert [q["brokerName"] for q in routes.route("Orders")["queueDatas"]] == ["broker-a"]
    assert routes.delete_topic("Orders") and routes.route("Orders") is None
    assert not routes.delete_topic("Orders")


def test_cluster_info_lists_brokers_by_cluster():
    routes = RouteInfoManager()
    register(routes)
    register(routes, name="broker-b", addr="10.0.0.3:10911")
    info = routes.cluster_info()
    assert info["clusterAddrTable"] == {"DefaultCluster": ["broker-a", "broker-b"]}
    assert info["brokerAddrTable"]["broker-b"]["brokerAddrs"] == {"0": "10.0.0.3:10911"}


@pytest.mark.parametrize("config", [
    {"T": "x"}, {"T": {"readQueueNums": -1, "writeQueueNums": 1}}, {"T": {"readQueueNums": 1}},
    {"T": {"readQueueNums": 1, "writeQueueNums": True}},
])
def test_malformed_topic_configs_are_refused_without_changing_anything(config):
    routes = RouteInfoManager()
    with pytest.raises(ValueError, match="topic config of 'T'"):
        register(routes, config=config)
    assert routes.cluster_info() == {"brokerAddrTable": {}, "clusterAddrTable": {}}
