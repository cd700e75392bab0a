"""The complete producer SDK against the real namesrv loop and fake brokers: retries on another
broker, latency-based broker avoidance, the async window, batches and split_batch, oneway, ids."""
from __future__ import annotations

import os
import time
from concurrent.futures import Future

import pytest

from rmqd.client import Message, MessageQueue, Producer, SendStatus
from rmqd.client._route import LatencyFaultTolerance, select_queue
from rmqd.client.producer import batch_item_size, split_batch, wire_properties
from rmqd.errors import (
    MQBrokerError,
    MQClientError,
    RemotingTimeoutError,
    RemotingTooMuchRequestError,
)
from rmqd.protocol import ResponseCode, decode_batch
from rmqd.store.record import decode_properties, decode_record
from tests.helpers import free_port, wait_until

MIB = 1024 * 1024
QUEUES = [MessageQueue("T", broker, qid) for broker in ("broker-a", "broker-b") for qid in range(2)]


def _register_topic(topic: str, *brokers) -> None:
    for broker in brokers:
        broker.topics[topic] = 4
        broker.register()


@pytest.fixture
def offline_producer():
    """A started producer whose namesrv does not exist: for checks that must fail before the network."""
    p = Producer("pg", namesrv=f"127.0.0.1:{free_port()}", send_timeout_ms=300)
    p.start()
    yield p
    p.shutdown()


# ---------------------------------------------------------------------------- fault tolerance


def test_latency_tables_map_each_latency_to_rocketmq_5s_unavailable_duration():
    faults = LatencyFaultTolerance()
    latencies = (0, 49, 50, 100, 549, 550, 1800, 3000, 5000, 15000, 99999)
    expected = [0, 0, 0, 0, 0, 2000, 5000, 6000, 10000, 30000, 30000]
    assert [faults.not_available_ms(ms) for ms in latencies] == expected


def test_a_failed_broker_is_unavailable_for_10_s_and_a_fast_one_stays_available():
    faults = LatencyFaultTolerance()
    faults.update("broker-a", 3, isolation=True)
    faults.update("broker-b", 3)
    assert not faults.is_available("broker-a") and faults.is_available("broker-b")
    assert faults.unavailable_brokers() == {"broker-a"}
    faults.update("broker-a", 3)  # a later fast answer makes it available again at once
    assert faults.is_available("broker-a")


def test_selection_prefers_available_brokers_then_any_other_broker_then_any_queue():
    assert select_queue(QUEUES, 0, unavailable={"broker-a"}).broker_name == "broker-b"
    other = select_queue(QUEUES, 0, avoid_broker="broker-b", unavailable={"broker-a"})
    assert other.broker_name == "broker-a"
    both = {"broker-a", "broker-b"}
    assert select_queue(QUEUES, 3, unavailable=both) == QUEUES[3]  # nothing is available: plain round-robin
    assert [select_queue(QUEUES, i) for i in range(4)] == QUEUES


def test_after_a_timeout_on_one_broker_the_next_sends_go_to_the_other(two_brokers, namesrv):
    first, second = two_brokers
    _register_topic("Avoid", first, second)
    first.blackhole_sends = True
    with Producer("pg", namesrv=namesrv.addr) as p:
        with pytest.raises(RemotingTimeoutError):  # round-robin starts on broker-a, which never answers
            p.send(Message("Avoid", b"x"), timeout_ms=300)
        results = [p.send(Message("Avoid", b"x")) for _ in range(6)]
    # A timed-out broker is avoided for 10 s: round-robin never picks broker-a again meanwhile.
    assert len(first.sends) == 1
    assert [r.queue.broker_name for r in results] == ["broker-b"] * 6


def test_without_latency_fault_tolerance_round_robin_keeps_alternating(two_brokers, namesrv):
    first, second = two_brokers
    _register_topic("NoAvoid", first, second)
    with Producer("pg", namesrv=namesrv.addr, send_latency_fault_enable=False) as p:
        first.fail_codes = [ResponseCode.SYSTEM_BUSY]
        brokers = [p.send(Message("NoAvoid", b"x")).queue.broker_name for _ in range(8)]
    assert brokers.count("broker-a") >= 3  # busy once, then chosen again in turn


# ---------------------------------------------------------------------------- retries


def test_system_busy_twice_is_retried_up_to_two_more_times_on_the_only_broker(broker, namesrv):
    _register_topic("Busy1", broker)
    broker.fail_codes = [ResponseCode.SYSTEM_BUSY, ResponseCode.SYSTEM_BUSY]
    with Producer("pg", namesrv=namesrv.addr) as p:
        result = p.send(Message("Busy1", b"x"))
    assert result.status is SendStatus.SEND_OK and len(broker.sends) == 3


def test_system_busy_on_every_attempt_raises_the_brokers_answer_after_three_attempts(broker, namesrv):
    _register_topic("Busy3", broker)
    broker.fail_codes = [ResponseCode.SYSTEM_BUSY] * 3
    with Producer("pg", namesrv=namesrv.addr) as p, pytest.raises(MQBrokerError) as info:
        p.send(Message("Busy3", b"x"))
    assert info.value.code == ResponseCode.SYSTEM_BUSY and len(broker.sends) == 3


@pytest.mark.parametrize("code", [ResponseCode.SYSTEM_ERROR, ResponseCode.SERVICE_NOT_AVAILABLE])
def test_every_retryable_code_is_retried_on_the_other_broker(two_brokers, namesrv, code):
    first, second = two_brokers
    _register_topic("Retry", first, second)
    first.fail_codes = [code]
    with Producer("pg", namesrv=namesrv.addr) as p:
        result = p.send(Message("Retry", b"x"))
    assert result.queue.broker_name == "broker-b" and (len(first.sends), len(second.sends)) == (1, 1)


def test_retry_count_zero_gives_the_busy_answer_to_the_caller(broker, namesrv):
    _register_topic("NoRetry", broker)
    broker.fail_codes = [ResponseCode.SYSTEM_BUSY]
    with Producer("pg", namesrv=namesrv.addr, retry_times_when_send_failed=0) as p:
        with pytest.raises(MQBrokerError, match="broker error 2"):
            p.send(Message("NoRetry", b"x"))
    assert len(broker.sends) == 1


def test_async_send_answered_system_busy_is_retried_on_the_other_broker(two_brokers, namesrv):
    first, second = two_brokers
    _register_topic("AsyncBusy", first, second)
    first.fail_codes = [ResponseCode.SYSTEM_BUSY]
    with Producer("pg", namesrv=namesrv.addr) as p:
        result = p.send_async(Message("AsyncBusy", b"x")).result(5)
    assert result.queue.broker_name == "broker-b" and (len(first.sends), len(second.sends)) == (1, 1)


def test_async_retries_follow_retry_times_when_send_async_failed(broker, namesrv):
    _register_topic("AsyncBusy3", broker)
    broker.fail_codes = [ResponseCode.SYSTEM_BUSY] * 2
    with Producer("pg", namesrv=namesrv.addr, retry_times_when_send_async_failed=1) as p:
        with pytest.raises(MQBrokerError):
            p.send_async(Message("AsyncBusy3", b"x")).result(5)
    assert len(broker.sends) == 2


def test_a_sharding_key_send_is_never_retried_elsewhere(two_brokers, namesrv):
    first, second = two_brokers
    _register_topic("OrderedBusy", first, second)
    first.fail_codes = [ResponseCode.SYSTEM_BUSY] * 10
    second.fail_codes = [ResponseCode.SYSTEM_BUSY] * 10
    with Producer("pg", namesrv=namesrv.addr) as p, pytest.raises(MQBrokerError):
        p.send(Message("OrderedBusy", b"x"), sharding_key="order-7")
    assert len(first.sends) + len(second.sends) == 1


def test_retries_stop_when_the_timeout_budget_is_spent(broker, namesrv):
    _register_topic("Budget", broker)
    broker.blackhole_sends = True
    with Producer("pg", namesrv=namesrv.addr) as p:
        started = time.monotonic()
        with pytest.raises(RemotingTimeoutError):
            p.send(Message("Budget", b"x"), timeout_ms=400)
        elapsed = time.monotonic() - started
    assert 0.39 <= elapsed < 2.0 and len(broker.sends) == 1  # the one attempt used the whole budget


# ---------------------------------------------------------------------------- async window


def test_send_async_blocks_on_a_full_window_and_raises_when_it_stays_full(broker, namesrv):
    _register_topic("Window", broker)
    with Producer("pg", namesrv=namesrv.addr, back_pressure_for_async_send_num=3) as p:
        p.send(Message("Window", b"route"))
        broker.blackhole_sends = True
        futures = [p.send_async(Message("Window", b"x"), timeout_ms=10_000) for _ in range(3)]
        assert p.async_in_flight == 3
        started = time.monotonic()
        with pytest.raises(RemotingTooMuchRequestError, match="async window full"):
            p.send_async(Message("Window", b"x"), timeout_ms=300)
        assert time.monotonic() - started >= 0.29  # it waited for room for its whole budget
        wait_until(lambda: len(broker.sends) == 4, 5, "the three async sends to reach the broker")
        assert not any(f.done() for f in futures) and p.async_in_flight == 3
    assert len(broker.sends) == 4  # the refused send never left


def test_a_blocked_send_async_goes_as_soon_as_an_earlier_send_completes(broker, namesrv):
    _register_topic("Window2", broker)
    with Producer("pg", namesrv=namesrv.addr, back_pressure_for_async_send_num=2,
                  retry_times_when_send_async_failed=0) as p:
        p.send(Message("Window2", b"route"))
        broker.blackhole_sends = True
        early = [p.send_async(Message("Window2", b"x"), timeout_ms=400) for _ in range(2)]
        wait_until(lambda: len(broker.sends) == 3, 5, "the early sends to be swallowed")
        broker.blackhole_sends = False  # the swallowed sends stay unanswered; later ones are answered
        late = p.send_async(Message("Window2", b"late"), timeout_ms=5000)  # waits for an early one to end
        assert any(f.done() for f in early)  # room appeared only when an early send timed out
        with pytest.raises(RemotingTimeoutError):
            early[0].result(5)
        assert late.result(5).status is SendStatus.SEND_OK
        wait_until(lambda: p.async_in_flight == 0, 5, "the window to empty")


def test_send_async_from_the_callback_thread_never_waits_for_the_window_it_alone_can_free(broker, namesrv):
    _register_topic("WindowCallback", broker)
    with Producer("pg", namesrv=namesrv.addr, back_pressure_for_async_send_num=1) as p:
        p.send(Message("WindowCallback", b"route"))
        broker.blackhole_sends = True
        p.send_async(Message("WindowCallback", b"x"), timeout_ms=10_000)
        started = time.monotonic()
        nested: Future = Future()

        def send_from_the_callback_thread() -> None:
            try:
                nested.set_result(p.send_async(Message("WindowCallback", b"y"), timeout_ms=5000))
            except Exception as exc:
                nested.set_exception(exc)

        assert p._callbacks.submit(send_from_the_callback_thread)
        with pytest.raises(RemotingTooMuchRequestError):
            nested.result(5)
        assert time.monotonic() - started < 1.0  # refused at once, not after its 5 s budget


def test_the_window_also_bounds_the_bytes_in_flight(broker, namesrv):
    _register_topic("WindowBytes", broker)
    with Producer("pg", namesrv=namesrv.addr, back_pressure_for_async_send_size=2500) as p:
        p.send(Message("WindowBytes", b"route"))
        broker.blackhole_sends = True
        p.send_async(Message("WindowBytes", b"x" * 1000), timeout_ms=10_000)
        p.send_async(Message("WindowBytes", b"x" * 1000), timeout_ms=10_000)
        with pytest.raises(RemotingTooMuchRequestError):
            p.send_async(Message("WindowBytes", b"x" * 1000), timeout_ms=200)
        p.send_async(Message("WindowBytes", b"x" * 400), timeout_ms=10_000)  # still fits in the bytes


def test_many_async_sends_through_a_small_window_all_complete(broker, namesrv):
    _register_topic("WindowMany", broker)
    with Producer("pg", namesrv=namesrv.addr, back_pressure_for_async_send_num=16) as p:
        futures = [p.send_async(Message("WindowMany", str(i).encode())) for i in range(500)]
        results = [f.result(10) for f in futures]
        wait_until(lambda: p.async_in_flight == 0, 5, "the window to empty")
    assert all(r.status is SendStatus.SEND_OK for r in results) and broker.all_stored("WindowMany") == 500


def test_send_batch_async_resolves_to_one_result_for_the_whole_batch(broker, namesrv):
    with Producer("pg", namesrv=namesrv.addr) as p:
        result = p.send_batch_async([Message("AsyncBatch", str(i).encode()) for i in range(5)]).result(5)
    assert len(result.msg_id.split(",")) == 5 and broker.all_stored("AsyncBatch") == 5


# ---------------------------------------------------------------------------- batches


def test_a_batch_over_4_mib_is_refused_with_a_clear_error_before_any_network_call(broker, namesrv):
    msgs = [Message("BigBatch", b"x" * (1100 * 1024)) for _ in range(4)]  # 4.3 MiB together
    with Producer("pg", namesrv=namesrv.addr) as p:
        with pytest.raises(MQClientError, match=r"encodes to \d+ bytes, more than maxMessageSize.*split_b"):
            p.send_batch(msgs)
        with pytest.raises(MQClientError, match="split_batch"):
            p.send_batch_async(msgs)
    assert broker.sends == []


def test_batch_rules_are_refused_with_clear_errors(offline_producer):
    cases = [
        ([], "at least one message"),
        ([Message("A", b"1"), Message("B", b"2")], "one topic"),
        ([Message("A", b"1", delay_level=2)], "delayed"),
        ([Message("A", b"1"), Message("A", b"2", wait_store_msg_ok=False)], "wait_store_msg_ok"),
        ([Message("%RETRY%cg", b"1")], "retry topics"),
        ([Message("A", b"")], "body is empty"),
    ]
    for msgs, error in cases:
        with pytest.raises(MQClientError, match=error):
            offline_producer.send_batch(msgs)


def test_split_batch_cuts_a_list_into_batches_that_each_encode_within_the_limit():
    msgs = [Message("Split", bytes([i % 256]) * (1000 + i), tags="T", keys=[f"k{i}"]) for i in range(300)]
    chunks = split_batch(msgs, max_bytes=64 * 1024)
    assert [m for chunk in chunks for m in chunk] == msgs  # same messages, same order
    assert all(sum(batch_item_size(m) for m in chunk) <= 64 * 1024 for chunk in chunks)
    assert all(sum(batch_item_size(m) for m in chunk) + batch_item_size(nxt[0]) > 64 * 1024
               for chunk, nxt in zip(chunks, chunks[1:]))  # each batch is as full as it can be


def test_split_batch_parts_are_each_accepted_by_send_batch(broker, namesrv):
    msgs = [Message("SplitSend", b"y" * 700) for _ in range(50)]
    limit = 8 * 1024
    with Producer("pg", namesrv=namesrv.addr, max_message_size=limit) as p:
        chunks = split_batch(msgs, max_bytes=limit)
        results = [p.send_batch(chunk) for chunk in chunks]
    assert len(chunks) > 1 and sum(len(r.msg_id.split(",")) for r in results) == 50
    assert all(len(cmd.body) <= limit for cmd in broker.sends)
    assert sum(len(decode_batch(cmd.body)) for cmd in broker.sends) == 50


def test_split_batch_refuses_a_message_that_alone_is_over_the_limit():
    with pytest.raises(MQClientError, match="message 1 alone encodes to"):
        split_batch([Message("S", b"x"), Message("S", b"x" * 5000)], max_bytes=4096)


def test_split_batch_of_the_default_limit_handles_4_mib_of_messages():
    msgs = [Message("S4", b"z" * 1024 * 1024) for _ in range(9)]
    chunks = split_batch(msgs)
    assert [len(c) for c in chunks] == [3, 3, 3]  # 4 x 1 MiB + overhead would pass 4 MiB


def test_batch_items_carry_unique_keys_matching_the_result_ids(broker, namesrv):
    with Producer("pg", namesrv=namesrv.addr) as p:
        result = p.send_batch([Message("Ids", b"a"), Message("Ids", b"b")])
    stored = broker.stored("Ids", result.queue.queue_id)
    keys = [decode_record(raw, 0).properties["UNIQ_KEY"] for raw in stored]
    assert keys == result.msg_id.split(",") and len(set(keys)) == 2


# ---------------------------------------------------------------------------- oneway, validation


def test_send_oneway_of_many_messages_all_reach_the_broker(broker, namesrv):
    with Producer("pg", namesrv=namesrv.addr) as p:
        p.send(Message("OnewayMany", b"route"))
        for i in range(200):
            p.send_oneway(Message("OnewayMany", str(i).encode()))
        wait_until(lambda: broker.all_stored("OnewayMany") == 201, 10, "every oneway message to be stored")


def test_send_oneway_with_a_sharding_key_keeps_the_keys_queue(broker, namesrv):
    with Producer("pg", namesrv=namesrv.addr) as p:
        queue = p.send(Message("OnewayKey", b"first"), sharding_key="key-1").queue
        for _ in range(5):
            p.send_oneway(Message("OnewayKey", b"x"), sharding_key="key-1")
        wait_until(lambda: len(broker.stored("OnewayKey", queue.queue_id)) == 6, 5, "the oneway messages")


@pytest.mark.parametrize(("msg", "error"), [
    (Message("SCHEDULE_TOPIC_XXXX", b"x"), "reserved system topic"),
    (Message("rmq_sys_custom", b"x"), "reserved system topic"),
    (Message("bad topic", b"x"), "characters outside"),
    (Message("T" * 128, b"x"), "limit is 127"),
    (Message("Fine", b"x" * (4 * MIB + 1)), "maxMessageSize"),
    (Message("Fine", b"x", properties={"p": "v" * 40000}), "limit is 32767"),
])
def test_each_send_kind_refuses_an_invalid_message_before_the_network(offline_producer, msg, error):
    for send in (offline_producer.send, offline_producer.send_async, offline_producer.send_oneway):
        with pytest.raises(MQClientError, match=error):
            send(msg)


def test_an_empty_sharding_key_is_refused(offline_producer):
    with pytest.raises(MQClientError, match="sharding_key"):
        offline_producer.send(Message("T", b"x"), sharding_key="")


def test_uniq_keys_of_many_sends_are_all_different(broker, namesrv):
    with Producer("pg", namesrv=namesrv.addr) as p:
        ids = [p.send(Message("Uniq", b"x")).msg_id for _ in range(300)]
        ids += [f.result(5).msg_id for f in [p.send_async(Message("Uniq", b"y")) for _ in range(300)]]
    assert len(set(ids)) == 600


def test_compression_threshold_and_level_follow_the_producer_settings(broker, namesrv):
    body = b"abc" * 1000  # 3000 bytes: under the default 4 KiB threshold
    with Producer("pg", namesrv=namesrv.addr) as p:
        plain = p.send(Message("Comp", body))
    with Producer("pg", namesrv=namesrv.addr, compress_over_bytes=1024, compress_level=9) as p:
        packed = p.send(Message("Comp", body))
    plain_rec = decode_record(broker.stored("Comp", plain.queue.queue_id)[0], 0)
    packed_rec = decode_record(broker.stored("Comp", packed.queue.queue_id)[-1], 0)
    assert plain_rec.sys_flag & 1 == 0 and plain_rec.body == body
    assert packed_rec.sys_flag & 1 == 1 and len(packed_rec.body) < 100


def test_incompressible_bodies_are_sent_as_they_are(broker, namesrv):
    body = os.urandom(8192)
    with Producer("pg", namesrv=namesrv.addr) as p:
        result = p.send(Message("Random", body))
    record = decode_record(broker.stored("Random", result.queue.queue_id)[0], 0)
    assert record.sys_flag & 1 == 0 and record.body == body


@pytest.mark.parametrize("msg, sharding_key, expected", [
    (Message("T", b"x"), None, {"WAIT": "true"}),
    (Message("T", b"x", wait_store_msg_ok=False), None, {"WAIT": "false"}),
    (Message("T", b"x", tags="A", keys=["k1", "k2"], properties={"p": "v"}), "s",
     {"p": "v", "TAGS": "A", "KEYS": "k1 k2", "WAIT": "true", "__SHARDINGKEY": "s"}),
    (Message("T", b"x", delay_level=3), None, {"WAIT": "true", "DELAY": "3"}),
])
def test_wire_properties_of_plain_and_decorated_messages_end_with_the_uniq_key(msg, sharding_key, expected):
    text = wire_properties(msg, "ABC", sharding_key)
    assert text.endswith("UNIQ_KEY\x01ABC\x02") and text.count("UNIQ_KEY") == 1
    assert decode_properties(text.encode()) == {**expected, "UNIQ_KEY": "ABC"}
