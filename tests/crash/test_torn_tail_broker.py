"""Torn tail through the real processes: damage the stopped (or killed) broker's files, restart it.

The last CommitLog record is cut (zeros from a random byte on, as a write torn by a crash) or
garbled (random bytes at a random position that RocketMQ's record checks cover: TOTALSIZE,
MAGICCODE, BODYCRC, PHYSICALOFFSET, BODYLENGTH, BODY, TOPICLENGTH, PROPERTIESLENGTH; the other
header fields and the property text carry no check, in RocketMQ as in rmqd). ConsumeQueue files
are damaged as a crash leaves them: units past the CommitLog end (flushed ahead of a CommitLog that
lost its tail), and, with an older checkpoint (kill -9 before the checkpoint caught up), the units
past it zeroed (pages never written back).

After `rmqd start`, recovery must cut exactly the damaged record (write position = its offset),
leave every byte before it as it was, serve every other acknowledged message from its queue, and
accept new sends; `rmqd verify` on the stopped store must then be clean. Each case damages
RMQD_TORN_TAIL_ROUNDS (default 1) times in a row, at new random positions; the seed is in the
assertion messages.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess

import pytest

from rmqd.client import Message, Producer, SendStatus
from rmqd.store import record as rec
from rmqd.store.checkpoint import Checkpoint
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import CQ_UNIT, CQ_UNIT_SIZE, ConsumeQueue
from tests.broker_harness import REPO_ROOT, RMQD, BrokerTree
from tests.crash.chaos import read_all_bodies

pytestmark = pytest.mark.crash

TOPIC = "TornTail"
QUEUES = 4
FILE_SIZE = 64 << 10
CQ_FILE_SIZE = 100 * CQ_UNIT_SIZE
ROUNDS = int(os.environ.get("RMQD_TORN_TAIL_ROUNDS", "1"))


def _tree(tmp_path) -> BrokerTree:
    return BrokerTree(tmp_path / "store", properties={
        "mappedFileSizeCommitLog": FILE_SIZE, "mappedFileSizeConsumeQueue": CQ_FILE_SIZE,
        "defaultTopicQueueNums": QUEUES, "maxHashSlotNum": 256, "maxIndexNum": 1024})


def _send(namesrv: str, bodies: list[str]) -> None:
    producer = Producer("torn-tail-producer", namesrv=namesrv)
    producer.start()
    try:
        for body in bodies:
            result = producer.send(Message(TOPIC, body.encode(), keys=[body]))
            assert result.status is SendStatus.SEND_OK
    finally:
        producer.shutdown()


def _records(store_dir: str) -> list[tuple[int, rec.MessageRecord]]:
    """(phy_offset, record) of every record of a stopped store, up to the first zero record."""
    log = CommitLog(store_dir, FILE_SIZE, readonly=True)
    records, phy = [], log.min_offset()
    try:
        while (found := log.queue.find(phy)) is not None:
            size, magic = rec.peek_size_magic(found[0].mv, found[1])
            if magic == rec.BLANK_MAGIC:
                phy += size
                continue
            if size == 0:
                break
            records.append((phy, log.read_record(phy)))
            phy += size
    finally:
        log.close()
    return records


def _commit_log_digest(store_dir: str, upto: int) -> str:
    digest = hashlib.sha256()
    for start in range(0, upto, FILE_SIZE):
        with open(os.path.join(store_dir, "commitlog", f"{start:020d}"), "rb") as f:
            digest.update(f.read(min(FILE_SIZE, upto - start)))
    return digest.hexdigest()


def _checked_positions(record: rec.MessageRecord) -> list[int]:
    """Byte positions of the record that a record check covers (see the module docstring)."""
    body_end = rec.BODY_POS + len(record.body)
    topic_len_pos = body_end
    props_len_pos = topic_len_pos + 1 + len(record.topic)
    return [*range(0, 12), *range(rec.PHYSICALOFFSET_POS, rec.PHYSICALOFFSET_POS + 8),
            *range(rec.BODYLENGTH_POS, body_end), topic_len_pos, props_len_pos, props_len_pos + 1]


def _damage_commit_log(store_dir: str, phy: int, record: rec.MessageRecord, how: str,
                       rnd: random.Random) -> str:
    path = os.path.join(store_dir, "commitlog", f"{phy - phy % FILE_SIZE:020d}")
    file_pos = phy % FILE_SIZE
    with open(path, "r+b") as f:
        if how == "cut":
            at = rnd.randrange(record.total_size)
            f.seek(file_pos + at)
            f.write(bytes(FILE_SIZE - file_pos - at))
            return f"cut at byte {at} of {record.total_size}"
        at = rnd.choice(_checked_positions(record))
        f.seek(file_pos + at)
        old = f.read(1)[0]
        f.seek(file_pos + at)
        f.write(bytes([old ^ rnd.randrange(1, 256)]))
        return f"garbled byte {at} of {record.total_size}"


def _damage_consume_queues(store_dir: str, records: list, cut_phy: int, rewind_checkpoint: bool) -> None:
    """Units past the cut in one queue; with a rewound checkpoint, the units past it zeroed."""
    by_queue: dict[int, list[tuple[int, rec.MessageRecord]]] = {}
    for phy, record in records:
        by_queue.setdefault(record.queue_id, []).append((phy, record))
    other = next(q for q in sorted(by_queue) if by_queue[q][-1][0] != cut_phy)
    queue = ConsumeQueue(store_dir, TOPIC, other, CQ_FILE_SIZE, readonly=False)
    next_offset = by_queue[other][-1][1].queue_offset + 1
    for i in range(3):  # flushed ahead of a CommitLog that lost its tail
        queue.put(next_offset + i, cut_phy + 200 * i, 150, 0)
    queue.close()
    if not rewind_checkpoint:
        return
    checkpoint = Checkpoint(os.path.join(store_dir, "checkpoint"))
    data = checkpoint.load()
    rewound_to = records[-20][0]
    data.cq_dispatch_pos = data.index_dispatch_pos = rewound_to
    checkpoint.store(data)
    for _phy, record in records[-20:-1]:  # the CQ pages of those units were never written back
        queue = ConsumeQueue(store_dir, TOPIC, record.queue_id, CQ_FILE_SIZE, readonly=False)
        found = queue.queue.find(record.queue_offset * CQ_UNIT_SIZE)
        if found is not None:  # None: the dispatcher never got that far before the kill
            found[0].mv[found[1]:found[1] + CQ_UNIT_SIZE] = bytes(CQ_UNIT.size)
        queue.close()


def _read_all(namesrv: str) -> list[str]:
    return [body.decode() for body in read_all_bodies(namesrv, TOPIC, timeout_s=60)]


def _verify_clean(store_dir: str) -> None:
    result = subprocess.run([*RMQD, "verify", "--store-dir", store_dir], cwd=REPO_ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("down", "how"), [("stop", "cut"), ("stop", "garble"), ("kill", "cut"),
                                           ("kill", "garble")])
def test_a_torn_last_record_is_cut_exactly_and_the_broker_serves_everything_before_it(tmp_path, down, how):
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    tree = _tree(tmp_path)
    sent: list[str] = []
    try:
        for round_no in range(ROUNDS):
            tree.start()
            bodies = [f"r{round_no}-{i}-" + "x" * rnd.randrange(10, 900) for i in range(120)]
            _send(tree.namesrv_addr, bodies)
            sent += bodies
            if down == "stop":
                assert tree.stop() == 0
            else:
                tree.kill_tree()
            # Given the last record damaged and ConsumeQueue units orphaned or lost
            records = _records(tree.store_dir)
            cut_phy, last = records[-1]
            assert last.body.decode() == sent[-1]
            before = _commit_log_digest(tree.store_dir, cut_phy)
            damage = _damage_commit_log(tree.store_dir, cut_phy, last, how, rnd)
            _damage_consume_queues(tree.store_dir, records, cut_phy, rewind_checkpoint=down == "kill")
            sent.remove(last.body.decode())
            # When the broker starts again
            tree.start()
            # Then recovery cut exactly that record and nothing before it
            status = tree.status()
            assert "write_pos" in status["positions"], (status, tree.output()[-3000:])
            assert status["positions"]["write_pos"] == cut_phy, (damage, seed)
            assert _commit_log_digest(tree.store_dir, cut_phy) == before, (damage, seed)
            # And every other acknowledged message is served, once, from its queue
            assert sorted(_read_all(tree.namesrv_addr)) == sorted(sent), (damage, seed)
            # And new sends are accepted and served
            _send(tree.namesrv_addr, [f"after-{round_no}-{i}" for i in range(10)])
            sent += [f"after-{round_no}-{i}" for i in range(10)]
            assert sorted(_read_all(tree.namesrv_addr)) == sorted(sent), (damage, seed)
            assert tree.stop() == 0
            _verify_clean(tree.store_dir)
    finally:
        tree.cleanup()
