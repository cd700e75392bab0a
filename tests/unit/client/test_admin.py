"""MQAdmin against the real namesrv loop and fake brokers."""
from __future__ import annotations

import pytest

from rmqd.client import Message, MQAdmin, Producer
from rmqd.errors import MQClientError, RouteNotFoundError
from tests.unit.client.fake_cluster import has_route


@pytest.fixture
def admin(namesrv):
    client = MQAdmin(namesrv=namesrv.addr)
    client.start()
    yield client
    client.shutdown()


def test_create_topic_reaches_every_master_and_shows_in_the_topic_list(two_brokers, namesrv, admin):
    updated = admin.create_topic("Orders", read_queue_nums=4, write_queue_nums=4)
    assert updated == sorted(broker.addr for broker in two_brokers)
    assert all(broker.topics["Orders"] == 4 for broker in two_brokers)
    assert has_route(namesrv.addr, "Orders") and "Orders" in admin.topic_list()


def test_create_topic_on_one_broker_address_only(two_brokers, admin):
    first, second = two_brokers
    assert admin.create_topic("Solo", broker_addr=second.addr) == [second.addr]
    assert "Solo" in second.topics and "Solo" not in first.topics


def test_create_topic_in_an_unknown_cluster_raises_route_not_found(broker, admin):
    with pytest.raises(RouteNotFoundError, match="NoSuchCluster"):
        admin.create_topic("Orders", cluster="NoSuchCluster")


def test_create_topic_validates_its_arguments(admin):
    with pytest.raises(MQClientError, match="characters outside"):
        admin.create_topic("bad topic")
    with pytest.raises(MQClientError, match="write_queue_nums"):
        admin.create_topic("Orders", write_queue_nums=0)
    with pytest.raises(MQClientError, match="perm"):
        admin.create_topic("Orders", perm=8)


def test_topic_route_and_status_report_each_queue(broker, namesrv, admin):
    admin.create_topic("Stat", read_queue_nums=2, write_queue_nums=2)
    with Producer("pg", namesrv=namesrv.addr) as producer:
        for _ in range(3):
            producer.send(Message("Stat", b"x"), sharding_key="same")
    route = admin.topic_route("Stat")
    assert route["brokerDatas"][0]["brokerName"] == "broker-a"
    status = admin.topic_status("Stat")
    assert [(row["queue_id"], row["min_offset"]) for row in status] == [(0, 0), (1, 0)]
    assert sorted(row["max_offset"] for row in status) == [0, 3]
    with pytest.raises(RouteNotFoundError):
        admin.topic_route("Missing")


def test_cluster_list_and_master_addresses(two_brokers, admin):
    info = admin.cluster_list()
    assert info["clusterAddrTable"] == {"DefaultCluster": ["broker-a", "broker-b"]}
    assert admin.master_addrs("DefaultCluster") == sorted(broker.addr for broker in two_brokers)


def test_wipe_and_add_write_perm_round_trip(broker, admin):
    assert admin.wipe_write_perm("broker-a") == 1  # TBW102
    assert admin.topic_route("TBW102")["queueDatas"][0]["perm"] == 4
    assert admin.add_write_perm("broker-a") == 1
    assert admin.topic_route("TBW102")["queueDatas"][0]["perm"] == 6


def test_consumer_progress_reports_lag_per_queue(broker, namesrv, admin):
    admin.create_topic("Lag", read_queue_nums=2, write_queue_nums=2)
    with Producer("pg", namesrv=namesrv.addr) as producer:
        for _ in range(5):
            producer.send(Message("Lag", b"x"), sharding_key="k")
    queue_id = next(qid for qid in (0, 1) if broker.stored("Lag", qid))
    broker.offsets[("cg", "Lag", queue_id)] = 2
    rows = admin.consumer_progress("cg", "Lag")
    row = next(r for r in rows if r["queue_id"] == queue_id)
    assert (row["broker_offset"], row["consumer_offset"], row["diff"]) == (5, 2, 3)
    assert [r["queue_id"] for r in admin.consumer_progress("cg")] == [queue_id]  # only committed queues


def test_admin_before_start_raises_a_clear_error():
    with pytest.raises(MQClientError, match="not started"):
        MQAdmin(namesrv="127.0.0.1:1").topic_status("T")
