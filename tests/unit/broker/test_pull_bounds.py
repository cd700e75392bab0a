"""MessageReader keeps a queue's min/max offsets between pulls: they must still follow the queue."""
from __future__ import annotations

import pytest

from rmqd.broker.pull import GetStatus, MessageReader
from rmqd.store import record as rec
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import CQ_UNIT_SIZE, ConsumeQueueStore

FILE_SIZE = 64 * 1024
UNITS_PER_CQ_FILE = 4
HOST = rec.encode_host("127.0.0.1", 10911)


class Store:
    """A writer-side CommitLog + ConsumeQueues (as writer and dispatcher) and a reader (as the front)."""

    def __init__(self, path: str) -> None:
        self.log = CommitLog(path, FILE_SIZE, readonly=False)
        self.cqs = ConsumeQueueStore(path, UNITS_PER_CQ_FILE * CQ_UNIT_SIZE, readonly=False)
        self.reader = MessageReader(CommitLog(path, FILE_SIZE, readonly=True),
                                    ConsumeQueueStore(path, UNITS_PER_CQ_FILE * CQ_UNIT_SIZE, readonly=True))
        self.next_offset = 0

    def append(self, count: int) -> None:
        """`count` records of queue T/0 written back to back (as one batch send stores them)."""
        records = bytearray()
        for i in range(count):
            props = rec.encode_properties({"UNIQ_KEY": f"k{self.next_offset + i}"})
            buf = bytearray(rec.record_size(2, 1, len(props)))
            rec.encode_record(buf, 0, topic=b"T", queue_id=0, body=b"%02d" % (self.next_offset + i),
                              properties=props, born_timestamp_ms=1, born_host=HOST, store_host=HOST)
            records += buf
        phys = self.log.append_records(memoryview(records), count, self.next_offset, 2)
        for i, phy in enumerate(phys):
            self.cqs.get("T", 0).put(self.next_offset + i, phy, self.log.read_record(phy).total_size, 0)
        self.next_offset += count

    def pull(self, offset: int, max_count: int = 32):
        return self.reader.get_messages("T", 0, offset, max_count, 1 << 20, None, self.log.write_pos)


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path))


def bodies(result) -> list[bytes]:
    return [rec.decode_record(view, 0).body for view in result.buffers]


def test_messages_appended_after_a_pull_are_found_by_the_next_pull_with_the_new_max_offset(store):
    store.append(2)
    first = store.pull(0)
    assert (first.status, first.max_offset, bodies(first)) == (GetStatus.FOUND, 2, [b"00", b"01"])
    assert store.pull(2).status is GetStatus.OFFSET_OVERFLOW_ONE  # caught up: nothing new yet
    store.append(1)
    second = store.pull(2)
    assert (second.status, second.max_offset, second.next_offset, bodies(second)) == (
        GetStatus.FOUND, 3, 3, [b"02"])


def test_a_queue_growing_into_a_new_consume_queue_file_is_seen_past_the_file_boundary(store):
    # Given a pull that left the max offset exactly at the end of the first ConsumeQueue file
    store.append(UNITS_PER_CQ_FILE)
    assert store.pull(0).max_offset == UNITS_PER_CQ_FILE
    # When the dispatcher starts the second file
    store.append(3)
    # Then the reader finds it (the boundary is never answered from the remembered bounds)
    result = store.pull(UNITS_PER_CQ_FILE)
    assert result.max_offset == UNITS_PER_CQ_FILE + 3
    assert bodies(result) == [b"04", b"05", b"06"]


def test_records_stored_back_to_back_are_each_served_as_one_buffer_of_one_record(store):
    store.append(5)
    store.append(5)
    result = store.pull(1, max_count=8)
    assert result.message_count == len(result.buffers) == 8 and result.next_offset == 9
    assert bodies(result) == [b"%02d" % i for i in range(1, 9)]
    assert result.bytes_total == sum(len(view) for view in result.buffers)


def test_a_record_failing_its_check_ends_the_pull_before_it(store):
    store.append(4)
    # A unit whose record does not carry its queue offset (as a torn unit could read): not served
    phy = store.cqs.get("T", 0).read_range(2, 1)[0][0]
    store.log.read(phy, rec.BODY_POS)[rec.QUEUEOFFSET_POS:rec.QUEUEOFFSET_POS + 8] = (99).to_bytes(8, "big")
    result = store.pull(0)
    assert (result.status, result.message_count, result.next_offset) == (GetStatus.FOUND, 2, 2)
    assert result.bytes_total == sum(len(view) for view in result.buffers)
