"""`flashlive worker`: a query worker answering ask jobs and evaluating watches until Ctrl-C/SIGTERM.

Settings come from the config's `model` and `worker` sections (`--config FILE`), with the command line
applied on top; `--redis URL` / $FLASHLIVE_REDIS_URL / the config's `memory.redis` say where the jobs
are. Run as many as you like against one Redis (docs/workers.md, "Operations").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from flashlive.commands.options import redis_settings
from flashlive.commands.validate import config_error
from flashlive.config import ConfigError, FlashliveConfig, config_from_data
from flashlive.errors import CommandError
from flashlive.model.device import DEVICE_RULE
from flashlive.model.worker.service import WorkerSettings

_WORKER = WorkerSettings(name="x")  # the defaults shown in --help

# settings path -> the option that sets it, for one-line errors
FLAGS: Mapping[str, str] = {
    "model.name": "--model",
    "worker.device": "--device",
    "worker.concurrency": "--concurrency",
}


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "worker",
        parents=parents,
        help="serve questions and watches on the video memory (a query worker)",
        description="Load the model and answer ask jobs and watch ticks from Redis until Ctrl-C or SIGTERM "
        "(running jobs are finished within --drain seconds or handed back to other workers). Logs at INFO.",
    )
    p.add_argument("--config", metavar="FILE", help="a flashlive YAML config (its model and worker sections)")
    p.add_argument(
        "--model", help="preset, checkpoint directory or repo id (default: the config's, else tiny)"
    )
    p.add_argument("--device", help=f"{DEVICE_RULE} (default: the config's worker.device, else auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--download", action="store_true", help="fetch a repo id's weights if not cached")
    p.add_argument(
        "--concurrency", type=int, help="jobs and watch ticks at once (default: the config's, else 1)"
    )
    p.add_argument("--name", help="worker name in heartbeats and logs (default: host-pid-random)")
    p.add_argument("--prefix", default=None, help="Redis key prefix (default: the config's, else fl)")
    p.add_argument("--data-dir", default=None, help="embedded server data directory (when no Redis URL)")
    p.add_argument("--no-watches", action="store_true", help="answer questions only; leave watches to others")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the model (default: the config's worker.threads, else torch's: one per "
        "core). Several CPU workers on one machine: give each cores / workers",
    )
    p.add_argument(
        "--heartbeat", type=float, default=_WORKER.heartbeat, help=f"seconds (default {_WORKER.heartbeat:g})"
    )
    p.add_argument(
        "--lease",
        type=float,
        default=_WORKER.lease,
        help="seconds a job of a silent worker waits before another takes it over "
        f"(default {_WORKER.lease:g}; at least twice --heartbeat)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=_WORKER.drain,
        help="seconds running jobs get to finish on stop before they are handed back "
        f"(default {_WORKER.drain:g})",
    )
    p.add_argument("--test-step-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests only
    p.set_defaults(handler=worker_command)


def worker_command(args: argparse.Namespace) -> int:
    from flashlive.app.worker import WorkerPlan, run_worker

    if args.log_level.upper() == "WARNING":  # the shared default: a worker says what it does
        logging.getLogger("flashlive").setLevel(logging.INFO)
    cfg = _config(args)
    plan = WorkerPlan(
        model=cfg.model.name,
        device=cfg.worker.device,
        settings=_settings(args, cfg),
        dtype=args.dtype,
        download=args.download,
        threads=_threads(args.threads) if args.threads is not None else cfg.worker.threads,
        step_delay=_number(args.test_step_delay, "--test-step-delay", low=0.0),
    )
    redis = redis_settings(args, cfg.memory.redis)
    code = asyncio.run(run_worker(plan, redis))
    # Everything is handed back and closed. The interpreter's teardown of torch takes seconds on a busy
    # CPU, and a supervisor waiting for this process should not: leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _config(args: argparse.Namespace) -> FlashliveConfig:
    """The config file's settings (or the defaults) with the command line's applied; one validation."""
    if args.config:
        from flashlive.commands.check_config import load_config_or_fail

        data: dict[str, Any] = load_config_or_fail(args.config).model_dump()
    else:
        data = {}
    for section, values in (
        ("model", {"name": args.model}),
        ("worker", {"device": args.device, "concurrency": args.concurrency}),
    ):
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            data[section] = {**data.get(section, {}), **given}
    try:
        return config_from_data(data, source=args.config or "the command line")
    except ConfigError as exc:
        raise config_error(exc, FLAGS) from None


def _settings(args: argparse.Namespace, cfg: FlashliveConfig) -> WorkerSettings:
    from flashlive.memory.jobs import WORKER_NAME

    heartbeat = _number(args.heartbeat, "--heartbeat", low=0.01)
    lease = _number(args.lease, "--lease", low=0.02)
    if lease < 2 * heartbeat:
        raise CommandError(
            f"--lease ({lease:g} s) must be at least twice --heartbeat ({heartbeat:g} s), or jobs of live "
            "workers are taken over"
        )
    if args.name is not None and not WORKER_NAME.match(args.name):
        raise CommandError(f"--name: {args.name!r} is not a worker name: letters, digits, '_', '.', ':', '-'")
    options: dict[str, Any] = dict(
        concurrency=cfg.worker.concurrency,
        heartbeat=heartbeat,
        lease=lease,
        tick_lease=lease,  # one knob: how long a silent worker's job or watch tick waits for a taker
        drain=_number(args.drain, "--drain", low=0.0),
        watches=not args.no_watches,
    )
    if args.name is not None:
        options["name"] = args.name
    try:
        return WorkerSettings(**options)
    except ValueError as exc:  # the limits WorkerSettings adds to the config's (e.g. concurrency)
        raise CommandError(str(exc)) from None


def _threads(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 1024:
        raise CommandError(f"--threads: 1 to 1024, not {value}")
    return value


def _number(value: float, flag: str, *, low: float, high: float = 86_400.0) -> float:
    if not low <= value <= high:  # also refuses nan
        raise CommandError(f"{flag}: must be between {low:g} and {high:g} seconds, not {value:g}")
    return value
