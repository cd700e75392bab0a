"""Producer against the real namesrv loop and a fake broker: routing, selection, retries, statuses."""
from __future__ import annotations

import re
import zlib

import pytest

from rmqd.client import Message, MessageQueue, Producer, SendStatus
from rmqd.client.producer import select_by_sharding_key, select_round_robin
from rmqd.errors import MQBrokerError, MQClientError, RemotingTimeoutError, RouteNotFoundError
from rmqd.protocol import ResponseCode
from rmqd.store.record import SysFlag, decode_record
from tests.helpers import free_port, wait_until
from tests.unit.client.fake_cluster import has_route

QUEUES = [MessageQueue("T", broker, qid) for broker in ("broker-a", "broker-b") for qid in range(4)]


@pytest.fixture
def producer(namesrv):
    p = Producer("pg", namesrv=namesrv.addr, send_timeout_ms=2000)
    p.start()
    yield p
    p.shutdown()


def test_round_robin_walks_every_queue_in_turn():
    assert [select_round_robin(QUEUES, i) for i in range(10)] == QUEUES + QUEUES[:2]


def test_round_robin_retry_avoids_the_broker_that_failed():
    assert select_round_robin(QUEUES, 1, avoid_broker="broker-a").broker_name == "broker-b"
    only_a = QUEUES[:4]
    assert select_round_robin(only_a, 1, avoid_broker="broker-a") == only_a[1]  # nothing else to pick


def test_sharding_key_picks_queue_abs_java_hash_modulo_queue_count():
    assert select_by_sharding_key(QUEUES, "hello") == QUEUES[99162322 % 8]  # Java "hello".hashCode()
    assert select_by_sharding_key(QUEUES, "polygenelubricants") == QUEUES[2**31 % 8]  # Integer.MIN_VALUE


def test_sharding_key_is_stable_and_spreads_keys_over_all_queues():
    assert len({select_by_sharding_key(QUEUES, "order-1") for _ in range(100)}) == 1
    assert len({select_by_sharding_key(QUEUES, f"order-{i}") for i in range(200)}) == 8


def test_send_returns_send_ok_with_queue_offset_and_a_32_hex_unique_key(broker, producer):
    result = producer.send(Message("TopicA", b"hello", tags="A", keys=["k1", "k2"], properties={"p": "v"}))
    assert result.status is SendStatus.SEND_OK
    assert re.fullmatch(r"[0-9A-F]{32}", result.msg_id)
    assert result.queue.broker_name == "broker-a" and result.queue_offset == 0
    record = decode_record(broker.stored("TopicA", result.queue.queue_id)[0], 0)
    assert record.body == b"hello"
    assert record.properties["TAGS"] == "A" and record.properties["KEYS"] == "k1 k2"
    assert record.properties["p"] == "v" and record.properties["UNIQ_KEY"] == result.msg_id


def test_unknown_topic_is_sent_through_the_tbw102_route_and_gets_created(broker, namesrv, producer):
    assert not has_route(namesrv.addr, "Fresh")
    producer.send(Message("Fresh", b"x"))
    assert broker.topics["Fresh"] == 8
    assert has_route(namesrv.addr, "Fresh")


def test_sends_are_spread_round_robin_over_the_topic_queues(broker, producer):
    for i in range(16):
        producer.send(Message("Spread", str(i).encode()))
    assert sorted(len(broker.stored("Spread", qid)) for qid in range(8)) == [2] * 8


def test_same_sharding_key_lands_on_the_same_queue(broker, producer):
    queues = {producer.send(Message("Ordered", b"x"), sharding_key="order-42").queue for _ in range(5)}
    assert len(queues) == 1


def test_system_busy_is_retried_on_the_other_broker(two_brokers, namesrv):
    first, second = two_brokers
    first.topics["Busy"] = 4
    second.topics["Busy"] = 4
    first.register()
    second.register()
    first.fail_codes = [ResponseCode.SYSTEM_BUSY]
    with Producer("pg", namesrv=namesrv.addr) as p:
        result = p.send(Message("Busy", b"x"))  # round-robin starts on broker-a's first queue
    assert result.status is SendStatus.SEND_OK and result.queue.broker_name == "broker-b"
    assert (len(first.sends), len(second.sends)) == (1, 1)


def test_non_retryable_broker_error_raises_mq_broker_error_at_once(broker, producer):
    broker.fail_codes = [ResponseCode.MESSAGE_ILLEGAL]
    with pytest.raises(MQBrokerError) as info:
        producer.send(Message("Bad", b"x"))
    assert info.value.code == ResponseCode.MESSAGE_ILLEGAL and len(broker.sends) == 1


def test_flush_disk_timeout_is_a_status_not_an_error(broker, producer):
    producer.send(Message("Flush", b"first"))  # create the topic
    broker.fail_codes = [ResponseCode.FLUSH_DISK_TIMEOUT]
    assert producer.send(Message("Flush", b"x")).status is SendStatus.FLUSH_DISK_TIMEOUT


def test_a_broker_that_never_answers_makes_send_time_out_within_its_budget(broker, producer):
    broker.blackhole_sends = True
    with pytest.raises(RemotingTimeoutError):
        producer.send(Message("Silent", b"x"), timeout_ms=500)
    assert 1 <= len(broker.sends) <= 3


def test_bodies_of_4_kib_and_more_are_zlib_compressed(broker, producer):
    body = b"abcd" * 2048
    result = producer.send(Message("Big", body))
    record = decode_record(broker.stored("Big", result.queue.queue_id)[0], 0)
    assert record.sys_flag & SysFlag.COMPRESSED and zlib.decompress(record.body) == body


def test_send_async_resolves_to_a_send_result(broker, producer):
    futures = [producer.send_async(Message("Async", str(i).encode())) for i in range(20)]
    results = [f.result(5) for f in futures]
    assert all(r.status is SendStatus.SEND_OK for r in results) and broker.all_stored("Async") == 20


def test_send_async_reports_broker_errors_through_the_future(broker, producer):
    producer.send(Message("AsyncErr", b"create"))
    broker.fail_codes = [ResponseCode.MESSAGE_ILLEGAL]
    with pytest.raises(MQBrokerError):
        producer.send_async(Message("AsyncErr", b"x")).result(5)


def test_send_oneway_reaches_the_broker(broker, producer):
    producer.send(Message("Oneway", b"create"))
    producer.send_oneway(Message("Oneway", b"fire"))
    wait_until(lambda: broker.all_stored("Oneway") == 2, 5, "the oneway message to be stored")


def test_send_batch_stores_every_message_in_one_request(broker, producer):
    result = producer.send_batch([Message("Batch", str(i).encode(), tags="T") for i in range(10)])
    assert len(broker.sends) == 1 and len(result.msg_id.split(",")) == 10
    records = [decode_record(raw, 0) for raw in broker.stored("Batch", result.queue.queue_id)]
    assert [r.body for r in records] == [str(i).encode() for i in range(10)]
    assert result.msg_id.split(",") == [r.properties["UNIQ_KEY"] for r in records]
    assert len(result.offset_msg_id.split(",")) == 10


def test_send_batch_refuses_mixed_topics_and_delays():
    p = Producer("pg", namesrv="127.0.0.1:1")
    p.start()
    try:
        with pytest.raises(MQClientError, match="one topic"):
            p.send_batch([Message("A", b"1"), Message("B", b"2")])
        with pytest.raises(MQClientError, match="delayed"):
            p.send_batch([Message("A", b"1", delay_level=2)])
    finally:
        p.shutdown()


def test_invalid_messages_are_refused_before_any_network_call():
    p = Producer("pg", namesrv=f"127.0.0.1:{free_port()}")
    p.start()
    try:
        with pytest.raises(MQClientError, match="body is empty"):
            p.send(Message("T", b""))
    finally:
        p.shutdown()


def test_sending_before_start_raises_a_clear_error():
    with pytest.raises(MQClientError, match="not started"):
        Producer("pg").send(Message("T", b"x"))


def test_no_route_and_no_auto_create_route_raises_route_not_found(namesrv, producer):
    with pytest.raises(RouteNotFoundError, match="TBW102"):
        producer.send(Message("Nowhere", b"x"))


def test_namesrv_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("NAMESRV_ADDR", "10.0.0.1:9876;10.0.0.2:9876")
    assert Producer("pg").namesrv_addrs == ["10.0.0.1:9876", "10.0.0.2:9876"]
    monkeypatch.delenv("NAMESRV_ADDR")
    assert Producer("pg").namesrv_addrs == ["127.0.0.1:9876"]


def test_invalid_group_names_are_refused():
    with pytest.raises(MQClientError, match="group"):
        Producer("bad group!")


def test_properties_pushed_past_32767_bytes_by_the_sdks_own_keys_are_refused():
    p = Producer("pg", namesrv=f"127.0.0.1:{free_port()}")
    p.start()
    try:
        with pytest.raises(MQClientError, match="properties encode to"):
            p.send(Message("T", b"x", properties={"p": "v" * 32740}))
    finally:
        p.shutdown()
