"""Consumer offset stores: the local file of BROADCASTING consumers and the broker-side store."""
from __future__ import annotations

import os
from concurrent.futures import Future

import orjson
import pytest

from rmqd.client._offset_store import (
    LocalFileOffsetStore,
    RemoteBrokerOffsetStore,
    local_offset_store_path,
)
from rmqd.errors import MQBrokerError, MQClientError
from rmqd.message import MessageQueue

Q0 = MessageQueue("T", "broker-a", 0)
Q1 = MessageQueue("T", "broker-a", 1)


def test_local_offset_file_path_names_the_client_instance_and_group(tmp_path, monkeypatch):
    path = local_offset_store_path("cg", "10.0.0.7", "node-1", str(tmp_path))
    assert path == str(tmp_path / "10.0.0.7@node-1" / "cg" / "offsets.json")
    monkeypatch.setenv("RMQD_LOCAL_OFFSET_STORE_DIR", str(tmp_path / "env"))
    assert local_offset_store_path("cg", "1.2.3.4", "DEFAULT").startswith(str(tmp_path / "env"))
    monkeypatch.delenv("RMQD_LOCAL_OFFSET_STORE_DIR")
    assert local_offset_store_path("cg", "1.2.3.4", "DEFAULT") == os.path.expanduser(
        "~/.rmqd_offsets/1.2.3.4@DEFAULT/cg/offsets.json")


def test_local_offsets_survive_a_reopen_and_keep_queues_given_up(tmp_path):
    # Given a store that persisted two queues, then gave one up
    path = str(tmp_path / "a" / "offsets.json")
    store = LocalFileOffsetStore("cg", path)
    store.open()
    store.update(Q0, 12)
    store.update(Q1, 7)
    store.remove(Q1)
    assert store.persist() == []
    store.close()
    # When it is opened again
    reopened = LocalFileOffsetStore("cg", path)
    reopened.open()
    # Then both offsets are there, in a readable document
    assert (reopened.read_from_store(Q0), reopened.read_from_store(Q1)) == (12, 7)
    document = orjson.loads(open(path, "rb").read())
    assert document["group"] == "cg"
    assert {"topic": "T", "brokerName": "broker-a", "queueId": 0, "offset": 12} in document["offsetTable"]
    reopened.close()


def test_one_process_cannot_open_the_same_offset_file_twice(tmp_path):
    path = str(tmp_path / "offsets.json")
    first = LocalFileOffsetStore("cg", path)
    first.open()
    with pytest.raises(MQClientError, match="instance_name"):
        LocalFileOffsetStore("cg", path).open()
    first.close()
    second = LocalFileOffsetStore("cg", path)
    second.open()  # free once the first one closed
    second.close()


def test_an_unreadable_offset_file_is_reported_with_its_path(tmp_path):
    path = tmp_path / "offsets.json"
    path.write_bytes(b"{not json")
    with pytest.raises(MQClientError, match=str(path)):
        LocalFileOffsetStore("cg", str(path)).open()
    LocalFileOffsetStore("cg", str(path)).close()


def test_increase_only_updates_never_move_an_offset_back(tmp_path):
    store = LocalFileOffsetStore("cg", str(tmp_path / "o.json"))
    store.update(Q0, 10)
    store.update(Q0, 8, increase_only=True)
    assert store.read(Q0) == 10
    store.update(Q0, 8)
    assert store.read(Q0) == 8


class FakeBrokerOffsets:
    """The two broker calls a RemoteBrokerOffsetStore makes, recorded."""

    def __init__(self) -> None:
        self.committed: dict[MessageQueue, int] = {}
        self.commits: list[tuple[MessageQueue, int]] = []
        self.fail_with: MQBrokerError | None = None

    def query(self, queue: MessageQueue) -> int | None:
        return self.committed.get(queue)

    def commit_async(self, queue: MessageQueue, offset: int) -> Future:
        future: Future = Future()
        self.commits.append((queue, offset))
        if self.fail_with is not None:
            future.set_exception(self.fail_with)
        else:
            self.committed[queue] = offset
            future.set_result(None)
        return future


def test_remote_store_sends_every_offset_it_holds_on_each_persist():
    # Given a store that read Q1 from the broker and moved Q0
    broker = FakeBrokerOffsets()
    broker.committed[Q1] = 5
    store = RemoteBrokerOffsetStore(broker.query, broker.commit_async)
    assert store.read_from_store(Q1) == 5 and store.read_from_store(Q0) is None
    store.update(Q0, 3)
    # When it persists twice, the second time after a broker restart lost everything
    assert store.persist() == [] and sorted(broker.commits) == [(Q0, 3), (Q1, 5)]
    broker.committed.clear()
    assert store.persist([Q0]) == []
    # Then each persist sends every offset asked for, so the broker re-learns them
    assert broker.committed == {Q0: 3}
    store.remove(Q0)
    assert store.snapshot() == {Q1: 5}


def test_a_failed_remote_commit_is_reported_and_sent_again_next_time():
    broker = FakeBrokerOffsets()
    store = RemoteBrokerOffsetStore(broker.query, broker.commit_async)
    store.update(Q0, 4)
    broker.fail_with = MQBrokerError(1, "disk full", "127.0.0.1:1")
    errors = store.persist()
    assert len(errors) == 1 and "disk full" in str(errors[0])
    broker.fail_with = None
    assert store.persist() == [] and broker.committed[Q0] == 4
