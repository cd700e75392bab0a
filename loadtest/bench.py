"""rmqd benchmarks: one entry point, one subcommand per benchmark.

    python loadtest/bench.py produce --start-broker --flush SYNC_FLUSH -s 1024 -t 64 -d 10
    python loadtest/bench.py overload --start-broker --factor 3 -d 30
    python loadtest/bench.py ceilings --dir /path/in/store/filesystem
    python loadtest/bench.py report results/*.json --markdown --png docs/bench.png

To add a benchmark (consume, end to end, ...): write loadtest/bench_<name>.py with
`add_arguments(parser)` and `run(args) -> int` (exit code), record through loadtest/_stats.py
(Recorder, new_result, write_json) so that `report` renders its JSON, start brokers with
loadtest/_broker.py, and add one line to SUBCOMMANDS below. See loadtest/README.md.

Runs in the caller's process; each benchmark decides how many processes and threads it spawns.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (module, add-arguments function, run function, help). Keep sorted by name.
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "ceilings": ("loadtest.ceilings", "add_arguments", "run",
                 "measure this machine's ceilings (fdatasync, memcpy into mmap, shm ring)"),
    "consume": ("loadtest.bench_consume", "add_arguments", "run",
                "backlog drain: one consumer drains N messages (msgs/s, MB/s, CPU)"),
    "e2e": ("loadtest.bench_consume", "add_e2e_arguments", "run_e2e_command",
            "delivery latency at fixed rates (producer send time -> listener): p50/p99/p99.9, max gap"),
    "overload": ("loadtest.bench_produce", "add_overload_arguments", "run_overload",
                 "offer N x capacity: SYSTEM_BUSY share, broker RSS, recovery latency"),
    "produce": ("loadtest.bench_produce", "add_arguments", "run",
                "producer benchmark (RocketMQ benchmark Producer): TPS, RT, failures, msgs per fsync"),
    "report": ("loadtest.report", "add_arguments", "run",
               "render JSON results as a markdown table and a PNG plot"),
    "workload": ("loadtest.workloads", "add_arguments", "run",
                 "OpenMessaging Benchmark workloads: publish/consume msg/s, publish and end-to-end latency"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description="rmqd benchmarks (see loadtest/README.md)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, add_arguments, _run, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        getattr(importlib.import_module(module_name), add_arguments)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, _add, run_name, _help = SUBCOMMANDS[args.command]
    return getattr(importlib.import_module(module_name), run_name)(args)


if __name__ == "__main__":
    sys.exit(main())
