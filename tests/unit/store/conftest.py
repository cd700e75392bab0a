"""Fixtures of the store tests: encoded CommitLog records built with the record codec."""
from __future__ import annotations

import pytest

from rmqd.store import record as r

HOST = r.encode_host("127.0.0.1", 10911)
COMMITLOG_FILE_SIZE = 64 * 1024  # small files so that every test rolls


def encode_batch(topic: str, queue_id: int, bodies: list[bytes], props: dict[str, str] | None = None,
                 sys_flag: int = 0) -> memoryview:
    """Contiguous records with placeholder QUEUEOFFSET/PHYSICALOFFSET/STORETIMESTAMP (the writer's input)."""
    raw_props = r.encode_properties(props if props is not None else {"TAGS": "TagA"})
    sizes = [r.record_size(len(b), len(topic), len(raw_props)) for b in bodies]
    buf = bytearray(sum(sizes))
    pos = 0
    for body in bodies:
        pos += r.encode_record(
            buf, pos, topic=topic.encode(), queue_id=queue_id, body=body, properties=raw_props,
            sys_flag=sys_flag, born_timestamp_ms=1_700_000_000_000, born_host=HOST, store_host=HOST)
    return memoryview(buf)


@pytest.fixture
def batch():
    """The `encode_batch` function (fixtures work under every pytest import mode)."""
    return encode_batch


@pytest.fixture
def store_dir(tmp_path) -> str:
    return str(tmp_path / "store")
