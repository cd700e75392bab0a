"""rmqd.broker.schedule (send-path redirection, timer wheel geometry, offsets) and rmqd.broker.retry."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rmqd.broker import retry, schedule
from rmqd.broker.send import PreparedSend, Rejection
from rmqd.broker.topic_config import TopicConfigManager
from rmqd.errors import StoreError
from rmqd.protocol import codec
from rmqd.protocol.commands import ResponseCode
from rmqd.store import record as rec
from rmqd.store.dispatch import cq_tags_code
from rmqd.store.record import MessageRecord, Prop

CFG = SimpleNamespace(messageDelayLevel="1s 5s 10s")
NOW = 1_700_000_000_000


def prepared(props: dict[str, str], topic: bytes = b"Orders", queue_id: int = 2) -> PreparedSend:
    raw = rec.encode_properties(props)
    body = memoryview(b"body" + raw)[:4]  # as in the front: a view into the frame, which holds the properties
    return PreparedSend(topic, queue_id, [(0, body, raw, 0, 0)], NOW, rec.encode_host("127.0.0.1", 1),
                        rec.record_size(len(body), len(topic), len(raw)))


def props_of(send: PreparedSend) -> dict[str, str]:
    return rec.decode_properties(send.messages[0][2])


@pytest.mark.parametrize(("remaining_ms", "queue"), [
    (0, 0), (999, 0), (1000, 1), (1999, 1), (2000, 2), (3999, 2), (4000, 3), (10**12, 18)])
def test_a_timer_goes_to_the_queue_with_the_largest_delay_not_above_its_remaining_time(remaining_ms, queue):
    assert schedule.timer_queue_for(remaining_ms) == queue


def test_every_wheel_queue_delay_is_at_most_the_remaining_time_and_more_than_half_of_it():
    for remaining in (1000, 1500, 2047, 65_000, 86_400_000):
        delay = schedule.timer_queue_delay_ms(schedule.timer_queue_for(remaining))
        assert delay <= remaining < 2 * delay
    assert schedule.timer_queue_delay_ms(0) == 0
    assert schedule.timer_queue_delay_ms(18) == (1 << 17) * 1000  # 36.4 h, below fileReservedTime (48 h)
    assert schedule.timer_queue_for(7 * 86_400_000) == 18  # longer timers hop through queue 18 again


def test_an_ordinary_message_is_not_redirected():
    assert schedule.maybe_redirect(prepared({"TAGS": "A"}), batch=False, cfg=CFG) is None
    assert schedule.maybe_redirect(prepared({"MYDELAY": "3"}), batch=False, cfg=CFG) is None


def test_a_delay_level_goes_to_schedule_topic_queue_level_minus_one_with_its_real_topic():
    out = schedule.maybe_redirect(prepared({Prop.DELAY: "2", "k": "v"}), batch=False, cfg=CFG)
    assert isinstance(out, PreparedSend)
    assert (out.topic, out.queue_id) == (b"SCHEDULE_TOPIC_XXXX", 1)
    assert props_of(out) == {Prop.DELAY: "2", "k": "v", Prop.REAL_TOPIC: "Orders", Prop.REAL_QID: "2"}
    assert out.records_bytes == rec.record_size(4, len(out.topic), len(out.messages[0][2]))


def test_a_delay_level_above_the_last_is_the_last_level():
    out = schedule.maybe_redirect(prepared({Prop.DELAY: "18"}), batch=False, cfg=CFG)
    assert out.queue_id == 2 and props_of(out)[Prop.DELAY] == "3"


def test_a_future_timer_goes_to_its_wheel_queue_and_a_due_one_stays_in_its_topic():
    props = {Prop.TIMER_DELIVER_MS: str(NOW + 5000)}
    out = schedule.maybe_redirect(prepared(props), batch=False, cfg=CFG, now_ms=NOW)
    assert (out.topic, out.queue_id) == (b"rmq_sys_wheel_timer", 3)
    assert props_of(out)[Prop.REAL_TOPIC] == "Orders"
    assert schedule.maybe_redirect(prepared(props), batch=False, cfg=CFG, now_ms=NOW + 5000) is None


def test_a_timer_beyond_the_maximum_delay_is_refused():
    props = {Prop.TIMER_DELIVER_MS: str(NOW + schedule.TIMER_MAX_DELAY_MS + 1)}
    out = schedule.maybe_redirect(prepared(props), batch=False, cfg=CFG, now_ms=NOW)
    assert isinstance(out, Rejection) and out.code == ResponseCode.MESSAGE_ILLEGAL


def test_a_batch_carrying_a_delay_is_refused_and_an_ordinary_batch_passes():
    assert isinstance(schedule.maybe_redirect(prepared({Prop.DELAY: "1"}), batch=True, cfg=CFG), Rejection)
    assert schedule.maybe_redirect(prepared({"k": "v"}), batch=True, cfg=CFG) is None


def test_a_batch_is_checked_on_its_whole_frame_and_then_message_by_message():
    frame = b"header" + b"body DELAY\x01 in a body" + rec.encode_properties({"k": "v"})
    body = memoryview(frame)[6:30]
    clean = PreparedSend(b"T", 0, [(0, body, rec.encode_properties({"k": "v"}), 0, 0)], NOW, b"\0" * 8, 100)
    assert schedule.maybe_redirect(clean, batch=True, cfg=CFG) is None  # the mark was in a body only
    # the front's batch properties are views of the request frame
    delayed = PreparedSend(b"T", 0, [(0, body, memoryview(rec.encode_properties({Prop.DELAY: "1"})), 0, 0)],
                           NOW, b"\0" * 8, 100)
    assert isinstance(schedule.maybe_redirect(delayed, batch=True, cfg=CFG), Rejection)


def test_restoring_the_real_topic_removes_the_schedule_properties_only_on_delivery():
    props = {Prop.REAL_TOPIC: "Orders", Prop.REAL_QID: "3", Prop.DELAY: "2", Prop.TIMER_DELIVER_MS: "5",
             "k": "v"}
    assert schedule.restore_real(props, deliver=True) == ("Orders", 3, {"k": "v"})
    moved = schedule.restore_real(props, deliver=False)
    assert moved == ("Orders", 3, {Prop.TIMER_DELIVER_MS: "5", "k": "v"})


def test_a_lane_commits_its_smallest_unacknowledged_offset():
    lane = schedule.Lane("SCHEDULE_TOPIC_XXXX", 0, "1", 10, timer=False)
    assert lane.committed() == 10
    lane.outstanding.update({10, 12})
    lane.next_offset = 13
    assert lane.committed() == 10
    lane.outstanding.discard(10)
    assert lane.committed() == 12


def test_offsets_are_persisted_in_rocketmq_delay_offset_format(tmp_path):
    path = str(tmp_path / "delayOffset.json")
    table = schedule.OffsetTable(path)
    lanes = [schedule.Lane("S", level - 1, str(level), level * 10, timer=False) for level in (1, 2, 10)]
    table.update(lanes)
    assert table.persist()
    assert not table.persist()  # unchanged: no write
    assert json.loads(open(path).read()) == {"offsetTable": {"1": 10, "2": 20, "10": 100}}
    assert schedule.OffsetTable(path).get("10") == 100


def record(topic: str, queue_id: int, props: dict[str, str], reconsume: int = 0) -> MessageRecord:
    return MessageRecord(100, rec.MESSAGE_MAGIC_V1, 0, queue_id, 7, 0, 4096, 0, NOW - 10,
                         rec.encode_host("10.0.0.1", 5), NOW, rec.encode_host("127.0.0.1", 10911), reconsume,
                         0, b"payload", topic, props)


def test_the_unit_of_a_scheduled_record_carries_its_due_time():
    assert cq_tags_code(record("SCHEDULE_TOPIC_XXXX", 1, {Prop.DELAY: "2"}), (1000, 5000)) == NOW + 5000
    assert cq_tags_code(record("rmq_sys_wheel_timer", 4, {})) == NOW + 8000
    assert cq_tags_code(record("rmq_sys_wheel_timer", 0, {})) == NOW


class FakeCommitLog:
    def __init__(self, stored: MessageRecord) -> None:
        self.stored = stored

    def read_record(self, phy_offset: int) -> MessageRecord:
        if phy_offset != self.stored.phy_offset:
            raise StoreError(f"no record at {phy_offset}")
        return self.stored


@pytest.fixture
def topics(tmp_path):
    return TopicConfigManager(str(tmp_path / "topics.json"), cluster_name="c", broker_name="b",
                              auto_create=True, default_queue_nums=4)


def send_back(stored: MessageRecord, topics, **fields):
    request = {"offset": 4096, "group": "cg", "delayLevel": 0, "originMsgId": "ID1",
               "maxReconsumeTimes": 3, **fields}
    return retry.build_send_back(request, FakeCommitLog(stored), topics)


def test_a_first_send_back_goes_to_the_retry_topic_at_level_3(topics):
    out = send_back(record("Orders", 1, {Prop.UNIQ_KEY: "U1", "k": "v"}), topics)
    assert (out.topic, out.queue_id) == (b"%RETRY%cg", 0)
    flag, body, raw, _sys, reconsume = out.messages[0]
    props = rec.decode_properties(raw)
    assert (flag, bytes(body), reconsume) == (7, b"payload", 1)
    assert props[Prop.DELAY] == "3" and props[Prop.RETRY_TOPIC] == "Orders"
    assert props[Prop.ORIGIN_MESSAGE_ID] == "ID1" and props[Prop.RECONSUME_TIME] == "1"  # the client's id
    assert topics.get("%RETRY%cg").writeQueueNums == 1


def test_the_retry_level_grows_with_the_reconsume_times_and_a_given_level_is_kept(topics):
    retried = record("%RETRY%cg", 0, {Prop.RETRY_TOPIC: "Orders", Prop.ORIGIN_MESSAGE_ID: "U1"}, reconsume=2)
    assert rec.decode_properties(send_back(retried, topics).messages[0][2])[Prop.DELAY] == "5"
    assert rec.decode_properties(send_back(retried, topics, delayLevel=7).messages[0][2])[Prop.DELAY] == "7"


def test_after_max_reconsume_times_the_message_goes_to_the_dlq_with_its_origin(topics):
    retried = record("%RETRY%cg", 0, {Prop.RETRY_TOPIC: "Orders", Prop.ORIGIN_MESSAGE_ID: "U1",
                                      Prop.DELAY: "5"}, reconsume=3)
    out = send_back(retried, topics)
    props = rec.decode_properties(out.messages[0][2])
    assert out.topic == b"%DLQ%cg" and out.messages[0][4] == 4
    assert props["DLQ_ORIGIN_TOPIC"] == "Orders" and props["DLQ_ORIGIN_MESSAGE_ID"] == "U1"
    assert Prop.DELAY not in props
    assert topics.get("%DLQ%cg").writeQueueNums == 1


def test_a_negative_delay_level_sends_straight_to_the_dlq(topics):
    assert send_back(record("Orders", 0, {}), topics, delayLevel=-1).topic == b"%DLQ%cg"


def test_a_send_back_of_an_unknown_offset_or_without_group_is_refused(topics):
    assert send_back(record("Orders", 0, {}), topics, offset=1).code == ResponseCode.SYSTEM_ERROR
    assert send_back(record("Orders", 0, {}), topics, group="").code == ResponseCode.INVALID_PARAMETER


def test_a_heartbeat_subscribing_to_the_retry_topic_creates_it(topics):
    created = []
    body = codec.encode_json_body({"clientID": "c1", "consumerDataSet": [
        {"groupName": "g1", "subscriptionDataSet": [{"topic": "Orders"}, {"topic": "%RETRY%g1"}]},
        {"groupName": "g2", "subscriptionDataSet": [{"topic": "Orders"}]}]})
    retry.ensure_retry_topics(memoryview(body), topics, lambda: created.append(1))
    assert topics.get("%RETRY%g1") is not None and topics.get("%RETRY%g2") is None
    assert created == [1]


def test_without_its_own_max_reconsume_times_a_send_back_uses_the_groups_retry_max_times(topics):
    # Given a message retried twice, sent back by a client that does not say maxReconsumeTimes
    retried = record("%RETRY%cg", 0, {Prop.RETRY_TOPIC: "Orders", Prop.ORIGIN_MESSAGE_ID: "U1"}, reconsume=2)
    request = {"offset": 4096, "group": "cg", "delayLevel": 0}
    # When the group allows 2 retries it goes to the DLQ; with the default 16 it is retried again
    to_dlq = retry.build_send_back(request, FakeCommitLog(retried), topics, group_retry_max_times=2)
    again = retry.build_send_back(request, FakeCommitLog(retried), topics)
    assert to_dlq.topic == b"%DLQ%cg"
    assert again.topic == b"%RETRY%cg"
    # And the request's own value wins over the group's
    told = retry.build_send_back({**request, "maxReconsumeTimes": 5}, FakeCommitLog(retried), topics,
                                 group_retry_max_times=2)
    assert told.topic == b"%RETRY%cg"
