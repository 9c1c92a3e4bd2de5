"""Run ingest from a config: load the encoder, open the memory, start every stream, serve WHIP, and
say honestly how it went (docs/ingest-guarantees.md).

Exit status: 0 when every stream ended with every clip it cut stored (or already there) and every file
read to its end; 1 when a stream failed, lost clips, was refused (another writer, another source), or
a file was stopped before its end; 2 for a bad command line or config (nothing started). A first
Ctrl-C (or SIGTERM) stops every stream, storing what was cut within `ingest.stop_timeout_s`; a second
one exits at once with 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
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
from flashlive.stream.lifecycle import StreamRunner, StreamSpec
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
    cfg: FlashliveConfig,
    redis: RedisSettings,
    *,
    progress: bool = True,
    registry: bool = False,
    json_out: bool = False,
    new_source: bool = False,
) -> int:
    """Ingest every enabled stream of `cfg` (pulled ones, and WHIP ones served on ingest.whip_listen)
    until they end or SIGINT/SIGTERM, into the memory `redis` reaches. With `registry`, also the
    streams registered through the API, and run until stopped. Returns the exit status."""
    from flashlive.memory.connect import open_memory
    from flashlive.model.encoder import load_clip_encoder
    from flashlive.model.errors import ModelError
    from flashlive.stream.ingest import Ingest

    specs = {n: dataclasses.replace(s, new_source=new_source) for n, s in specs_from_config(cfg).items()}
    whip_specs = {
        n: dataclasses.replace(s, new_source=new_source) for n, s in specs_from_config(cfg, whip=True).items()
    }
    whip_socket = bind_listen(cfg.ingest.whip_listen) if whip_specs else None  # fail before loading
    try:
        encoder = await asyncio.to_thread(load_clip_encoder, cfg.model)
    except (ModelError, OSError) as exc:
        raise CommandError(f"cannot load model {cfg.model.name!r}: {exc}") from None
    async with (
        open_memory(redis, retention=cfg.memory.retention, buffer_size=cfg.memory.buffer_clips) as memory,
        Ingest(encoder, memory, cfg.ingest) as ingest,
    ):
        stop = asyncio.Event()
        _handle_signals(stop)
        for spec in specs.values():
            ingest.start_stream(spec)
            print(
                f"ingesting {spec.name}: {ingest.runners[spec.name].metrics.source or spec.url or spec.name}",
                file=sys.stderr,
            )
        whip_server = None
        if whip_socket is not None:
            token = cfg.web.token_value
            app = ingest.whip_app(token=token, prefix="/whip", streams=whip_specs)
            whip_server = await _serve_whip(app, whip_socket)
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
            print("stopping: storing the clips already cut...", file=sys.stderr)
        await ingest.close()
        runners = list(ingest.runners.values())
    for runner in runners:
        print(summary_line(runner), file=sys.stderr)
    status = 0 if runners and all(r.ok for r in runners) else 1
    if not runners and stop.is_set():
        status = 0  # stopped before any WHIP publisher (or registered stream) came
    if json_out:
        print(json.dumps({"streams": {r.name: stream_report(r) for r in runners}, "exit": status}))
    return status


def stream_report(runner: StreamRunner) -> dict[str, Any]:
    """What became of a stream's clips, for `--json` (the same numbers as the summary line)."""
    m = runner.metrics
    return {
        "state": str(runner.state),
        "ok": runner.ok,
        "error": runner.error or "",
        "note": runner.note,
        "refused": runner.refused,
        "clips_cut": m.clips_cut,
        "stored": m.clips,
        "duplicates": m.duplicates,
        "dropped": m.dropped_clips,
        "lost": m.lost_clips,
        "losses": dict(sorted(m.losses.items())),
        "corrupt": [[round(a, 3), round(b, 3)] for a, b in m.corrupt],
    }


def summary_line(runner: StreamRunner) -> str:
    m = runner.metrics
    if runner.refused:
        return f"{runner.name}: refused: {runner.error}"
    head = f"{runner.name}: {runner.state}"
    said = runner.error or runner.note
    counts = (
        f"{m.clips_cut} clips cut: {m.clips} stored, {m.duplicates} already stored, "
        f"{m.dropped_clips} dropped, {m.lost_clips} lost"
    )
    corrupt = ""
    if m.corrupt:
        spans = ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in m.corrupt[:5])
        corrupt = f"; undecodable: {spans}{' ...' if len(m.corrupt) > 5 else ''}"
    return f"{head}{': ' + said if said else ''} ({counts}{corrupt})"


def _handle_signals(stop: asyncio.Event) -> None:
    """First SIGINT/SIGTERM: stop gracefully. Second: leave at once (exit 130); an embedded Redis dies
    with this process (PDEATHSIG) after writing its AOF, and leases lapse after their ttl."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            sys.stderr.write("stopped at once: clips not yet stored are lost\n")
            sys.stderr.flush()
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


async def _progress(ingest: Any) -> None:
    """One tqdm bar per backfilled file, driven by the source's progress through the file."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    try:
        while True:
            for name, runner in ingest.runners.items():
                if name in bars and not runner.state.active:
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


def bind_listen(listen: str) -> socket.socket:
    """A listening socket on HOST:PORT, or CommandError saying why not (the port is taken, ...)."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CommandError(f"cannot serve WHIP on {listen}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = " (another ingest running? set ingest.whip_listen)" if exc.errno == errno.EADDRINUSE else ""
        raise CommandError(f"cannot serve WHIP on {listen}: {exc.strerror or exc}{hint}") from None
    sock.setblocking(False)
    return sock


async def _serve_whip(app: Any, sock: socket.socket) -> tuple[Any, asyncio.Task[None]]:
    """Serve the WHIP app with uvicorn on this event loop, on a socket already bound; returns the
    server and its task."""
    try:
        import uvicorn
    except ImportError:
        raise CommandError("WHIP streams need uvicorn: pip install uvicorn") from None
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            raise CommandError(f"cannot serve WHIP on {sock.getsockname()}")
        await asyncio.sleep(0.05)
    return server, task
