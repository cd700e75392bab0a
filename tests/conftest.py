"""Fixtures and markers shared by every test.

Markers: each test is marked after the folder it lives in (tests/unit -> `unit`, tests/process ->
`process`, tests/crash -> `crash`), so `pytest -m unit` runs the fast in-process tests alone. The
default run (`python -m pytest -q`, as in CI) runs all three. The markers are declared in
pyproject.toml ([tool.pytest.ini_options]), where --strict-markers rejects typos.

The repo root is importable without help: tests/ is a package, so pytest puts its parent on
sys.path, and `pip install -e .` installs rmqd, workers, shm and cli.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rmqd.config import KIB, BrokerConfig

FOLDER_MARKERS = ("unit", "process", "crash")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).parent
    for item in items:
        path = Path(item.path)
        folder = path.relative_to(tests_root).parts[0] if path.is_relative_to(tests_root) else ""
        if folder in FOLDER_MARKERS:
            item.add_marker(folder)


@pytest.fixture
def tmp_store(tmp_path: Path) -> Path:
    """A store directory path under tmp_path; not created (a broker creates what it needs)."""
    return tmp_path / "store"


@pytest.fixture
def broker_config(tmp_store: Path) -> Callable[..., BrokerConfig]:
    """Factory: a valid BrokerConfig on `tmp_store` with small files; keyword arguments override keys.

    Files are small (64 KiB CommitLog, 1,000-unit ConsumeQueue) so that tests roll files; ports and
    shared-memory rings keep their defaults unless given.
    """
    def make(**overrides: object) -> BrokerConfig:
        keys: dict[str, object] = {
            "storePathRootDir": str(tmp_store),
            "mappedFileSizeCommitLog": 64 * KIB,
            "mappedFileSizeConsumeQueue": 1000 * 20,
        }
        keys.update(overrides)
        return BrokerConfig(**keys)

    return make
