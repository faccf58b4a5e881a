"""`digitd run`: the daemon in this process, or a supervisor of worker processes.

Deciding which takes the configuration only, so this module imports little: a supervisor
starts its workers without first loading what only the workers use (numpy, OpenCV, watchdog,
the model's runtime), which would delay READY by a few tenths of a second. digitd.daemon
(a worker, or the only process) and digitd.supervisor are imported when chosen.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

from digitd.codes import ExitCode
from digitd.config import Config, ConfigError, load_config, worker_processes
from digitd.logs import configure_logging


class WorkerId(NamedTuple):
    """Which worker process this is: `--worker INDEX/COUNT`, set by the supervisor."""

    index: int = 0
    count: int = 1


ONE_PROCESS = WorkerId()  # the daemon runs alone, not under a supervisor


def run_command(args: argparse.Namespace) -> int:
    """`digitd run`: load the configuration (exit 2 if it is wrong) and run until stopped:
    as a supervisor of worker processes, or (one process, or a worker) as the daemon itself."""
    try:
        config = load_config(args.config, inbox=args.inbox, outbox=args.outbox)
    except ConfigError as exc:
        print(f"digitd: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    worker = _parse_worker(getattr(args, "worker", None))
    if worker is not None:
        from digitd.supervisor import die_with_parent

        die_with_parent()
    fields = {"worker": worker.index} if worker else {}  # a worker's lines say which it is
    configure_logging(config.log.format, config.log.level, **fields)
    processes = worker.count if worker else worker_processes(config)
    if worker is None and processes > 1:
        from digitd.supervisor import Supervisor

        return Supervisor(config, args, processes).run()
    from digitd.daemon import Daemon

    def reread() -> Config:  # on SIGHUP: the model it names now (digitd.reload)
        return load_config(args.config, inbox=args.inbox, outbox=args.outbox)

    code = Daemon(config, worker or ONE_PROCESS, reread).run()
    # Everything is filed and flushed by now: leave without the interpreter's teardown
    # (seconds with TensorFlow loaded, the fallback runtime).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _parse_worker(value: str | None) -> WorkerId | None:
    """`--worker I/N` (set by the supervisor only) -> WorkerId(I, N)."""
    if not value:
        return None
    index, _, count = value.partition("/")
    return WorkerId(int(index), int(count))
