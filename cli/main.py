"""`rmqd`: start, stop and watch a broker; run a namesrv; inspect and verify a store.

Thin by design: each command parses its options, builds a BrokerConfig (defaults < -c file <
-p key=value < named flags), calls one entry point in workers/ or rmqd.store, prints through
cli._output and exits with that entry point's code (rmqd/exit_codes.py). workers/ and the store
modules are imported inside the commands, so `rmqd --help` and configuration errors never depend
on them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from cli import _output
from cli.inspect_files import inspect_app
from rmqd.config import BrokerConfig, NamesrvConfig
from rmqd.errors import ConfigError
from rmqd.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_STORE_CORRUPT, EXIT_USAGE

app = typer.Typer(
    name="rmqd",
    help="rmqd: a RocketMQ-style message broker (mmap CommitLog, shared-memory rings, ZeroMQ).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(inspect_app, name="inspect")

ConfigFile = Annotated[
    Path | None, typer.Option("-c", "--config", help="broker.conf (java .properties, RocketMQ keys).")
]
StoreDir = Annotated[
    str | None, typer.Option("--store-dir", help="Store directory (storePathRootDir). Default: ~/store.")
]
NamesrvAddr = Annotated[
    str | None, typer.Option("--namesrv", help="host:port[;host:port] of running namesrvs (namesrvAddr).")
]
ListenPort = Annotated[int | None, typer.Option("--port", help="Broker port (listenPort). Default: 10911.")]
FlushType = Annotated[
    str | None, typer.Option("--flush", metavar="SYNC_FLUSH|ASYNC_FLUSH", help="flushDiskType.")
]
Daemon = Annotated[bool, typer.Option("--daemon", help="Detach from the terminal.")]
Properties = Annotated[
    list[str] | None,
    typer.Option("-p", "--property", metavar="KEY=VALUE", help="Set any broker.conf key; repeatable."),
]


@app.command()
def start(
    config: ConfigFile = None,
    store_dir: StoreDir = None,
    namesrv: NamesrvAddr = None,
    port: ListenPort = None,
    namesrv_port: Annotated[
        int | None, typer.Option("--namesrv-port", help="Port of the embedded namesrv. Default: 9876.")
    ] = None,
    flush: FlushType = None,
    daemon: Daemon = False,
    prop: Properties = None,
) -> None:
    """Start a broker and, unless --namesrv is given, a namesrv on 127.0.0.1 with it."""
    flags = {"storePathRootDir": store_dir, "listenPort": port, "flushDiskType": flush,
             "namesrvListenPort": namesrv_port, "namesrvAddr": namesrv}
    cfg = _load_config(config, _overrides(prop, flags))
    embed = namesrv is None
    if embed:
        cfg = _with_embedded_namesrv(cfg)
    raise typer.Exit(_run_broker(cfg, embed, daemon))


@app.command()
def broker(
    config: ConfigFile = None,
    store_dir: StoreDir = None,
    namesrv: NamesrvAddr = None,
    port: ListenPort = None,
    flush: FlushType = None,
    daemon: Daemon = False,
    prop: Properties = None,
) -> None:
    """Start a broker only; it registers with the namesrvs of --namesrv / namesrvAddr."""
    flags = {"storePathRootDir": store_dir, "listenPort": port, "flushDiskType": flush,
             "namesrvAddr": namesrv}
    cfg = _load_config(config, _overrides(prop, flags))
    raise typer.Exit(_run_broker(cfg, False, daemon))


@app.command()
def stop(
    config: ConfigFile = None,
    store_dir: StoreDir = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the processes to exit.")
    ] = 60.0,
) -> None:
    """Stop the broker that owns the store (SIGTERM); exit 1 if it still runs after --timeout."""
    from workers.supervisor import stop_broker

    raise typer.Exit(stop_broker(_store_dir(config, store_dir), timeout))


@app.command()
def status(
    config: ConfigFile = None,
    store_dir: StoreDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the broker's processes, shared-memory positions and ring depths. Exit 1 if not running."""
    from workers.supervisor import broker_status

    report = broker_status(_store_dir(config, store_dir))
    if as_json:
        _output.print_json(report)
    else:
        _print_status(report)
    raise typer.Exit(EXIT_OK if report.get("running") else EXIT_ERROR)


@app.command()
def namesrv(
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="namesrv.conf (java .properties).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port to listen on (listenPort). Default: 9876.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run a namesrv in the foreground."""
    from workers.namesrv import main as namesrv_main

    cfg = _load_namesrv_config(config, {"listenPort": port} if port is not None else {})
    code = namesrv_main(f"{host}:{cfg.listenPort}", scan_interval_ms=cfg.scanNotActiveBrokerInterval,
                        broker_expiry_ms=cfg.brokerChannelExpiredTime)
    raise typer.Exit(code)


@app.command()
def verify(config: ConfigFile = None, store_dir: StoreDir = None) -> None:
    """Check a stopped broker's store (records, ConsumeQueues, checkpoint); exit 4 if damaged."""
    try:
        from rmqd.store.verify import verify_store
    except ModuleNotFoundError as exc:
        if exc.name != "rmqd.store.verify":
            raise
        _output.error("verify is not available yet")
        raise typer.Exit(EXIT_USAGE) from None
    path = _store_dir(config, store_dir)
    problems = verify_store(path)
    for problem in problems:
        typer.echo(problem)
    typer.echo(f"{path}: {len(problems)} problem(s)" if problems else f"{path}: clean")
    raise typer.Exit(EXIT_STORE_CORRUPT if problems else EXIT_OK)


def main() -> None:
    """Console-script entry point of `rmqd`."""
    app(prog_name="rmqd")


# ---------------------------------------------------------------- helpers

def _overrides(props: list[str] | None, flags: dict[str, object]) -> dict[str, object]:
    """-p KEY=VALUE items, then the named flags that were given (named flags win)."""
    overrides: dict[str, object] = {}
    for item in props or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _output.error(f"-p expects KEY=VALUE, got {item!r}")
            raise typer.Exit(EXIT_USAGE)
        overrides[key.strip()] = value.strip()
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return overrides


def _load_config(path: Path | None, overrides: dict[str, object] | None = None) -> BrokerConfig:
    """BrokerConfig.load, or one stderr line per problem and exit EXIT_CONFIG."""
    try:
        return BrokerConfig.load(path, overrides)
    except ConfigError as exc:
        _exit_config_error(exc)


def _load_namesrv_config(path: Path | None, overrides: dict[str, object]) -> NamesrvConfig:
    try:
        return NamesrvConfig.load(path, overrides)
    except ConfigError as exc:
        _exit_config_error(exc)


def _exit_config_error(exc: ConfigError) -> NoReturn:
    for line in str(exc).splitlines():
        _output.error(f"config error: {line}")
    raise typer.Exit(EXIT_CONFIG) from None


def _with_embedded_namesrv(cfg: BrokerConfig) -> BrokerConfig:
    """Point namesrvAddr at the namesrv `rmqd start` embeds on 127.0.0.1:namesrvListenPort."""
    embedded_addr = f"127.0.0.1:{cfg.namesrvListenPort}"
    if cfg.namesrvAddr not in (BrokerConfig.namesrvAddr, embedded_addr):
        _output.error(
            f"note: namesrvAddr={cfg.namesrvAddr} is replaced by the embedded namesrv {embedded_addr}; "
            "use --namesrv (or `rmqd broker`) to register with other namesrvs"
        )
    return dataclasses.replace(cfg, namesrvAddr=embedded_addr)


def _run_broker(cfg: BrokerConfig, embed: bool, daemon: bool) -> int:
    from workers.supervisor import run_broker

    return run_broker(cfg, embedded_namesrv=embed, namesrv_port=cfg.namesrvListenPort, daemon=daemon)


def _store_dir(config: Path | None, store_dir: str | None) -> str:
    if store_dir is not None:
        return os.path.abspath(os.path.expanduser(store_dir))
    return _load_config(config).store_dir


def _print_status(report: dict) -> None:
    state = "not running" if not report.get("running") else "booting" if report.get("booting") else "running"
    typer.echo(f"supervisor pid {report.get('supervisor_pid') or '-'}: {state}")
    if report.get("error"):
        _output.error(str(report["error"]))
    processes = report.get("processes") or []
    if processes:
        typer.echo("")
        _output.print_table(
            ["PROCESS", "PID", "STATE", "ALIVE", "RESTARTS", "LAST BEAT (ms ago)"],
            [[p.get("name"), p.get("pid"), p.get("state"), p.get("alive"), p.get("restarts"),
              p.get("last_beat_age_ms")] for p in processes],
        )
    for title, key in (("POSITION", "positions"), ("RING", "rings")):
        table = report.get(key) or {}
        if table:
            typer.echo("")
            value_title = "DEPTH (bytes)" if key == "rings" else "VALUE"
            _output.print_table([title, value_title], sorted(table.items()))


if __name__ == "__main__":  # after every helper above is defined
    main()
