"""SubscriptionGroupManager: RocketMQ's group table in config/subscriptionGroup.json."""
from __future__ import annotations

import orjson
import pytest

from rmqd.broker.subscription_group import (
    SYSTEM_GROUPS,
    SubscriptionGroupConfig,
    SubscriptionGroupManager,
    parse_group_config,
)


def test_a_group_used_for_the_first_time_is_created_and_written_in_rocketmq_format(tmp_path):
    path = str(tmp_path / "subscriptionGroup.json")
    manager = SubscriptionGroupManager(path, auto_create=True)
    config = manager.find_or_create("orders")
    assert config == SubscriptionGroupConfig("orders")
    on_disk = orjson.loads(open(path, "rb").read())
    assert on_disk["subscriptionGroupTable"]["orders"] == {
        "groupName": "orders", "consumeEnable": True, "consumeFromMinEnable": True,
        "consumeBroadcastEnable": True, "retryQueueNums": 1, "retryMaxTimes": 16, "brokerId": 0,
        "whichBrokerWhenConsumeSlowly": 1, "notifyConsumerIdsChangedEnable": True}
    assert on_disk["dataVersion"]["counter"] == 1


def test_without_auto_creation_an_unknown_group_is_none_but_system_groups_exist(tmp_path):
    manager = SubscriptionGroupManager(str(tmp_path / "g.json"), auto_create=False)
    assert manager.find_or_create("orders") is None
    assert all(manager.find_or_create(name) is not None for name in SYSTEM_GROUPS)


def test_updates_and_deletes_survive_a_restart(tmp_path):
    path = str(tmp_path / "g.json")
    manager = SubscriptionGroupManager(path, auto_create=True)
    manager.update(parse_group_config({"groupName": "orders", "consumeEnable": "false", "retryMaxTimes": 3}))
    manager.find_or_create("billing")
    assert manager.delete("billing") is True
    assert manager.delete("billing") is False
    reloaded = SubscriptionGroupManager(path, auto_create=False)
    assert reloaded.get("orders") == SubscriptionGroupConfig("orders", consumeEnable=False, retryMaxTimes=3)
    assert reloaded.get("billing") is None


@pytest.mark.parametrize(("raw", "message"), [
    ({"consumeEnable": True}, "groupName must be a non-blank string"),
    ({"groupName": " "}, "groupName must be a non-blank string"),
    ({"groupName": "g", "consumeEnable": "maybe"}, "consumeEnable must be true or false"),
    ({"groupName": "g", "retryMaxTimes": 1.5}, "retryMaxTimes must be an integer"),
    ({"groupName": "g", "retryMaxTimes": -1}, "must be >= 0"),
])
def test_a_bad_group_config_names_the_field(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_group_config(raw)


def test_unknown_fields_of_newer_rocketmq_versions_are_ignored():
    parsed = parse_group_config({"groupName": "g", "consumeMessageOrderly": True})
    assert parsed == SubscriptionGroupConfig("g")
