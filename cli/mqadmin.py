"""`mqadmin`: RocketMQ's admin commands, with RocketMQ's command names and short flags.

Every command opens one `rmqd.client.admin.MQAdmin` against the namesrvs of `-n` (default: the
NAMESRV_ADDR environment variable, else 127.0.0.1:9876), makes one call, prints the result as a
table (or JSON with --json) and closes it. An error answered by a broker or namesrv prints its
remark and exits 1. The client is imported inside the commands, so `mqadmin --help` never needs it.
"""
from __future__ import annotations

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
DEFAULT_NAMESRV = "127.0.0.1:9876"


@app.command("updateTopic")
def update_topic(
    topic: Topic,
    cluster: Annotated[
        str | None, typer.Option("-c", "--clusterName", help="Create on every broker of this cluster.")
    ] = None,
    broker_addr: Annotated[
        str | None, typer.Option("-b", "--brokerAddr", help="Create on this broker (host:port).")
    ] = None,
    read_queue_nums: Annotated[int, typer.Option("-r", "--readQueueNums", min=1)] = 8,
    write_queue_nums: Annotated[int, typer.Option("-w", "--writeQueueNums", min=1)] = 8,
    perm: Annotated[
        int, typer.Option("-p", "--perm", min=0, max=7, help="2 = write, 4 = read, 6 = both.")
    ] = 6,
    namesrv: Namesrv = DEFAULT_NAMESRV,
    as_json: AsJson = False,
) -> None:
    """Create or update a topic on a cluster (-c) or one broker (-b)."""
    if (cluster is None) == (broker_addr is None):
        _output.error("give exactly one of -c CLUSTER and -b BROKERADDR", "mqadmin")
        raise typer.Exit(EXIT_USAGE)
    _run(namesrv, as_json, lambda admin: admin.create_topic(
        topic, read_queue_nums, write_queue_nums, perm, cluster=cluster, broker_addr=broker_addr))


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


@app.command("clusterList")
def cluster_list(namesrv: Namesrv = DEFAULT_NAMESRV, as_json: AsJson = False) -> None:
    """Clusters, their brokers and addresses."""
    _run(namesrv, as_json, lambda admin: admin.cluster_list())


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


def main() -> None:
    """Console-script entry point of `mqadmin`."""
    app(prog_name="mqadmin")


if __name__ == "__main__":
    main()


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
