"""Producer SDK features through a real broker tree (`rmqd start`): compression round trip, the
ordered-send rule, oneway delivery, the async window, split batches and UNIQ_KEY message ids."""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from rmqd.client import (
    ConsumeFromWhere,
    LitePullConsumer,
    Message,
    MessageExt,
    Producer,
    SendStatus,
    split_batch,
)
from rmqd.errors import MQClientError
from rmqd.store.record import Prop, SysFlag
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

QUEUES = 4


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with BrokerTree(tmp_path_factory.mktemp("producer") / "store",
                      properties={"defaultTopicQueueNums": QUEUES}) as tree:
        yield tree


@pytest.fixture
def producer(broker):
    p = Producer("features-producer", namesrv=broker.namesrv_addr, default_topic_queue_nums=QUEUES)
    p.start()
    yield p
    p.shutdown()


def read_topic(broker: BrokerTree, topic: str, expected: int, timeout_s: float = 30) -> list[MessageExt]:
    """Every message of `topic` from its first offset, by a fresh group, until `expected` arrived."""
    consumer = LitePullConsumer(f"cg-{topic}", namesrv=broker.namesrv_addr,
                                consume_from=ConsumeFromWhere.FIRST_OFFSET)
    consumer.subscribe(topic, "*")
    consumer.start()
    got: list[MessageExt] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            got.extend(consumer.poll(timeout_ms=500))
    finally:
        consumer.shutdown()
    assert len(got) == expected, f"{topic}: read {len(got)} of {expected} messages"
    return got


def test_compressed_bodies_come_back_byte_identical_through_the_broker(broker, producer):
    rnd = random.Random(7)
    bodies = [
        b"ab" * 2048,  # exactly 4 KiB: compressed (the threshold is inclusive, as in RocketMQ)
        b"".join(rnd.choice([b"order ", b"paid ", b"shipped "]) for _ in range(20_000)),  # ~130 KiB
        os.urandom(16 * 1024),  # incompressible: sent as is
        b"x" * 4095,  # below the threshold
    ]
    results = [producer.send(Message("Compressed", body, keys=[f"k{i}"])) for i, body in enumerate(bodies)]
    by_id = {m.msg_id: m for m in read_topic(broker, "Compressed", len(bodies))}
    got = [by_id[r.msg_id] for r in results]
    assert [m.body for m in got] == bodies
    assert [bool(m.sys_flag & SysFlag.COMPRESSED) for m in got] == [True, True, False, False]
    assert [m.keys for m in got] == [[f"k{i}"] for i in range(len(bodies))]


def test_same_sharding_key_goes_to_one_queue_and_keeps_its_send_order(broker, producer):
    keys = [f"order-{i}" for i in range(6)]
    queue_of: dict[str, set[int]] = defaultdict(set)
    for seq in range(40):
        for key in keys:
            msg = Message("Ordered", f"{key}:{seq}".encode(), properties={"seq": str(seq), "key": key})
            result = producer.send(msg, sharding_key=key)
            queue_of[key].add(result.queue.queue_id)
    assert all(len(queues) == 1 for queues in queue_of.values())
    assert len({q for queues in queue_of.values() for q in queues}) > 1  # keys spread over queues
    messages = read_topic(broker, "Ordered", 40 * len(keys))
    for key in keys:
        mine = sorted((m for m in messages if m.properties["key"] == key), key=lambda m: m.queue_offset)
        assert {m.queue_id for m in mine} == queue_of[key]
        assert [int(m.properties["seq"]) for m in mine] == list(range(40))  # stored in send order
        assert all(m.properties[Prop.SHARDING_KEY] == key for m in mine)


def test_oneway_messages_are_all_delivered(broker, producer):
    producer.send(Message("Oneway", b"first"))
    for i in range(300):
        producer.send_oneway(Message("Oneway", f"oneway-{i}".encode()))
    bodies = {m.body for m in read_topic(broker, "Oneway", 301)}
    assert bodies == {b"first"} | {f"oneway-{i}".encode() for i in range(300)}


def test_async_sends_through_a_small_window_are_all_stored_once(broker):
    with Producer("features-async", namesrv=broker.namesrv_addr, back_pressure_for_async_send_num=32) as p:
        futures = [p.send_async(Message("Async", f"async-{i}".encode())) for i in range(3000)]
        results = [f.result(30) for f in futures]
        wait_until(lambda: p.async_in_flight == 0, 5, "the async window to empty")
    assert all(r.status is SendStatus.SEND_OK for r in results)
    assert len({(r.queue.queue_id, r.queue_offset) for r in results}) == 3000
    bodies = sorted(m.body for m in read_topic(broker, "Async", 3000))
    assert bodies == sorted(f"async-{i}".encode() for i in range(3000))


def test_split_batches_of_a_large_list_are_stored_in_order_with_the_results_ids(broker, producer):
    msgs = [Message("Batched", i.to_bytes(4, "big") * 2500, tags=f"T{i % 3}") for i in range(1000)]  # ~10 MB
    with pytest.raises(MQClientError, match="split_batch"):
        producer.send_batch(msgs)
    chunks = split_batch(msgs)
    assert len(chunks) >= 3
    ids: list[str] = []
    for chunk in chunks:
        ids.extend(producer.send_batch(chunk).msg_id.split(","))
    got = read_topic(broker, "Batched", len(msgs))
    by_id = {m.msg_id: m for m in got}
    assert [by_id[i].body for i in ids] == [m.body for m in msgs]  # UNIQ_KEY ids identify each message
    assert [by_id[i].tags for i in ids] == [m.tags for m in msgs]
    per_queue: dict[int, list[MessageExt]] = defaultdict(list)
    for i in ids:
        per_queue[by_id[i].queue_id].append(by_id[i])
    for stored in per_queue.values():  # within a queue, batch order is storage order
        assert [m.queue_offset for m in stored] == sorted(m.queue_offset for m in stored)


def test_send_result_ids_are_the_unique_keys_consumers_see(broker, producer):
    results = [producer.send(Message("Ids", f"id-{i}".encode())) for i in range(20)]
    results += [f.result(10) for f in [producer.send_async(Message("Ids", b"async")) for _ in range(20)]]
    got = read_topic(broker, "Ids", 40)
    assert {m.msg_id for m in got} == {r.msg_id for r in results}
    assert all(m.msg_id == m.properties["UNIQ_KEY"] and m.offset_msg_id != m.msg_id for m in got)


def test_auto_batched_sync_sends_from_many_threads_are_each_stored_once_under_their_own_id(broker):
    """Producer(auto_batch=True) through the real front: every thread's SendResult names its own
    message (UNIQ_KEY, queue, queue offset), and the broker stored each message exactly once."""
    threads, per_thread = 16, 25
    with Producer("auto-batch-producer", namesrv=broker.namesrv_addr, default_topic_queue_nums=QUEUES,
                  auto_batch=True) as producer:
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(lambda t=t: [producer.send(Message("AutoBatched", f"{t}-{i}".encode()))
                                                for i in range(per_thread)]) for t in range(threads)]
            results = [r for f in futures for r in f.result(timeout=60)]
        batches = producer._accumulator.batches_sent
    assert all(r.status is SendStatus.SEND_OK for r in results)
    assert batches < len(results)  # some sends really left together
    stored = {m.msg_id: m for m in read_topic(broker, "AutoBatched", len(results))}
    assert len(stored) == len(results)
    for result in results:
        message = stored[result.msg_id]
        assert (message.queue_id, message.queue_offset) == (result.queue.queue_id, result.queue_offset)
    assert sorted(m.body for m in stored.values()) == sorted(
        f"{t}-{i}".encode() for t in range(threads) for i in range(per_thread))
