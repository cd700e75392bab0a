"""ConsumerGroups: membership from heartbeats, who to notify when it changes, expiry."""
from __future__ import annotations

from rmqd.broker.admin import ConsumerGroups


def heartbeat_data(group: str, topics: dict[str, str]) -> dict:
    subs = [{"topic": topic, "subString": expression} for topic, expression in topics.items()]
    return {"consumerDataSet": [{"groupName": group, "subscriptionDataSet": subs}]}


def test_a_joining_client_makes_every_member_of_its_group_be_notified():
    groups = ConsumerGroups()
    groups.heartbeat("c1", heartbeat_data("g", {"T": "*"}), now=0.0, identity=b"id-1")
    assert groups.take_notifications() == [(b"id-1", "g")]
    groups.heartbeat("c2", heartbeat_data("g", {"T": "*"}), now=1.0, identity=b"id-2")
    assert sorted(groups.take_notifications()) == [(b"id-1", "g"), (b"id-2", "g")]
    assert groups.client_ids("g") == ["c1", "c2"]


def test_repeated_heartbeats_change_nothing_but_keep_the_latest_identity():
    groups = ConsumerGroups()
    groups.heartbeat("c1", heartbeat_data("g", {"T": "*"}), now=0.0, identity=b"old")
    groups.take_notifications()
    groups.heartbeat("c1", heartbeat_data("g", {"T": "*"}), now=5.0, identity=b"new")
    assert groups.take_notifications() == []
    groups.unregister("c9", "g")  # unknown client: no change either
    assert groups.take_notifications() == []
    groups.heartbeat("c2", heartbeat_data("g", {"T": "*"}), now=6.0, identity=b"id-2")
    assert (b"new", "g") in groups.take_notifications()


def test_changed_subscriptions_notify_the_group():
    groups = ConsumerGroups()
    groups.heartbeat("c1", heartbeat_data("g", {"T": "*"}), now=0.0, identity=b"id-1")
    groups.take_notifications()
    groups.heartbeat("c1", heartbeat_data("g", {"T": "A"}), now=1.0, identity=b"id-1")
    assert groups.take_notifications() == [(b"id-1", "g")]


def test_leaving_and_expiry_notify_the_members_that_remain():
    groups = ConsumerGroups(expired_after_s=10.0)
    for cid, now in (("c1", 0.0), ("c2", 0.0), ("c3", 8.0)):
        groups.heartbeat(cid, heartbeat_data("g", {"T": "*"}), now=now, identity=cid.encode())
    groups.take_notifications()
    assert groups.unregister("c1", "g")
    assert sorted(groups.take_notifications()) == [(b"c2", "g"), (b"c3", "g")]
    assert groups.expire(now=10.5) == ["g"]  # c2 was last heard of at 0.0
    assert groups.take_notifications() == [(b"c3", "g")]
    assert groups.client_ids("g") == ["c3"]


def test_only_the_changed_group_is_notified():
    groups = ConsumerGroups()
    groups.heartbeat("a1", heartbeat_data("ga", {"T": "*"}), now=0.0, identity=b"a1")
    groups.heartbeat("b1", heartbeat_data("gb", {"T": "*"}), now=0.0, identity=b"b1")
    groups.take_notifications()
    groups.heartbeat("a2", heartbeat_data("ga", {"T": "*"}), now=1.0, identity=b"a2")
    assert sorted(groups.take_notifications()) == [(b"a1", "ga"), (b"a2", "ga")]
