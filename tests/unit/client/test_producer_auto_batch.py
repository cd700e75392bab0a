"""Producer(auto_batch=True): concurrent synchronous sends leave together in batches (RocketMQ 5
autoBatch), against the real namesrv loop and a fake broker whose answers a test can hold back."""
from __future__ import annotations

import threading

import pytest

from rmqd.client import Message, Producer, SendStatus
from rmqd.client._accumulator import ProduceAccumulator
from rmqd.client._route import select_by_sharding_key
from rmqd.errors import MQBrokerError, MQClientError, RemotingTimeoutError
from rmqd.protocol import RequestCode, ResponseCode, iter_batch
from rmqd.store.record import decode_record, offset_msg_id
from tests.helpers import wait_until


def _register_topic(topic: str, broker, queues: int = 4) -> None:
    broker.topics[topic] = queues
    broker.register()


class Senders:
    """Threads that each make one synchronous send and keep its result or exception."""

    def __init__(self, producer: Producer, msgs: list[Message], **kwargs) -> None:
        self.results: list = [None] * len(msgs)
        self.threads = [threading.Thread(target=self._send, args=(producer, i, msg, kwargs), daemon=True)
                        for i, msg in enumerate(msgs)]

    def _send(self, producer: Producer, index: int, msg: Message, kwargs: dict) -> None:
        try:
            self.results[index] = producer.send(msg, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            self.results[index] = exc

    def start(self) -> Senders:
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> list:
        for thread in self.threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in self.threads), "a sender never returned"
        return self.results


def _hold_first_batch(broker, producer: Producer, topic: str) -> Senders:
    """One send in flight that the broker does not answer until `broker.send_gate` is set."""
    broker.send_gate.clear()
    first = Senders(producer, [Message(topic, b"first")]).start()
    wait_until(lambda: producer._accumulator.in_flight() == 1, timeout_s=5)
    return first


def _stored_by_offset(broker, topic: str, queue_id: int) -> dict[int, dict]:
    records = (decode_record(raw, 0) for raw in broker.stored(topic, queue_id))
    return {rec.queue_offset: rec for rec in records}


def test_sends_made_while_a_batch_is_in_flight_leave_together_in_the_next_one(broker, namesrv):
    _register_topic("Auto", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p:
        first = _hold_first_batch(broker, p, "Auto")
        rest = Senders(p, [Message("Auto", f"m{i}".encode(), keys=[f"k{i}"]) for i in range(9)]).start()
        wait_until(lambda: p._accumulator.held_messages() == 9, timeout_s=5)
        broker.send_gate.set()
        results = first.join() + rest.join()
    assert [cmd.code for cmd in broker.sends] == [RequestCode.SEND_BATCH_MESSAGE] * 2
    assert [len(list(iter_batch(cmd.body))) for cmd in broker.sends] == [1, 9]
    assert all(r.status is SendStatus.SEND_OK for r in results)
    for result in results:  # each sender gets its own message's id, offset and offsetMsgId
        record = _stored_by_offset(broker, "Auto", result.queue.queue_id)[result.queue_offset]
        assert record.properties["UNIQ_KEY"] == result.msg_id
        assert offset_msg_id(broker.store_host, record.phy_offset) == result.offset_msg_id
    bodies = [_stored_by_offset(broker, "Auto", r.queue.queue_id)[r.queue_offset].body for r in results]
    assert sorted(bodies) == sorted([b"first"] + [f"m{i}".encode() for i in range(9)])


def test_a_lone_send_leaves_at_once_and_does_not_wait_for_the_batch_delay(broker, namesrv):
    _register_topic("Lone", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True, batch_max_delay_ms=30_000) as p:
        result = p.send(Message("Lone", b"x"), timeout_ms=2000)  # held for the delay: would time out
    assert result.status is SendStatus.SEND_OK and len(broker.sends) == 1


def test_held_bytes_reaching_batch_max_bytes_leave_without_waiting_for_the_batch_in_flight(broker, namesrv):
    _register_topic("Full", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True, batch_max_bytes=4096) as p:
        first = _hold_first_batch(broker, p, "Full")
        rest = Senders(p, [Message("Full", b"y" * 1000) for _ in range(4)]).start()  # > 4 KiB with headers
        wait_until(lambda: p._accumulator.batches_sent == 2, timeout_s=5)
        assert p._accumulator.in_flight() == 2  # the full batch left while the first is unanswered
        broker.send_gate.set()
        results = first.join() + rest.join()
    assert all(r.status is SendStatus.SEND_OK for r in results)


def test_a_held_send_older_than_batch_max_delay_leaves_on_its_own(broker, namesrv):
    _register_topic("Stale", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True, batch_max_delay_ms=50) as p:
        first = _hold_first_batch(broker, p, "Stale")
        second = Senders(p, [Message("Stale", b"late")]).start()
        wait_until(lambda: p._accumulator.batches_sent == 2, timeout_s=5)  # the gate is still closed
        broker.send_gate.set()
        results = first.join() + second.join()
    assert all(r.status is SendStatus.SEND_OK for r in results)


def test_a_batch_answered_system_busy_is_retried_message_by_message_with_the_same_id(broker, namesrv):
    _register_topic("Busy", broker)
    broker.fail_codes = [ResponseCode.SYSTEM_BUSY]
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p:
        result = p.send(Message("Busy", b"x"))
    assert [cmd.code for cmd in broker.sends] == [RequestCode.SEND_BATCH_MESSAGE, RequestCode.SEND_MESSAGE]
    record = _stored_by_offset(broker, "Busy", result.queue.queue_id)[result.queue_offset]
    assert record.properties["UNIQ_KEY"] == result.msg_id
    batch_item_properties = bytes(next(iter(iter_batch(broker.sends[0].body)))[2]).decode()
    assert f"UNIQ_KEY\x01{result.msg_id}\x02" in batch_item_properties  # the retry kept the id


def test_system_busy_on_every_attempt_reaches_the_caller_after_the_retry_budget(broker, namesrv):
    _register_topic("Busy3", broker)
    broker.fail_codes = [ResponseCode.SYSTEM_BUSY] * 3
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p, pytest.raises(MQBrokerError) as info:
        p.send(Message("Busy3", b"x"))
    assert info.value.code == ResponseCode.SYSTEM_BUSY and len(broker.sends) == 3  # batch + 2 retries


def test_a_non_retryable_answer_to_a_batch_of_several_gives_each_message_its_own_attempt(broker, namesrv):
    _register_topic("Illegal", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p:
        first = _hold_first_batch(broker, p, "Illegal")
        rest = Senders(p, [Message("Illegal", f"m{i}".encode()) for i in range(5)]).start()
        wait_until(lambda: p._accumulator.held_messages() == 5, timeout_s=5)
        broker.fail_codes = [None, ResponseCode.MESSAGE_ILLEGAL]  # the first batch passes, the next not
        broker.send_gate.set()
        results = first.join() + rest.join()
    assert all(r.status is SendStatus.SEND_OK for r in results), results
    codes = [cmd.code for cmd in broker.sends]
    assert codes == [RequestCode.SEND_BATCH_MESSAGE] * 2 + [RequestCode.SEND_MESSAGE] * 5


def test_a_non_retryable_answer_to_a_lone_message_reaches_its_caller(broker, namesrv):
    _register_topic("Illegal1", broker)
    broker.fail_codes = [ResponseCode.MESSAGE_ILLEGAL]
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p, pytest.raises(MQBrokerError) as info:
        p.send(Message("Illegal1", b"x"))
    assert info.value.code == ResponseCode.MESSAGE_ILLEGAL and len(broker.sends) == 1


@pytest.mark.parametrize("msg", [
    Message("Plain", b"x", delay_level=3),
    Message("Plain", b"z" * 5000),  # compressed bodies (>= 4 KiB) go alone
    Message("%RETRY%cg", b"x"),
])
def test_messages_a_batch_cannot_carry_take_the_ordinary_path(broker, namesrv, msg):
    _register_topic("Plain", broker)
    _register_topic("%RETRY%cg", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p:
        assert p.send(msg).status is SendStatus.SEND_OK
    assert [cmd.code for cmd in broker.sends] == [RequestCode.SEND_MESSAGE]


def test_sharding_key_sends_are_batched_per_queue_and_keep_their_order(broker, namesrv):
    _register_topic("Ordered", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p:
        results = [p.send(Message("Ordered", f"{i}".encode()), sharding_key="order-7") for i in range(20)]
        queues = p._publish_queues("Ordered")[0]
    expected = select_by_sharding_key(queues, "order-7")
    assert {r.queue.queue_id for r in results} == {expected.queue_id}
    assert [r.queue_offset for r in results] == sorted(r.queue_offset for r in results)
    stored = [decode_record(raw, 0).body for raw in broker.stored("Ordered", expected.queue_id)]
    assert stored == [f"{i}".encode() for i in range(20)]


def test_many_threads_of_auto_batched_sends_all_land_exactly_once(broker, namesrv):
    _register_topic("Many", broker)
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True) as p:
        msgs = [Message("Many", f"{i}".encode()) for i in range(200)]
        results = Senders(p, msgs).start().join()
        batches = p._accumulator.batches_sent
    assert all(r.status is SendStatus.SEND_OK for r in results)
    assert broker.all_stored("Many") == 200 and len({r.msg_id for r in results}) == 200
    assert batches == len(broker.sends) <= 200


def test_a_batch_the_broker_never_answers_times_out_for_its_sender(broker, namesrv):
    _register_topic("Silent", broker)
    broker.blackhole_sends = True
    with Producer("pg", namesrv=namesrv.addr, auto_batch=True, retry_times_when_send_failed=0) as p:
        with pytest.raises(RemotingTimeoutError):
            p.send(Message("Silent", b"x"), timeout_ms=300)


@pytest.mark.parametrize("kwargs", [{"batch_max_delay_ms": 0}, {"batch_max_bytes": 3 * 1024 * 1024},
                                    {"total_batch_max_bytes": 0}])
def test_out_of_range_auto_batch_settings_are_refused(kwargs):
    with pytest.raises(MQClientError):
        Producer("pg", namesrv="127.0.0.1:1", auto_batch=True, **kwargs)


def test_the_accumulator_refuses_to_hold_more_than_total_batch_max_bytes():
    from rmqd.client._accumulator import Held
    acc = ProduceAccumulator(total_batch_max_bytes=100)
    assert acc.add(("T", True, None), Held(0, b"x" * 40, b"", "k1", 1.0), None) is not None  # leaves at once
    assert acc.add(("T", True, None), Held(0, b"x" * 40, b"", "k2", 1.0), None) is None  # held
    assert acc.add(("T", True, None), Held(0, b"x" * 40, b"", "k3", 1.0), None) is False  # over 100 B


def test_a_sender_whose_wake_up_never_comes_still_returns_with_its_outcome(monkeypatch):
    """The chain of wake-ups can break (a sender thread dies between its wake-up and passing it
    on): the senders after it must not wait forever once the batch was answered."""
    import time as _time

    from rmqd.client import producer as producer_module
    from rmqd.client._accumulator import Batch, Held

    monkeypatch.setattr(producer_module, "CALLER_GRACE_S", 0.05)
    p = Producer("pg", namesrv="127.0.0.1:1", auto_batch=True)
    acc = p._accumulator
    key = ("T", True, None)
    first, second = (Held(0, b"x", b"", f"k{i}", _time.monotonic() + 0.05) for i in range(2))
    first.sent = second.sent = True
    acc.complete_batch(Batch(key, [first, second], None), ("response", None, "queue", "addr", []))
    assert first.wait(1)  # woken; it never passes the baton on (its thread "died")
    waiter = threading.Thread(target=p._await_held, args=(acc, key, second, 50), daemon=True)
    waiter.start()
    waiter.join(5)
    assert not waiter.is_alive(), "the second sender waited forever for a wake-up that never came"
    assert second.outcome[-2:] == (1, 2)  # its own index in the batch of two
