"""The numpy paths of the dispatcher's index batches give exactly what the per-key code gives.

index_file.index_key_hashes (all of a batch's keys at once) and dispatch._key_hash (small batches)
against index_key_hash of each "topic#key" string, and IndexFile.put_hashes' numpy put against its
list put and against one put_hash per entry, byte for byte, on batches crowded into a few slots.
"""
from __future__ import annotations

import os
import random
import tempfile
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rmqd.store import dispatch, index_file
from rmqd.store import record as r
from rmqd.store.index_file import INDEX_SLOT, IndexService, index_key_hash, index_key_hashes

# "topic#key" strings whose Java hashCode is Integer.MIN_VALUE (found by a meet-in-the-middle search)
MIN_VALUE_KEYS = [("Topic", "EqA1noq"), ("Topic", "EqA2Ooq")]
ASCII = st.characters(min_codepoint=0, max_codepoint=127)
TOPICS = st.text(ASCII, min_size=0, max_size=40)
KEYS = st.text(ASCII, min_size=1, max_size=300)


def _numpy_hashes(pairs: list[tuple[str, str]]) -> list[int]:
    prefixes = np.array([r.java_hash_u32_ascii(f"{topic}#".encode()) for topic, _ in pairs], np.uint32)
    return index_key_hashes(prefixes, [key.encode() for _, key in pairs]).tolist()


def _one_by_one_hashes(pairs: list[tuple[str, str]]) -> list[int]:
    """The dispatcher's form for small batches (dispatch._key_hash), from the same inputs."""
    return [dispatch._key_hash(r.java_hash_u32_ascii(f"{topic}#".encode()), key.encode())
            for topic, key in pairs]


def test_the_min_value_examples_hash_to_min_value_in_java():
    assert {r.java_string_hash(f"{topic}#{key}") for topic, key in MIN_VALUE_KEYS} == {-2**31}


def test_hashes_of_strings_that_hash_to_min_value_are_zero_as_index_key_hash():
    pairs = MIN_VALUE_KEYS + [("T", "a")]
    assert _numpy_hashes(pairs) == _one_by_one_hashes(pairs) == [0, 0, index_key_hash("T#a")]
    # a prefix hash of 0 hashes the key alone: "polygenelubricants" is Integer.MIN_VALUE too
    assert index_key_hashes(np.zeros(1, np.uint32), [b"polygenelubricants"]).tolist() == [0]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(TOPICS, KEYS), min_size=1, max_size=40))
@example([(topic, key) for topic, key in MIN_VALUE_KEYS])
@example([("t", "k" * 300)] * 40)  # 12,000 bytes: the power tables grow
@example([("t", "k" * 1100)])  # past record.FAST_HASH_MAX_CHARS: _key_hash's long-key form
def test_numpy_and_one_by_one_key_hashes_equal_index_key_hash_of_topic_and_key(pairs):
    expected = [index_key_hash(f"{topic}#{key}") for topic, key in pairs]
    assert _numpy_hashes(pairs) == expected
    assert _one_by_one_hashes(pairs) == expected


def test_no_keys_give_no_hashes():
    assert index_key_hashes(np.zeros(0, np.uint32), []).tolist() == []


# ---- put_hashes: numpy put == list put == one put_hash per entry ---------------------------------------

def _fill(service: IndexService, slot_values: list[int]) -> None:
    """Create the first file and give its slots stale values (some past any index: prev -> 0)."""
    target = service._file_for_put()
    for slot, value in enumerate(slot_values):
        INDEX_SLOT.pack_into(target.mapped.mv, index_file.INDEX_HEADER_SIZE + slot * 4, value)


def _contents(root: str) -> list[bytes]:
    directory = os.path.join(root, "index")
    names = sorted(os.listdir(directory))
    out = []
    for name in names:
        with open(os.path.join(directory, name), "rb") as f:
            out.append(f.read())
    return out


def _put_all(root: str, slots: int, entries: int, slot_values: list[int], batches, how: str) -> list[bytes]:
    service = IndexService(root, max_hash_slots=slots, max_index_count=entries, readonly=False)
    try:
        _fill(service, slot_values)
        for hashes, phys, store_ms in batches:
            if how == "put_hash":
                for entry in zip(hashes, phys, store_ms):
                    service._put_hash(*entry)
            else:
                threshold = 1 if how == "numpy" else 1 << 40
                with mock.patch.object(index_file, "NUMPY_MIN_ENTRIES", threshold):
                    given_hashes = np.array(hashes, np.int64) if how == "numpy" else hashes
                    service.put_hashes(given_hashes, phys, store_ms)
    finally:
        service.close()
    return _contents(root)


@st.composite
def _batches(draw):
    """(slots, entries per file, stale slot values, batches of (hashes, phys, store times))."""
    slots = draw(st.integers(1, 7))  # few slots: most entries of a batch share one with another
    entries = draw(st.integers(2, 60))  # files roll within batches
    slot_values = draw(st.lists(st.integers(-3, 80), min_size=slots, max_size=slots))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    base_ms = draw(st.sampled_from([0, 1_700_000_000_000]))  # 0: a file with begin 0 has no time diffs
    batches, phy = [], 0
    for _ in range(draw(st.integers(1, 5))):
        size = draw(st.integers(1, 120))
        hashes = [rnd.choice([0, 2**31 - 1, rnd.randrange(2**31)]) for _ in range(size)]
        phys = [phy + 100 * n for n in range(size)]
        # time diffs past the clamps: before the file's begin and over 2^31 - 1 seconds after it
        diffs = [-5000, 0, 999, 1000, rnd.randrange(10**7), 2**31 * 1000 + 7]
        store_ms = [max(0, base_ms + rnd.choice(diffs)) for _ in range(size)]
        batches.append((hashes, phys, store_ms))
        phy += 100 * size
    return slots, entries, slot_values, batches


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batches())
def test_numpy_put_hashes_writes_the_bytes_of_the_list_put_and_of_put_hash(case):
    slots, entries, slot_values, batches = case
    with tempfile.TemporaryDirectory() as root:
        results = {how: _put_all(os.path.join(root, how), slots, entries, slot_values, batches, how)
                   for how in ("put_hash", "lists", "numpy")}
    assert results["numpy"] == results["put_hash"]
    assert results["lists"] == results["put_hash"]
    assert len(results["put_hash"]) >= 1
