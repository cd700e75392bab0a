"""A named-config table persisted as RocketMQ's versioned JSON: the shared part of the topic and
subscription group managers (topic_config.py, subscription_group.py).

File format: `{"<TABLE_KEY>": {"<name>": {<config fields>}, ...}, "dataVersion": {"timestamp": ms,
"counter": n}}`, written tmp -> fsync -> rename with a `.bak` of the previous version
(rmqd.store.files) after every change. Owned by the front process; not thread-safe.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Generic, TypeVar

from rmqd.store.files import atomic_write_json, read_json_with_bak

Config = TypeVar("Config")


class ConfigTable(Generic[Config]):
    """name -> dataclass config, with RocketMQ's DataVersion bumped and the file rewritten per change.

    Subclasses set TABLE_KEY and turn the raw entries of `_read_table()` into configs.
    """

    TABLE_KEY = ""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: dict[str, Config] = {}
        self.data_version: dict[str, Any] = {"timestamp": int(time.time() * 1000), "counter": 0}

    def _read_table(self) -> dict[str, Any]:
        """The file's raw table (name -> JSON object; {} when there is no usable file); loads the
        file's DataVersion too."""
        data = read_json_with_bak(self.path)
        if not data:
            return {}
        self.data_version = data.get("dataVersion", self.data_version)
        return dict(data.get(self.TABLE_KEY) or {})

    def get(self, name: str) -> Config | None:
        return self.entries.get(name)

    def _put(self, name: str, config: Config) -> None:
        """Create or replace `name` and persist the table."""
        self.entries[name] = config
        self._bump_and_persist()

    def delete(self, name: str) -> bool:
        """Remove `name` and persist the table; False if it was not there."""
        if self.entries.pop(name, None) is None:
            return False
        self._bump_and_persist()
        return True

    def _bump_and_persist(self) -> None:
        self.data_version = {"timestamp": int(time.time() * 1000),
                             "counter": int(self.data_version.get("counter", 0)) + 1}
        self.persist()

    def persist(self) -> None:
        atomic_write_json(self.path, self.encode())

    def encode(self) -> dict[str, Any]:
        return {
            self.TABLE_KEY: {name: asdict(cfg) for name, cfg in sorted(self.entries.items())},
            "dataVersion": self.data_version,
        }
