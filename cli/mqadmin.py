"""`mqadmin`: RocketMQ's admin commands, with RocketMQ's command names and short flags.

Every command opens one `rmqd.client.admin.MQAdmin` against the namesrvs of `-n` (default: the
NAMESRV_ADDR environment variable, else 127.0.0.1:9876), makes one call, prints the result as a
table (or JSON with --json) and closes it. An error answered by a broker or namesrv prints its
remark and exits 1. The client is imported inside the commands, so `mqadmin --help` never needs it.
"""
from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from cli import _output
from rmqd.exit_codes import EXIT_ERROR, EXIT_USAGE

app = typer.Typer(
    name="mqadmin",
    help="rmqd admin tool: RocketMQ's mqadmin commands and flags.",
    no_args_is_help=True,
    add_completion=False,
)

Namesrv = Annotated[
    str, typer.Option("-n", "--namesrvAddr", envvar="NAMESRV_ADDR", help="host:port[;host:port] of namesrvs.")
]
Topic = Annotated[str, typer.Option("-t", "--topic", help="Topic name.")]
BrokerName = Annotated[str, typer.Option("-b", "--brokerName", help="Broker name (brokerName).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TargetCluster = Annotated[
    str | None, typer.Option("-c", "--clusterName", help="Every master broker of this cluster.")
]
TargetBroker = Annotated[str | None, typer.Option("-b", "--brokerAddr", help="This broker (host:port).")]
DEFAULT_NAMESRV = "127.0.0.1:9876"


class TrueFalse(enum.StrEnum):
    """A boolean option written as RocketMQ's mqadmin takes it (`-s false`)."""

    true = "true"
    false = "false"


@app.command("updateTopic")
def update_topic(
    topic: Topic,
    cluster: TargetCluster = None,
    broker_addr: TargetBroker = None,
    read_queue_nums: Annotated[int, typer.Option("-r", "--readQueueNums", min=1)] = 8,
    write_queue_nums: Annotated[int, typer.Option("-w", "--writeQueueNums", min=1)] = 8,
    perm: Annotated[
        int, typer.Option("-p", "--perm", min=0, max=7, help="2 = write, 4 = read, 6 = both.")
    ] = 6,
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Create or update a topic on a cluster (-c) or one broker (-b)."""
    _one_target(cluster, broker_addr)
    _run(namesrv, as_json, lambda admin: admin.create_topic(
        topic, read_queue_nums, write_queue_nums, perm, cluster=cluster, broker_addr=broker_addr))


@app.command("updateSubGroup")
def update_sub_group(
    group: Annotated[str, typer.Option("-g", "--groupName", help="Consumer group name.")],
    cluster: TargetCluster = None,
    broker_addr: TargetBroker = None,
    consume_enable: Annotated[
        TrueFalse, typer.Option("-s", "--consumeEnable", help="Allow pulls: true or false.")
    ] = TrueFalse.true,
    consume_broadcast_enable: Annotated[
        TrueFalse, typer.Option("-d", "--consumeBroadcastEnable", help="Allow broadcasting: true or false.")
    ] = TrueFalse.true,
    retry_queue_nums: Annotated[int, typer.Option("-q", "--retryQueueNums", min=0)] = 1,
    retry_max_times: Annotated[
        int, typer.Option("-r", "--retryMaxTimes", min=0, help="Retries before the DLQ (16).")
    ] = 16,
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Create or update a consumer group's config (consumeEnable, retryMaxTimes, ...)."""
    _one_target(cluster, broker_addr)
    _run(namesrv, as_json, lambda admin: admin.update_subscription_group(
        group, consume_enable=consume_enable is TrueFalse.true,
        consume_broadcast_enable=consume_broadcast_enable is TrueFalse.true,
        retry_queue_nums=retry_queue_nums, retry_max_times=retry_max_times, cluster=cluster,
        broker_addr=broker_addr))


@app.command("deleteSubGroup")
def delete_sub_group(
    group: Annotated[str, typer.Option("-g", "--groupName", help="Consumer group name.")],
    cluster: TargetCluster = None,
    broker_addr: TargetBroker = None,
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Delete a consumer group's config (its offsets stay)."""
    _one_target(cluster, broker_addr)
    _run(namesrv, as_json, lambda admin: admin.delete_subscription_group(
        group, cluster=cluster, broker_addr=broker_addr))


@app.command("topicList")
def topic_list(namesrv: Namesrv = DEFAULT_NAMESRV, as_json: AsJson = False) -> None:
    """Every topic the namesrvs know."""
    _run(namesrv, as_json, lambda admin: admin.topic_list())


@app.command("topicRoute")
def topic_route(topic: Topic, namesrv: Namesrv = DEFAULT_NAMESRV, as_json: AsJson = False) -> None:
    """The route of a topic: its brokers and queue counts."""
    _run(namesrv, as_json, lambda admin: admin.topic_route(topic))


@app.command("topicStatus")
def topic_status(topic: Topic, namesrv: Namesrv = DEFAULT_NAMESRV, as_json: AsJson = False) -> None:
    """Min and max offset and last update time of each queue of a topic."""
    _run(namesrv, as_json, lambda admin: admin.topic_status(topic))


ClusterName = Annotated[str | None, typer.Option("-c", "--clusterName", help="Only this cluster.")]
BrokerAddr = Annotated[str | None, typer.Option("-b", "--brokerAddr", help="One broker (host:port).")]


@app.command("clusterList")
def cluster_list(
    cluster: ClusterName = None, namesrv: Namesrv = DEFAULT_NAMESRV, as_json: AsJson = False
) -> None:
    """Clusters and their brokers, with each broker's in/out TPS, send RT, flush latency, dispatch lag
    and disk ratio (the figures of brokerStatus and of the metrics endpoint)."""
    _run(namesrv, as_json, lambda admin: admin.cluster_stats(cluster))


@app.command("brokerStatus")
def broker_status(
    broker_addr: BrokerAddr = None, cluster: ClusterName = None, namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """A broker's runtime figures (GET_BROKER_RUNTIME_INFO): putTps / getTransferedTps over 10 s,
    1 min, 10 min, the send RT histogram, flush latency, dispatch lag, ring depths, disk ratio."""
    _run(namesrv, as_json, lambda admin: admin.broker_status(broker_addr, cluster))


@app.command("statsAll")
def stats_all(
    broker_addr: BrokerAddr = None, cluster: ClusterName = None, namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Per topic and consumer group: accumulation (lag), message count, and the broker's TPS."""
    _run(namesrv, as_json, lambda admin: admin.stats_all(cluster, broker_addr))


@app.command("deleteExpiredCommitLog")
def delete_expired_commitlog(
    broker_addr: BrokerAddr = None, cluster: ClusterName = None, namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Ask brokers to delete expired CommitLog files now, whatever deleteWhen says (files older than
    fileReservedTime; the file being written always stays)."""
    _run(namesrv, as_json, lambda admin: admin.delete_expired_commitlog(cluster, broker_addr))


@app.command("consumerProgress")
def consumer_progress(
    group: Annotated[str, typer.Option("-g", "--groupName", help="Consumer group.")],
    topic: Annotated[str | None, typer.Option("-t", "--topicName", help="Only this topic.")] = None,
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Broker offset, consumer offset and lag (diff) of each queue a group consumes."""
    _run(namesrv, as_json, lambda admin: admin.consumer_progress(group, topic=topic))


@app.command("wipeWritePerm")
def wipe_write_perm(
    broker_name: BrokerName, namesrv: Namesrv = DEFAULT_NAMESRV, as_json: AsJson = False
) -> None:
    """Stop producers from writing to a broker (reads go on): take its write permission away."""
    _run(namesrv, as_json, lambda admin: admin.wipe_write_perm(broker_name))


@app.command("addWritePerm")
def add_write_perm(
    broker_name: BrokerName, namesrv: Namesrv = DEFAULT_NAMESRV, as_json: AsJson = False
) -> None:
    """Give a broker its write permission back."""
    _run(namesrv, as_json, lambda admin: admin.add_write_perm(broker_name))


@app.command("queryMsgByKey")
def query_msg_by_key(
    topic: Topic,
    key: Annotated[str, typer.Option("-k", "--msgKey", help="Message key (KEYS) or unique key (UNIQ_KEY).")],
    begin_ms: Annotated[
        int, typer.Option("-b", "--beginTimestamp", help="Stored at or after (epoch ms).")
    ] = 0,
    end_ms: Annotated[
        int | None, typer.Option("-e", "--endTimestamp", help="Stored at or before (epoch ms).")
    ] = None,
    max_num: Annotated[int, typer.Option("-c", "--maxNum", min=1, max=4096, help="Most messages.")] = 64,
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Messages of a topic sent with a key, newest first (through each broker's IndexFile)."""
    _run(namesrv, as_json, lambda admin: [_message_row(m) for m in admin.query_msg_by_key(
        topic, key, max_num=max_num, begin_ms=begin_ms, end_ms=end_ms)])


@app.command("queryMsgById")
def query_msg_by_id(
    msg_id: Annotated[str, typer.Option("-i", "--msgId", help="Offset message id (SendResult offsetMsgId).")],
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """One message by its offset message id: where it is stored, its properties and body."""
    _run(namesrv, as_json, lambda admin: _message_detail(admin.query_msg_by_id(msg_id)))


@app.command("queryDLQMsg")
def query_dlq_msg(
    group: Annotated[str, typer.Option("-g", "--consumerGroup", help="Consumer group.")],
    begin_offset: Annotated[int, typer.Option("-o", "--offset", min=0, help="First DLQ queue offset.")] = 0,
    max_num: Annotated[int, typer.Option("-c", "--maxNum", min=1, max=4096, help="Most messages.")] = 64,
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Dead letters of a group (%DLQ%group), oldest first (docs/SCHEDULING.md)."""
    from rmqd.client.dlq import dlq_messages

    _run(namesrv, as_json, lambda admin: [
        {**_message_row(m), "originTopic": m.properties.get("DLQ_ORIGIN_TOPIC", ""),
         "originMsgId": m.properties.get("DLQ_ORIGIN_MESSAGE_ID", ""), "reconsumeTimes": m.reconsume_times}
        for m in dlq_messages(admin, group, begin_offset=begin_offset, max_num=max_num)])


@app.command("resendDLQMsg")
def resend_dlq_msg(
    group: Annotated[str, typer.Option("-g", "--consumerGroup", help="Consumer group.")],
    msg_id: Annotated[str, typer.Option("-i", "--msgId", help="Offset message id of the dead letter.")],
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Send a dead letter back to its group (through %RETRY%group, retry budget reset)."""
    from rmqd.client.dlq import resend_dlq_message

    _run(namesrv, as_json, lambda admin: {"group": group, "msgId": msg_id,
                                          "resentAs": resend_dlq_message(admin, group, msg_id)})


def main() -> None:
    """Console-script entry point of `mqadmin`."""
    app(prog_name="mqadmin")



# ---------------------------------------------------------------- helpers

@contextmanager
def _admin(namesrv: str) -> Iterator[Any]:
    from rmqd.client.admin import MQAdmin

    admin = MQAdmin(namesrv=namesrv)
    admin.start()
    try:
        yield admin
    finally:
        admin.shutdown()


def _one_target(cluster: str | None, broker_addr: str | None) -> None:
    """Exit with a usage error unless exactly one of -c and -b was given."""
    if (cluster is None) == (broker_addr is None):
        _output.error("give exactly one of -c CLUSTER and -b BROKERADDR", "mqadmin")
        raise typer.Exit(EXIT_USAGE)


def _run(namesrv: str, as_json: bool, call: Callable[[Any], object]) -> None:
    """Make one admin call; print its result, or its error and exit 1."""
    from rmqd.errors import ClientError, MQBrokerError

    try:
        with _admin(namesrv) as admin:
            result = call(admin)
    except MQBrokerError as exc:
        _output.error(exc.remark or str(exc), "mqadmin")
        raise typer.Exit(EXIT_ERROR) from None
    except ClientError as exc:
        _output.error(str(exc), "mqadmin")
        raise typer.Exit(EXIT_ERROR) from None
    if as_json:
        _output.print_json(result)
    elif result is None:
        typer.echo("OK")
    else:
        _output.print_value(result)


def _message_row(message: Any) -> dict[str, object]:
    return {"msg_id": message.msg_id, "queue_id": message.queue_id, "queue_offset": message.queue_offset,
            "store_time": _format_ms(message.store_timestamp_ms), "keys": " ".join(message.keys),
            "broker": message.broker_name, "offset_msg_id": message.offset_msg_id}


def _message_detail(message: Any) -> dict[str, object]:
    body = message.body.decode(errors="replace")
    return {"offset_msg_id": message.offset_msg_id, "msg_id": message.msg_id, "topic": message.topic,
            "tags": message.tags, "keys": " ".join(message.keys), "queue_id": message.queue_id,
            "queue_offset": message.queue_offset, "commitlog_offset": message.commitlog_offset,
            "reconsume_times": message.reconsume_times,
            "born_timestamp": _format_ms(message.born_timestamp_ms),
            "store_timestamp": _format_ms(message.store_timestamp_ms), "born_host": message.born_host,
            "store_host": message.store_host, "sys_flag": message.sys_flag,
            "body_bytes": len(message.body), "body": body if len(body) <= 512 else body[:512] + "...",
            "properties": message.properties}


def _format_ms(timestamp_ms: int) -> str:
    seconds = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp_ms / 1000))
    return f"{seconds}.{timestamp_ms % 1000:03d}"


if __name__ == "__main__":  # after every helper above is defined (python -m cli.mqadmin)
    main()
