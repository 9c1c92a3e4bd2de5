"""`flashlive serve`: the whole service in one process tree; `flashlive web`: the web app alone.

What runs where (docs/web.md, "flashlive serve"):

- this process: the web app (uvicorn) and ingest. Ingest is in-process so that its WHIP app can be
  mounted into the web app: a browser's WebRTC session ends where the clip compressor runs, with no
  proxy hop (in docker-compose the web service proxies /whip/* to the ingest service instead). The
  web app never imports the model; ingest's encoder runs in its own thread.
- child processes: the embedded Redis (when no URL is configured) and `worker.processes` query
  workers, each started with `WORKER_COMMAND` (the same command docker-compose runs), so the LLM's
  long prefills never share an event loop or a GIL with the server. All children run in their own
  session (a terminal's Ctrl-C reaches only us, and we stop them in order) and get PR_SET_PDEATHSIG,
  so even a SIGKILL of this process leaves none behind.

Start-up serves /healthz first (Redis, then the web app), then loads the model; Ctrl-C (or SIGTERM)
stops the web app, stores ingest's last clips, lets workers drain, then stops Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashlive.config import FlashliveConfig, config_from_data
from flashlive.errors import CommandError
from flashlive.memory.settings import RedisSettings, default_data_dir

log = logging.getLogger(__name__)

# The query worker each `worker.processes` slot runs: one line to change when the worker command
# changes. Placeholders: {python} {model} {device} {concurrency} {redis} {prefix}; `--config FILE`
# is added when serve was given one.
WORKER_COMMAND = (
    "{python} -m flashlive worker --model {model} --device {device} --concurrency {concurrency} "
    "--redis {redis}"
)
DEMO_STREAM = "demo"
DEMO_SECONDS = 60.0
QUICK_RESTARTS = 3  # a worker that dies this many times within WORKER_SETTLE_S of its start is given up
WORKER_SETTLE_S = 20.0


def default_model() -> str:
    """The trained small model when its weights are in the package (`mini`), else `tiny` (random
    weights: the page shows a banner)."""
    from flashlive.model.shipped import weights_present

    return "mini" if weights_present("mini") else "tiny"


def quickstart_config(data_dir: Path) -> FlashliveConfig:
    """What `flashlive serve` runs without --config: the demo video looped in real time, the default
    small model, the embedded Redis in `data_dir`."""
    demo = data_dir / "demo-world.mp4"
    return config_from_data(
        {
            "streams": {DEMO_STREAM: {"url": str(demo), "realtime": True, "loop": True}},
            "model": {"name": default_model(), "device": "cpu"},
            "memory": {"redis": {"data_dir": str(data_dir / "redis")}},
            "worker": {"device": "cpu"},
        },
        source="the quick start",
    )


def quickstart_data_dir() -> Path:
    return default_data_dir().parent  # $FLASHLIVE_DATA_DIR, else ~/.local/share/flashlive


# -- child processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM to the child when this process dies, however it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class WorkerSupervisor:
    """`count` worker processes running `command`, started again when one dies (given up after
    QUICK_RESTARTS quick deaths in a row: a broken install should not loop forever)."""

    command: list[str]
    count: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    stopping: bool = False

    def start(self) -> None:
        if self.count:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="workers")

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent
        )

    async def _run(self) -> None:
        slots: list[tuple[subprocess.Popen[bytes], float, int]] = []
        for _ in range(self.count):
            slots.append((self._spawn(), time.monotonic(), 0))
        self.procs = [p for p, _, _ in slots]
        while not self.stopping:
            await asyncio.sleep(0.5)
            for i, (proc, started, quick) in enumerate(slots):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                quick = quick + 1 if time.monotonic() - started < WORKER_SETTLE_S else 0
                if quick >= QUICK_RESTARTS:
                    if quick == QUICK_RESTARTS:
                        print(
                            f"flashlive serve: the query worker keeps exiting (status {code}); answers are "
                            f"unavailable. Command: {shlex.join(self.command)}",
                            file=sys.stderr,
                        )
                    slots[i] = (proc, started, quick + 1)
                    continue
                log.warning("query worker pid %d exited with status %s; starting it again", proc.pid, code)
                slots[i] = (self._spawn(), time.monotonic(), quick)
            self.procs = [p for p, _, _ in slots]

    async def stop(self, timeout: float = 15.0) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def worker_command(
    template: str, cfg: FlashliveConfig, redis: RedisSettings, config_path: str | None
) -> list[str]:
    assert redis.url is not None
    values = {
        "python": sys.executable, "model": cfg.model.name, "device": cfg.worker.device,
        "concurrency": str(cfg.worker.concurrency), "redis": redis.url, "prefix": redis.prefix,
    }  # fmt: skip
    try:
        command = [part.format(**values) for part in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise CommandError(f"bad worker command {template!r}: {exc}") from None
    if config_path and template == WORKER_COMMAND:
        command += ["--config", config_path]
    return command


# -- the WHIP app of an ingest that is still starting ---------------------------------------------


class LateApp:
    """An ASGI app that answers 503 until `app` is set (WHIP while ingest loads its model)."""

    def __init__(self, what: str) -> None:
        self.app: Any = None
        self.what = what

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        body = f"{self.what} is starting; try again in a few seconds\n".encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain"), (b"retry-after", b"5")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


# -- uvicorn ---------------------------------------------------------------------------------------


def _server(app: Any, host: str, port: int, max_ws: int) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # we handle SIGINT/SIGTERM and stop everything in order
            yield

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", ws_max_size=max_ws
    )
    return Server(config)


async def _start_server(server: Any, where: str) -> asyncio.Task[None]:
    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits the process when it cannot bind: make it our error
            raise CommandError(
                f"cannot serve on {where} (the port is in use, or the address is wrong)"
            ) from None

    task = asyncio.create_task(serve(), name="uvicorn")
    while not server.started:
        if task.done():
            task.result()  # the CommandError above
            raise CommandError(f"the web server on {where} stopped while starting")
        await asyncio.sleep(0.02)
    return task


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


# -- flashlive web -----------------------------------------------------------------------------------


async def run_web(cfg: FlashliveConfig, redis: RedisSettings) -> int:
    """The web app alone (docker-compose's web service): WHIP proxied to `web.whip_upstream`."""
    from flashlive.web.app import create_app

    if redis.url is None:
        raise CommandError(
            "the web app alone needs a Redis URL (--redis, $FLASHLIVE_REDIS_URL or the config)"
        )
    stop = _stop_event()
    server = _server(create_app(cfg.web, redis), cfg.web.host, cfg.web.port, cfg.web.max_ws_message_bytes)
    task = await _start_server(server, f"{cfg.web.host}:{cfg.web.port}")
    print(f"FlashLive web at {_url(cfg.web.host, cfg.web.port)}", flush=True)
    await asyncio.wait({task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task
    return 0


# -- flashlive serve ---------------------------------------------------------------------------------


async def run_serve(
    cfg: FlashliveConfig,
    redis: RedisSettings,
    *,
    config_path: str | None = None,
    worker_template: str = WORKER_COMMAND,
    demo_video: Path | None = None,
) -> int:
    """Run everything `cfg` names until SIGINT/SIGTERM. `demo_video`: write the demo there first if
    missing (the quick start)."""
    from flashlive.memory.server import RedisServer, RedisServerError, running_server_url
    from flashlive.web.app import create_app

    stop = _stop_event()
    server_proc: RedisServer | None = None
    if redis.url is None:
        url = running_server_url(redis.data_path)
        if url is None:
            try:
                server_proc = await RedisServer(redis.data_path).astart()
            except RedisServerError as exc:
                raise CommandError(f"cannot start the embedded Redis: {exc}") from None
            url = server_proc.url
        redis = redis.model_copy(update={"url": url})
    whip = LateApp("ingest")
    workers = WorkerSupervisor(worker_command(worker_template, cfg, redis, config_path), cfg.worker.processes)
    web = cfg.web
    server = _server(create_app(web, redis, whip=whip), web.host, web.port, web.max_ws_message_bytes)
    ingest_task: asyncio.Task[Any] | None = None
    web_task: asyncio.Task[None] | None = None
    try:
        web_task = await _start_server(server, f"{web.host}:{web.port}")
        print(f"FlashLive is up: {_url(web.host, web.port)}  (Ctrl-C stops it)", flush=True)
        workers.start()
        ingest_task = asyncio.create_task(_ingest(cfg, redis, whip, demo_video), name="ingest")
        waits = {web_task, ingest_task, asyncio.create_task(stop.wait())}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if ingest_task in done and not ingest_task.cancelled() and ingest_task.exception() is not None:
            raise ingest_task.exception()  # type: ignore[misc]
        print("flashlive serve: stopping...", file=sys.stderr, flush=True)
    finally:
        server.should_exit = True
        if ingest_task is not None:
            ingest_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ingest_task
        await workers.stop()
        if web_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(web_task, 10)
        if server_proc is not None:
            await server_proc.astop()
    return 0


async def _ingest(cfg: FlashliveConfig, redis: RedisSettings, whip: LateApp, demo_video: Path | None) -> None:
    """Ingest in this process until cancelled: the config's streams, WHIP (any stream name), and the
    streams registered through the API."""
    from flashlive.app.ingest import follow_registry, specs_from_config
    from flashlive.memory.registry import StreamRegistry
    from flashlive.memory.store import VideoMemory
    from flashlive.model.encoder import load_clip_encoder
    from flashlive.model.errors import ModelError
    from flashlive.stream.ingest import Ingest

    if demo_video is not None and not demo_video.is_file():
        from flashlive.stream.demo import write_demo_video

        demo_video.parent.mkdir(parents=True, exist_ok=True)
        partial = demo_video.with_suffix(".partial.mp4")
        await asyncio.to_thread(write_demo_video, partial, seconds=DEMO_SECONDS)
        partial.replace(demo_video)
    try:
        encoder = await asyncio.to_thread(load_clip_encoder, cfg.model)
    except (ModelError, OSError) as exc:
        raise CommandError(f"cannot load model {cfg.model.name!r}: {exc}") from None
    memory = VideoMemory.from_settings(redis, retention=cfg.memory.retention)
    try:
        async with Ingest(encoder, memory, cfg.ingest) as ingest:
            for spec in specs_from_config(cfg).values():
                ingest.start_stream(spec)
            whip.app = ingest.whip_app(token=cfg.web.token_value)
            registry = StreamRegistry(memory.client, prefix=memory.prefix)
            await follow_registry(ingest, registry, cfg.ingest)
    finally:
        whip.app = None
        await memory.close()
