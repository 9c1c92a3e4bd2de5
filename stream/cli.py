"""`flashlive ingest` (one URL or every stream of a config file) and `flashlive check-config`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from flashlive.cli import CommandError
from flashlive.config import ConfigError, FlashliveConfig, StreamConfig, load_config
from flashlive.settings import redis_url_from_env

log = logging.getLogger(__name__)


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

    c = subparsers.add_parser(
        "check-config",
        parents=parents,
        help="validate a flashlive YAML config and explain every error with its line",
    )
    c.add_argument("file", help="the YAML config file")
    c.set_defaults(handler=check_config_command)

    d = subparsers.add_parser(
        "demo-video", parents=parents, help="write a generated demo video (no camera or download needed)"
    )
    d.add_argument("out", metavar="OUT", help="output file (.mp4 or .mkv)")
    d.add_argument("--seconds", type=float, default=60.0)
    d.add_argument("--fps", type=int, default=10)
    d.set_defaults(handler=demo_video_command)


def demo_video_command(args: argparse.Namespace) -> int:
    from flashlive.stream.demo import write_demo_video

    if args.seconds <= 0 or args.fps <= 0:
        raise CommandError("--seconds and --fps must be positive")
    try:
        frames = write_demo_video(args.out, seconds=args.seconds, fps=args.fps)
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc}") from None
    print(f"{args.out}: {frames} frames, {args.seconds:g} s at {args.fps} fps")
    return 0


def check_config_command(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        raise CommandError(f"{len(exc.problems)} problem(s) in the config:\n{exc}") from None
    streams = (
        ", ".join(f"{n} ({'whip' if s.whip else _scheme(s.url)})" for n, s in cfg.streams.items()) or "none"
    )
    print(f"{args.file}: ok. streams: {streams}; model {cfg.model.name} on {cfg.model.device}")
    return 0


def _scheme(url: str | None) -> str:
    if not url:
        return "?"
    return url.split("://", 1)[0] if "://" in url else "file"


def _config_from_args(args: argparse.Namespace) -> FlashliveConfig:
    """One-stream config from the command line (so both paths share the same validation)."""
    if args.config:
        if args.url:
            raise CommandError("give either a URL or --config, not both")
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise CommandError(f"{len(exc.problems)} problem(s) in the config:\n{exc}") from None
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
    return asyncio.run(run_ingest(cfg, redis_url_from_env(args.redis), progress=not args.no_progress))


async def run_ingest(cfg: FlashliveConfig, redis_url: str | None, *, progress: bool = True) -> int:
    """Ingest every enabled pulled stream of `cfg` until they end or SIGINT/SIGTERM; 1 if any failed."""
    from flashlive.memory.connect import open_memory
    from flashlive.memory.store import Retention
    from flashlive.model.encoder import load_clip_encoder

    from .ingest import Ingest, specs_from_config

    retention = Retention(
        seconds=cfg.memory.retention_s or 0.0, max_bytes=cfg.memory.max_bytes or 0
    )  # 0: that limit is off
    try:
        encoder = await asyncio.to_thread(load_clip_encoder, cfg.model.name, cfg.model.device)
    except Exception as exc:
        raise CommandError(f"cannot load model {cfg.model.name!r}: {exc}") from None
    specs = specs_from_config(cfg)
    whip_specs = specs_from_config(cfg, whip=True)
    url = redis_url or cfg.memory.redis_url
    async with (
        open_memory(url, data_dir=cfg.memory.data_dir, retention=retention) as memory,
        Ingest(
            encoder, memory, max_batch=cfg.model.max_batch, thumbnail_width=cfg.ingest.thumbnail_width
        ) as ingest,
    ):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        for spec in specs.values():
            ingest.start_stream(spec)
            print(
                f"ingesting {spec.name}: {ingest.runners[spec.name].metrics.source or spec.name}",
                file=sys.stderr,
            )
        whip_server = None
        if whip_specs:
            token = cfg.web.whip_token.get_secret_value() if cfg.web.whip_token else None
            app = ingest.whip_app(token=token, prefix="/whip", streams=whip_specs)
            whip_server = await _serve_whip(app, cfg.ingest.whip_listen)
            for name in whip_specs:
                print(
                    f"waiting for WHIP publishers: POST http://{cfg.ingest.whip_listen}/whip/{name}",
                    file=sys.stderr,
                )
        bars = asyncio.create_task(_progress(ingest)) if progress and sys.stderr.isatty() else None
        # with WHIP streams the process runs until stopped; otherwise until every pulled stream ends
        done = asyncio.create_task(ingest.wait(list(specs)) if not whip_specs else stop.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({done, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        done.cancel()
        if whip_server is not None:
            whip_server[0].should_exit = True
            await whip_server[1]
        if bars is not None:
            bars.cancel()
        if stop.is_set():
            print("stopping: storing the last clips...", file=sys.stderr)
        await ingest.close()
        failed = {n: r.error for n, r in ingest.runners.items() if r.error}
        for name, runner in ingest.runners.items():
            m = runner.metrics
            status = f"error: {runner.error}" if runner.error else "ok"
            print(f"{name}: {m.clips} clips, {m.dropped_clips} dropped, {status}", file=sys.stderr)
        return 1 if failed else 0


async def _progress(ingest: Any) -> None:
    """One tqdm bar per backfilled file, driven by the source's progress through the file."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    try:
        while True:
            for name, runner in ingest.runners.items():
                if name in bars and runner.state == "stopped":
                    bars[name].n = bars[name].total
                    bars[name].refresh()
                    continue
                source = runner.source
                if source is None or source.live or runner.spec.source_options.get("realtime", True):
                    continue
                fraction = source.progress.fraction
                if fraction is None:
                    continue
                if name not in bars:
                    total = round(source.progress.duration or 0, 1)
                    bars[name] = tqdm(total=total, desc=name, unit="s", unit_scale=False, leave=True)
                bar = bars[name]
                bar.n = round(fraction * bar.total, 1)
                bar.set_postfix(clips=runner.metrics.clips, refresh=False)
                bar.refresh()
            await asyncio.sleep(0.5)
    finally:
        for bar in bars.values():
            bar.close()


async def _serve_whip(app: Any, listen: str) -> tuple[Any, asyncio.Task[None]]:
    """Serve the WHIP app with uvicorn on this event loop; returns the server and its task."""
    try:
        import uvicorn
    except ImportError:
        raise CommandError("WHIP streams need uvicorn: pip install uvicorn") from None
    host, _, port = listen.rpartition(":")
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=int(port), log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise CommandError(f"cannot serve WHIP on {listen} (port in use?)")
        await asyncio.sleep(0.05)
    return server, task
