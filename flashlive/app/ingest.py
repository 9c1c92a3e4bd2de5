"""Run ingest from a config: load the encoder, open the memory, start every stream, serve WHIP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from flashlive.config import FlashliveConfig
from flashlive.errors import CommandError
from flashlive.memory.registry import DEFAULT_LEASE, StreamRegistration, StreamRegistry
from flashlive.memory.settings import RedisSettings
from flashlive.stream.lifecycle import StreamSpec
from flashlive.stream.settings import IngestSettings, SourceOptions

log = logging.getLogger(__name__)


def specs_from_config(cfg: FlashliveConfig, *, whip: bool = False) -> dict[str, StreamSpec]:
    """Specs of the enabled streams: pulled ones (`whip=False`) or WHIP ones (`whip=True`, for
    `Ingest.whip_app(streams=...)`: they start when a publisher connects)."""
    return {
        name: StreamSpec.from_settings(name, s, cfg.ingest)
        for name, s in cfg.streams.items()
        if s.enabled and s.whip == whip
    }


def spec_from_registration(reg: StreamRegistration, settings: IngestSettings) -> StreamSpec:
    """The spec of a stream registered through the API (`POST /api/streams`)."""
    source = SourceOptions(transport=reg.transport, loop=reg.loop, realtime=True)
    return StreamSpec(name=reg.name, url=reg.url, source=source, fps=reg.fps, settings=settings)


async def follow_registry(
    ingest: Any, registry: StreamRegistry, settings: IngestSettings, *, lease: float = DEFAULT_LEASE
) -> None:
    """Run the streams registered through the API (memory/registry.py) until cancelled: start each
    one this process wins the lease of, renew the leases, stop the ones that were unregistered."""
    owner = f"{socket.gethostname()}:{os.getpid()}"
    mine: set[str] = set()
    try:
        async for registered in registry.follow(poll=lease / 3):
            for name, reg in registered.items():
                if name not in mine and ingest.running(name):
                    continue  # a configured stream of that name runs here already
                if not await registry.claim(name, owner, lease=lease):
                    continue  # another ingest process runs it
                if name not in mine:
                    mine.add(name)
                    log.info("starting registered stream %s", name)
                    ingest.start_stream(spec_from_registration(reg, settings))
            for name in sorted(mine - set(registered)):
                log.info("stopping unregistered stream %s", name)
                await ingest.stop_stream(name)
                await registry.release(name, owner)
                mine.discard(name)
    finally:
        for name in mine:
            with contextlib.suppress(Exception):
                await registry.release(name, owner)


async def run_ingest(
    cfg: FlashliveConfig, redis: RedisSettings, *, progress: bool = True, registry: bool = False
) -> int:
    """Ingest every enabled stream of `cfg` (pulled ones, and WHIP ones served on ingest.whip_listen)
    until they end or SIGINT/SIGTERM, into the memory `redis` reaches; 1 if any stream failed. With
    `registry`, also the streams registered through the API, and run until stopped."""
    from flashlive.memory.connect import open_memory
    from flashlive.model.encoder import load_clip_encoder
    from flashlive.model.errors import ModelError
    from flashlive.stream.ingest import Ingest

    try:
        encoder = await asyncio.to_thread(load_clip_encoder, cfg.model)
    except (ModelError, OSError) as exc:
        raise CommandError(f"cannot load model {cfg.model.name!r}: {exc}") from None
    specs = specs_from_config(cfg)
    whip_specs = specs_from_config(cfg, whip=True)
    async with (
        open_memory(redis, retention=cfg.memory.retention) as memory,
        Ingest(encoder, memory, cfg.ingest) as ingest,
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
            token = cfg.web.token_value
            app = ingest.whip_app(token=token, prefix="/whip", streams=whip_specs)
            whip_server = await _serve_whip(app, cfg.ingest.whip_listen)
            for name in whip_specs:
                print(
                    f"waiting for WHIP publishers: POST http://{cfg.ingest.whip_listen}/whip/{name}",
                    file=sys.stderr,
                )
        bars = asyncio.create_task(_progress(ingest)) if progress and sys.stderr.isatty() else None
        follower = None
        if registry:
            follower = asyncio.create_task(
                follow_registry(ingest, StreamRegistry(memory.client, prefix=memory.prefix), cfg.ingest)
            )
        # with WHIP streams or the registry the process runs until stopped; otherwise until every
        # pulled stream ends
        forever = bool(whip_specs) or registry
        done = asyncio.create_task(ingest.wait(list(specs)) if not forever else stop.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({done, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        done.cancel()
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
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

    from flashlive.memory.types import StreamState

    bars: dict[str, Any] = {}
    try:
        while True:
            for name, runner in ingest.runners.items():
                if name in bars and runner.state == StreamState.STOPPED:
                    bars[name].n = bars[name].total
                    bars[name].refresh()
                    continue
                source = runner.source
                if source is None or source.live or runner.spec.source.realtime:
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
