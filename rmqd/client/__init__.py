"""The rmqd SDK: producer, push and lite-pull consumers and admin client over ZeroMQ.

    from rmqd.client import Producer, PushConsumer, LitePullConsumer, MQAdmin, Message, ...

Every object is thread-safe. rmqd.client imports only rmqd.protocol, rmqd.message, rmqd.errors and
the pure record codec rmqd.store.record (pull responses carry raw CommitLog records).
"""
from __future__ import annotations

from rmqd.client.admin import MQAdmin
from rmqd.client.consumer import LitePullConsumer
from rmqd.client.producer import Producer, split_batch
from rmqd.client.push_consumer import PushConsumer
from rmqd.message import (
    ConsumeFromWhere,
    ConsumeStatus,
    Message,
    MessageExt,
    MessageModel,
    MessageQueue,
    PullResult,
    PullStatus,
    SendResult,
    SendStatus,
)

__all__ = [
    "ConsumeFromWhere",
    "ConsumeStatus",
    "LitePullConsumer",
    "MQAdmin",
    "Message",
    "MessageExt",
    "MessageModel",
    "MessageQueue",
    "Producer",
    "PullResult",
    "PullStatus",
    "PushConsumer",
    "SendResult",
    "SendStatus",
    "split_batch",
]
