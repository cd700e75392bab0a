"""Query by key (QUERY_MESSAGE through each broker's IndexFile) and by offset message id, end to end.

A query by key must return exactly the messages sent with that key whose store time is in the
range: across CommitLog file rolls, after a clean restart and after kill -9 of the whole tree.
The expected answer is computed without the index: each sent message's store time comes from
VIEW_MESSAGE_BY_ID (a read of the CommitLog at the offset message id).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

import pytest

from rmqd.client import Message, Producer, SendStatus
from rmqd.client.admin import MQAdmin
from tests.broker_harness import REPO_ROOT, RMQD, BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

TOPIC = "KeyedOrders"
KEYS = [f"order-{k}" for k in range(5)]
PER_BATCH = 150
COMMITLOG_FILE_BYTES = 64 << 10  # each batch (150 records of ~0.7 KB) fills more than one file


@dataclass
class Sent:
    offset_msg_id: str
    uniq_key: str
    keys: list[str]
    store_ms: int = 0


def _tree(tmp_path) -> BrokerTree:
    return BrokerTree(tmp_path / "store", properties={
        "mappedFileSizeCommitLog": COMMITLOG_FILE_BYTES,
        "maxHashSlotNum": 512, "maxIndexNum": 2048,  # small: the index rolls to new files too
        "defaultTopicQueueNums": 4,
    })


def _send_batch(namesrv: str, batch: int) -> list[Sent]:
    producer = Producer(f"keyed-producer-{batch}", namesrv=namesrv)
    producer.start()
    sent = []
    try:
        for i in range(PER_BATCH):
            keys = [KEYS[i % len(KEYS)]] + (["shared"] if i % 3 == 0 else [])
            result = producer.send(Message(TOPIC, f"{batch}-{i}".encode() * 100, keys=keys))
            assert result.status is SendStatus.SEND_OK
            sent.append(Sent(result.offset_msg_id, result.msg_id, keys))
    finally:
        producer.shutdown()
    return sent


def _with_store_times(admin: MQAdmin, sent: list[Sent]) -> list[Sent]:
    for message in sent:
        if not message.store_ms:
            message.store_ms = admin.query_msg_by_id(message.offset_msg_id).store_timestamp_ms
    return sent


def _expected(sent: list[Sent], key: str, begin_ms: int = 0, end_ms: int = 2**63 - 1) -> list[str]:
    return sorted(m.offset_msg_id for m in sent
                  if (key in m.keys or key == m.uniq_key) and begin_ms <= m.store_ms <= end_ms)


def _queried(admin: MQAdmin, key: str, begin_ms: int = 0, end_ms: int | None = None) -> list[str]:
    found = admin.query_msg_by_key(TOPIC, key, max_num=4096, begin_ms=begin_ms, end_ms=end_ms)
    assert all(m.topic == TOPIC and (key in m.keys or key == m.msg_id) for m in found)
    return sorted(m.offset_msg_id for m in found)


def _check_queries(admin: MQAdmin, sent: list[Sent]) -> None:
    """Every key over all time and over the middle third of the store times (ms boundaries)."""
    times = sorted(m.store_ms for m in sent)
    begin_ms, end_ms = times[len(times) // 3] + 1, times[2 * len(times) // 3]
    for key in [*KEYS, "shared", sent[-1].uniq_key, "no-such-key"]:
        wait_until(lambda key=key: _queried(admin, key) == _expected(sent, key), 15, f"all of key {key}")
        assert _queried(admin, key, begin_ms, end_ms) == _expected(sent, key, begin_ms, end_ms), key
    assert _queried(admin, "shared", max(times) + 1) == []


def _commit_log_files(tree: BrokerTree) -> int:
    return len(os.listdir(os.path.join(tree.store_dir, "commitlog")))


def test_a_query_by_key_finds_exactly_the_keyed_messages_across_rolls_and_restarts(tmp_path):
    tree = _tree(tmp_path)
    admin = MQAdmin(namesrv=tree.namesrv_addr)
    try:
        # Given messages sent with keys over CommitLog files that roll
        tree.start()
        admin.start()
        sent = _with_store_times(admin, _send_batch(tree.namesrv_addr, 0))
        assert _commit_log_files(tree) >= 2
        # Then each key finds exactly its messages, over all time and a millisecond time range
        _check_queries(admin, sent)
        # And after a clean stop and start, and more messages
        assert tree.stop() == 0
        tree.start()
        sent += _with_store_times(admin, _send_batch(tree.namesrv_addr, 1))
        _check_queries(admin, sent)
        # And after kill -9 of the whole tree (abnormal recovery rebuilds the index tail), and more
        tree.kill_tree()
        tree.start()
        assert "abnormal recovery" in tree.output()
        _check_queries(admin, sent)
        sent += _with_store_times(admin, _send_batch(tree.namesrv_addr, 2))
        _check_queries(admin, sent)
        assert _commit_log_files(tree) >= 5
    finally:
        admin.shutdown()
        tree.cleanup()


def test_mqadmin_query_commands_print_the_messages(tmp_path):
    tree = _tree(tmp_path)
    try:
        tree.start()
        with MQAdmin(namesrv=tree.namesrv_addr) as admin:
            sent = _with_store_times(admin, _send_batch(tree.namesrv_addr, 0))
            wait_until(lambda: _queried(admin, "shared") == _expected(sent, "shared"), 15, "key indexed")
        by_key = _mqadmin("queryMsgByKey", "-n", tree.namesrv_addr, "-t", TOPIC, "-k", "order-1", "--json")
        assert sorted(row["offset_msg_id"] for row in by_key) == _expected(sent, "order-1")
        assert {row["msg_id"] for row in by_key} == {m.uniq_key for m in sent if "order-1" in m.keys}
        newest = sent[-1]
        in_range = _mqadmin("queryMsgByKey", "-n", tree.namesrv_addr, "-t", TOPIC, "-k", newest.keys[0],
                            "-b", str(newest.store_ms), "-e", str(newest.store_ms), "--json")
        assert [row["offset_msg_id"] for row in in_range] == _expected(
            sent, newest.keys[0], newest.store_ms, newest.store_ms)
        detail = _mqadmin("queryMsgById", "-n", tree.namesrv_addr, "-i", newest.offset_msg_id, "--json")
        assert (detail["topic"], detail["msg_id"]) == (TOPIC, newest.uniq_key)
        assert detail["keys"] == " ".join(newest.keys)
        assert detail["body"] == f"0-{PER_BATCH - 1}" * 100
    finally:
        tree.cleanup()


def _mqadmin(*args: str) -> object:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    cmd = [RMQD[0], "-m", "cli.mqadmin", *args]
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
