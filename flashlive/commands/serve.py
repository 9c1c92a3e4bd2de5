"""`flashlive serve` (everything in one process tree: the quick start) and `flashlive web` (the web
app alone, as docker-compose runs it)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from flashlive.commands.check_config import load_config_or_fail
from flashlive.commands.options import redis_settings
from flashlive.commands.validate import config_error
from flashlive.config import ConfigError, FlashliveConfig, config_from_data
from flashlive.errors import CommandError
from flashlive.web.settings import WebSettings

_WEB = WebSettings()

# settings path -> the option that sets it, for one-line errors
FLAGS = {"web.host": "--host", "web.port": "--port", "model.name": "--model", "worker.processes": "--workers"}


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    s = subparsers.add_parser(
        "serve",
        parents=parents,
        help="run the whole service: Redis, ingest, query workers and the web app (the quick start)",
        description="Without --config: an embedded Redis, the demo video looped as a live stream, the "
        "default small model, one query worker and the web app, offline. With --config: what the file names.",
    )
    _common(s)
    s.add_argument("--model", help="model for ingest and workers (default: the config's, else mini or tiny)")
    s.add_argument(
        "--data-dir",
        help="embedded Redis and demo video (default: $FLASHLIVE_DATA_DIR or ~/.local/share/flashlive)",
    )
    s.add_argument("--workers", type=int, help="query worker processes (default: worker.processes, 1)")
    s.add_argument(
        "--worker-command",
        metavar="TEMPLATE",
        help="command each worker process runs, with {python} {model} {device} {concurrency} {redis} "
        "{prefix} {threads} (default: flashlive worker ...; tests run a fake engine)",
    )
    s.set_defaults(handler=serve_command)
    w = subparsers.add_parser(
        "web", parents=parents, help="run the web app alone (workers and ingest run elsewhere, through Redis)"
    )
    _common(w)
    w.set_defaults(handler=web_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="a flashlive YAML config")
    p.add_argument("--host", help=f"listen address (default: web.host, {_WEB.host})")
    p.add_argument("--port", type=int, help=f"listen port (default: web.port, {_WEB.port})")
    p.add_argument("--prefix", help="Redis key prefix (default: memory.redis.prefix, fl)")


def _config(args: argparse.Namespace, base: FlashliveConfig, source: str) -> FlashliveConfig:
    """`base` with the command line's choices, validated like the file (one line per problem)."""
    data = base.model_dump(mode="json")
    data["web"] = base.web.model_dump()  # keep the token itself (a JSON dump masks secrets)
    for section, values in (
        ("web", {"host": args.host, "port": args.port}),
        ("model", {"name": getattr(args, "model", None)}),
        ("worker", {"processes": getattr(args, "workers", None)}),
    ):
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            data[section] = {**data.get(section, {}), **given}
    try:
        return config_from_data(data, source=source)
    except ConfigError as exc:
        raise config_error(exc, FLAGS) from None


def serve_command(args: argparse.Namespace) -> int:
    from flashlive.app.serve import WORKER_COMMAND, quickstart_config, quickstart_data_dir, run_serve

    demo: Path | None = None
    if args.config:
        cfg = _config(args, load_config_or_fail(args.config), f"{args.config} with the command line")
    else:
        data_dir = Path(args.data_dir) if args.data_dir else quickstart_data_dir()
        cfg = _config(args, quickstart_config(data_dir), "the quick start with the command line")
        demo = Path(cfg.streams["demo"].url or "")
    if args.data_dir and args.config:
        raise CommandError("--data-dir is for the quick start; with --config set memory.redis.data_dir")
    redis = redis_settings(args, cfg.memory.redis)
    template = args.worker_command or WORKER_COMMAND
    return asyncio.run(
        run_serve(cfg, redis, config_path=args.config, worker_template=template, demo_video=demo)
    )


def web_command(args: argparse.Namespace) -> int:
    from flashlive.app.serve import run_web

    base = load_config_or_fail(args.config) if args.config else config_from_data({})
    cfg = _config(args, base, f"{args.config or 'the defaults'} with the command line")
    return asyncio.run(run_web(cfg, redis_settings(args, cfg.memory.redis)))
