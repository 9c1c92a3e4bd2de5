"""`flashlive ingest`: one URL, or every stream of a config file."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from flashlive.commands.check_config import load_config_or_fail
from flashlive.config import FlashliveConfig, StreamConfig
from flashlive.errors import CommandError
from flashlive.settings import redis_url_from_env


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "ingest",
        parents=parents,
        help="ingest video streams into memory (one URL, or every stream of --config)",
        description="Decode, sample (1 fps), encode 4-frame clips and append them to memory. "
        "Live streams run until Ctrl-C; files end when read (use --backfill to go as fast as possible).",
    )
    p.add_argument("url", nargs="?", help="rtsp://, http(s)://, HLS .m3u8, or a file path")
    p.add_argument("--name", help="stream name in memory (default: from the URL)")
    p.add_argument("--config", metavar="FILE", help="a flashlive YAML config: ingest every stream it names")
    p.add_argument("--model", help="model preset, checkpoint dir or repo id (default: tiny, or the config's)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: cpu, or the config's)")
    p.add_argument("--fps", type=float, help="frames sampled per second (default 1)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime", dest="realtime", action="store_true", default=None, help="pace files in real time"
    )
    pace.add_argument(
        "--backfill", dest="realtime", action="store_false", help="read files as fast as possible"
    )
    p.add_argument("--loop", action="store_true", help="loop a file (a demo camera)")
    p.add_argument(
        "--policy",
        choices=("lower_fps", "skip", "wait"),
        help="when encoding falls behind (default lower_fps)",
    )
    p.add_argument("--transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport (default tcp)")
    p.add_argument("--user", help="source user name (prefer --config with ${ENV} for secrets)")
    p.add_argument("--password-env", metavar="VAR", help="environment variable holding the source password")
    p.add_argument("--max-batch", type=int, help="clips per encoder batch (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for file backfill")
    p.set_defaults(handler=ingest_command)


def _config_from_args(args: argparse.Namespace) -> FlashliveConfig:
    """One-stream config from the command line (so both paths share the same validation)."""
    if args.config:
        if args.url:
            raise CommandError("give either a URL or --config, not both")
        cfg = load_config_or_fail(args.config)
    else:
        if not args.url:
            raise CommandError("give a URL to ingest (or --config FILE)")
        from flashlive.stream.sources.av_source import default_name

        password = None
        if args.password_env:
            password = os.environ.get(args.password_env)
            if password is None:
                raise CommandError(f"environment variable {args.password_env} is not set")
        credentials = None
        if args.user or password:
            credentials = {"user": args.user, "password": password}
        stream: dict[str, Any] = {"url": args.url, "transport": args.transport, "loop": args.loop}
        if credentials:
            stream["credentials"] = credentials
        try:
            cfg = FlashliveConfig.model_validate({"streams": {args.name or default_name(args.url): stream}})
        except Exception as exc:
            raise CommandError(str(exc)) from None
    overrides: dict[str, Any] = {}
    if args.fps is not None:
        overrides["fps"] = args.fps
    if args.realtime is not None:
        overrides["realtime"] = args.realtime
    if args.policy:
        overrides["policy"] = args.policy
    try:
        cfg.streams = {
            name: StreamConfig.model_validate({**s.model_dump(), **overrides})
            for name, s in cfg.streams.items()
        }
    except Exception as exc:
        raise CommandError(str(exc)) from None
    if args.model:
        cfg.model.name = args.model
    if args.device:
        cfg.model.device = args.device
    if args.max_batch:
        cfg.model.max_batch = args.max_batch
    return cfg


def ingest_command(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    if not any(s.enabled for s in cfg.streams.values()):
        raise CommandError("no enabled stream in the config")
    from flashlive.app.ingest import run_ingest

    return asyncio.run(run_ingest(cfg, redis_url_from_env(args.redis), progress=not args.no_progress))
