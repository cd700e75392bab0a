"""Consumer groups on a real broker: subscriptionGroup.json, mqadmin updateSubGroup/deleteSubGroup,
consumeEnable and autoCreateSubscriptionGroup as the pull path applies them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from rmqd.client import Message, Producer
from rmqd.client._remoting import RemotingClient
from rmqd.protocol import RequestCode, ResponseCode
from tests.broker_harness import REPO_ROOT, BrokerTree

pytestmark = pytest.mark.process
TOPIC = "GroupsTopic"


def pull_code(addr: str, group: str) -> tuple[int, str]:
    remoting = RemotingClient(name="groups-test")
    try:
        fields = {"consumerGroup": group, "topic": TOPIC, "queueId": 0, "queueOffset": 0, "maxMsgNums": 1,
                  "sysFlag": 0, "commitOffset": 0, "suspendTimeoutMillis": 0, "subscription": "*"}
        response = remoting.invoke(addr, RequestCode.PULL_MESSAGE, fields, timeout_ms=5000)
        return response.code, response.remark
    finally:
        remoting.close()


def mqadmin(namesrv: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.mqadmin", *args, "-n", namesrv],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    with BrokerTree(tmp_path_factory.mktemp("groups") / "store",
                    properties={"autoCreateSubscriptionGroup": "false"}) as tree:
        producer = Producer("groups-producer", tree.namesrv_addr)
        producer.start()
        try:
            producer.send(Message(TOPIC, b"one"))
        finally:
            producer.shutdown()
        yield tree


def test_a_group_that_does_not_exist_is_refused_when_auto_creation_is_off(tree):
    code, remark = pull_code(tree.broker_addr, "nobody")
    assert code == ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST
    assert "mqadmin updateSubGroup -g nobody" in remark


def test_update_sub_group_creates_it_and_consume_enable_false_refuses_its_pulls(tree):
    # Given a group created by mqadmin with consumeEnable false
    created = mqadmin(tree.namesrv_addr, "updateSubGroup", "-g", "paused", "-b", tree.broker_addr,
                      "-s", "false", "-r", "3")
    assert created.returncode == 0, created.stderr
    # Then its pulls are refused with NO_PERMISSION, and the file holds it in RocketMQ's format
    code, remark = pull_code(tree.broker_addr, "paused")
    assert code == ResponseCode.NO_PERMISSION and "subscription group no permission, paused" in remark
    table = orjson.loads(Path(tree.store_dir, "config", "subscriptionGroup.json").read_bytes())
    assert table["subscriptionGroupTable"]["paused"]["consumeEnable"] is False
    assert table["subscriptionGroupTable"]["paused"]["retryMaxTimes"] == 3
    # When it is enabled again, it pulls
    enabled = mqadmin(tree.namesrv_addr, "updateSubGroup", "-g", "paused", "-b", tree.broker_addr)
    assert enabled.returncode == 0, enabled.stderr
    assert pull_code(tree.broker_addr, "paused")[0] == ResponseCode.SUCCESS
    # And once deleted it is unknown again
    deleted = mqadmin(tree.namesrv_addr, "deleteSubGroup", "-g", "paused", "-b", tree.broker_addr)
    assert deleted.returncode == 0, deleted.stderr
    assert pull_code(tree.broker_addr, "paused")[0] == ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST
