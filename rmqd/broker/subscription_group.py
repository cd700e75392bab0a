"""Consumer (subscription) groups: RocketMQ's SubscriptionGroupManager and config/subscriptionGroup.json.

A group is created by `mqadmin updateSubGroup`, or on first use (a consumer's heartbeat or pull)
while autoCreateSubscriptionGroup is true (the default). The front refuses a pull of a group that
does not exist (SUBSCRIPTION_GROUP_NOT_EXIST) or whose consumeEnable is false (NO_PERMISSION), and
a message sent back without its own maxReconsumeTimes gets the group's retryMaxTimes (16).

File format (RocketMQ's, so its tools and docs apply), written tmp -> fsync -> rename with .bak:

    {"subscriptionGroupTable": {"<group>": {"groupName": "<group>", "consumeEnable": true, ...}},
     "dataVersion": {"timestamp": <ms>, "counter": <n>}}

Runs in the front process (the only writer of the file); not thread-safe.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from rmqd.broker.config_table import ConfigTable

log = logging.getLogger("rmqd.broker")

DEFAULT_RETRY_MAX_TIMES = 16
# Groups every broker has (RocketMQ's SubscriptionGroupManager.init, plus rmqd's self-inspection
# probe), so the tools work with autoCreateSubscriptionGroup=false too.
SYSTEM_GROUPS = ("TOOLS_CONSUMER", "FILTERSRV_CONSUMER", "SELF_TEST_C_GROUP", "CID_SYS_RMQ_TRANS",
                 "rmqd_self_inspection")


@dataclass
class SubscriptionGroupConfig:
    """One group's settings; field names and defaults are RocketMQ's SubscriptionGroupConfig."""

    groupName: str
    consumeEnable: bool = True
    consumeFromMinEnable: bool = True
    consumeBroadcastEnable: bool = True
    retryQueueNums: int = 1
    retryMaxTimes: int = DEFAULT_RETRY_MAX_TIMES
    brokerId: int = 0
    whichBrokerWhenConsumeSlowly: int = 1
    notifyConsumerIdsChangedEnable: bool = True


_FIELDS = {f.name: f for f in dataclasses.fields(SubscriptionGroupConfig)}


def parse_group_config(raw: dict[str, Any]) -> SubscriptionGroupConfig:
    """A config from a JSON object (an admin request body or the file); ValueError names the bad field."""
    name = raw.get("groupName")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("groupName must be a non-blank string")
    values: dict[str, Any] = {"groupName": name}
    for key, value in raw.items():
        field = _FIELDS.get(key)
        if field is None or key == "groupName":
            continue  # unknown keys (newer RocketMQ fields) are ignored, as RocketMQ's JSON does
        kind = type(field.default)
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        elif kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if type(value) is not kind:
            expected = "true or false" if kind is bool else "an integer"
            raise ValueError(f"{key} must be {expected}, got {value!r}")
        values[key] = value
    if values.get("retryMaxTimes", 0) < 0 or values.get("retryQueueNums", 1) < 0:
        raise ValueError("retryMaxTimes and retryQueueNums must be >= 0")
    return SubscriptionGroupConfig(**values)


class SubscriptionGroupManager(ConfigTable[SubscriptionGroupConfig]):
    """The group table of one broker, persisted to `path` on every change (rmqd.broker.config_table)."""

    TABLE_KEY = "subscriptionGroupTable"

    def __init__(self, path: str, *, auto_create: bool) -> None:
        super().__init__(path)
        self.auto_create = auto_create
        self.groups = self.entries  # the same dict, under its domain name
        for name, raw in self._read_table().items():
            try:
                self.groups[name] = parse_group_config({**raw, "groupName": name})
            except (ValueError, TypeError) as exc:
                log.error("%s: group %r skipped: %s", self.path, name, exc)
        for name in SYSTEM_GROUPS:
            self.groups.setdefault(name, SubscriptionGroupConfig(name))

    def find_or_create(self, group: str) -> SubscriptionGroupConfig | None:
        """The group's config, created with the defaults if auto-creation is on; else None."""
        config = self.groups.get(group)
        if config is None and self.auto_create and group:
            config = SubscriptionGroupConfig(group)
            self.update(config)
            log.info("subscription group %s auto-created", group)
        return config

    def update(self, config: SubscriptionGroupConfig) -> None:
        """Create or replace a group and persist the table."""
        self._put(config.groupName, config)
