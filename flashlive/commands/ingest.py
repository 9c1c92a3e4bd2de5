"""`flashlive ingest`: one URL, or every stream of a config file."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from flashlive.commands.check_config import load_config_or_fail
from flashlive.commands.options import redis_settings
from flashlive.commands.validate import config_error
from flashlive.config import ConfigError, FlashliveConfig, config_from_data
from flashlive.errors import CommandError
from flashlive.model.device import DEVICE_RULE
from flashlive.stream.settings import POLICIES, IngestSettings, SourceOptions

_INGEST, _SOURCE = IngestSettings(), SourceOptions()  # for the defaults shown in --help


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
    p.add_argument("--device", help=f"{DEVICE_RULE} (default: the config's, else cpu)")
    p.add_argument("--fps", type=float, help=f"frames sampled per second (default {_INGEST.fps:g})")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime", dest="realtime", action="store_true", default=None, help="pace files in real time"
    )
    pace.add_argument(
        "--backfill", dest="realtime", action="store_false", help="read files as fast as possible"
    )
    p.add_argument("--loop", action="store_true", help="loop a file (a demo camera)")
    p.add_argument(
        "--policy", choices=POLICIES, help=f"when encoding falls behind (default {_INGEST.policy})"
    )
    p.add_argument(
        "--transport", choices=("tcp", "udp"), help=f"RTSP transport (default {_SOURCE.transport})"
    )
    p.add_argument("--user", help="source user name (prefer --config with ${ENV} for secrets)")
    p.add_argument("--password-env", metavar="VAR", help="environment variable holding the source password")
    p.add_argument("--max-batch", type=int, help=f"clips per encoder batch (default {_INGEST.max_batch})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for file backfill")
    p.add_argument(
        "--new-source",
        action="store_true",
        help="continue a stream that holds clips of another source (a file continues after its end)",
    )
    p.add_argument("--json", action="store_true", help="print what became of every stream's clips as JSON")
    p.add_argument(
        "--follow-registry",
        action="store_true",
        help="also ingest the streams registered through the web API (POST /api/streams), and run "
        "until stopped (what docker-compose's ingest service does)",
    )
    p.set_defaults(handler=ingest_command, fast_exit=True)


# the command line's options, by the config setting they set (for one-line messages)
FLAGS = {
    "name": "--name",
    "url": "URL",
    "fps": "--fps",
    "policy": "--policy",
    "realtime": "--realtime/--backfill",
    "loop": "--loop",
    "transport": "--transport",
    "credentials.user": "--user",
    "credentials.password": "--password-env",
    "max_batch": "--max-batch",
    "model.name": "--model",
    "model.device": "--device",
}


def _config_from_args(args: argparse.Namespace) -> FlashliveConfig:
    """The config to run: --config FILE, or one stream from the URL, with the command line's choices
    applied. Both go through the config's validation, so a bad value is one line naming the setting."""
    if args.config:
        if args.url:
            raise CommandError("give either a URL or --config, not both")
        data = load_config_or_fail(args.config).model_dump()
        source = f"{args.config} with the command line"
    else:
        if not args.url:
            raise CommandError("give a URL to ingest (or --config FILE)")
        from flashlive.stream.sources.av_source import default_name

        name = args.name if args.name is not None else default_name(args.url)
        data = {"streams": {name: _stream_from_args(args)}}
        source = "the command line"
    overrides = {
        key: value
        for key, value in (("fps", args.fps), ("realtime", args.realtime), ("policy", args.policy))
        if value is not None
    }
    data["streams"] = {name: {**stream, **overrides} for name, stream in data["streams"].items()}
    _set(data, "model", name=args.model, device=args.device)
    _set(data, "ingest", max_batch=args.max_batch)
    try:
        return config_from_data(data, source=source)
    except ConfigError as exc:
        for problem in exc.problems:  # a stream name the rule refuses came from --name (or the URL)
            if problem.path.count(".") == 1 and problem.path.startswith("streams."):
                problem.path = "name"
        raise config_error(exc, FLAGS) from None


def _stream_from_args(args: argparse.Namespace) -> dict[str, Any]:
    stream: dict[str, Any] = {"url": args.url, "loop": args.loop}
    if args.transport:
        stream["transport"] = args.transport
    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise CommandError(f"environment variable {args.password_env} is not set")
    if args.user or password:
        stream["credentials"] = {"user": args.user, "password": password}
    return stream


def _set(data: dict[str, Any], section: str, **values: object) -> None:
    """Put the options the command line gave (not None) into `section` of the config data."""
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        data[section] = {**data.get(section, {}), **given}


def ingest_command(args: argparse.Namespace) -> int:
    if args.follow_registry and not args.url and not args.config:
        cfg = config_from_data({})
    else:
        cfg = _config_from_args(args)
    if not args.follow_registry and not any(s.enabled for s in cfg.streams.values()):
        raise CommandError("no enabled stream in the config (or give --follow-registry)")
    from flashlive.app.ingest import run_ingest

    redis = redis_settings(args, cfg.memory.redis)
    return asyncio.run(
        run_ingest(
            cfg,
            redis,
            progress=not args.no_progress,
            registry=args.follow_registry,
            json_out=args.json,
            new_source=args.new_source,
        )
    )
