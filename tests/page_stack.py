"""The whole service for the page's browser tests, as `flashlive serve` runs it but on the session's
Redis: ingest with the tiny model's encoder and the web app (WHIP mounted from that ingest) share one
event loop in a thread; the query worker is a process of its own (tests/worker_proc.py).

    with PageStack(redis_url, prefix, video, token="s3cret") as stack:
        stack.url        # the app with the token
        stack.open_url   # the same service without a token (a second app on the same Redis and ingest)

Nothing is faked: real Redis, the real tiny encoder through `Ingest`, real HTTP and WebSocket on
loopback, aiortc answering the browser's WHIP offers, a real worker loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from helpers import free_port

from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import VideoMemory
from flashlive.model.encoder import load_clip_encoder
from flashlive.model.settings import ModelSettings
from flashlive.stream.ingest import Ingest
from flashlive.stream.lifecycle import StreamSpec
from flashlive.stream.settings import IngestSettings
from flashlive.web.app import create_app
from flashlive.web.settings import WebSettings

TESTS = Path(__file__).parent
MODEL = "tiny"
# the same video ingested as three stopped streams: a watch's first evaluation is the newest clip of
# a stream whose watches were never evaluated, so each watch test gets a stream of its own
FILE_STREAMS = ("lobby", "yard", "porch")
SAMPLE_FPS = 2.0  # a clip every 2 s of camera (4 frames): the camera test waits seconds, not minutes


def worker_process(redis_url: str, prefix: str, *, model: str | None = MODEL) -> subprocess.Popen[str]:
    """tests/worker_proc.py with the real model's ModelEngine (`model`), or the fake engine (None)."""
    args = [sys.executable, str(TESTS / "worker_proc.py"), redis_url, prefix, "page-worker", "0.05", "24"]
    args += ["--concurrency", "2", *(["--model", model] if model else [])]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wait_ready(proc: subprocess.Popen[str], limit: float = 120.0) -> None:
    """Until the worker printed "ready" (it loads the model first)."""
    assert proc.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(limit)
    line = result[0].strip() if result else ""
    assert line == "ready", f"the worker did not start within {limit:.0f} s (exit {proc.poll()}): {line!r}"


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PageStack:
    def __init__(self, redis_url: str, prefix: str, video: Path, *, token: str | None = None) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.video = video
        self.token = token
        self.port = free_port()
        self.open_port = free_port()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="page-stack", daemon=True)
        self.worker: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_url(self) -> str:
        return f"http://127.0.0.1:{self.open_port}"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def memory(self) -> VideoMemory:
        return VideoMemory.from_url(self.redis_url, prefix=self.prefix)

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> PageStack:
        self.worker = worker_process(self.redis_url, self.prefix)  # loads the model meanwhile
        try:
            self.thread.start()
            if not self.ready.wait(120) or self.error is not None:
                raise RuntimeError(f"the page stack did not start: {self.error!r}")
            wait_ready(self.worker)
            self.wait_until(self._files_ingested, 120, "the video streams were not ingested")
            self.wait_until(self._worker_alive, 30, "the worker sent no heartbeat")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self.stop_event is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(60)
        if self.worker is not None:
            stop_process(self.worker)

    def wait_until(self, check: Any, limit: float, message: str) -> Any:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                value = check()
                if value:
                    return value
            time.sleep(0.2)
        raise AssertionError(message)

    def _files_ingested(self) -> bool:
        rows = {
            r["name"]: r for r in httpx.get(f"{self.url}/api/streams", headers=self.auth()).json()["streams"]
        }
        return all(
            n in rows and rows[n]["state"] == "stopped" and rows[n]["clips"] >= 6 for n in FILE_STREAMS
        )

    def _worker_alive(self) -> bool:
        return bool(httpx.get(f"{self.url}/api/info", headers=self.auth(), timeout=5).json()["workers"])

    # -- the server thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    @staticmethod
    def _config(app: Any, port: int) -> uvicorn.Config:
        return uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=5,  # a connection left open must not hold the teardown
        )  # fmt: skip

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        memory = VideoMemory.from_url(self.redis_url, prefix=self.prefix)
        encoder = await asyncio.to_thread(load_clip_encoder, ModelSettings(name=MODEL, device="cpu"))
        settings = IngestSettings(fps=SAMPLE_FPS)
        redis = RedisSettings.from_dsn(self.redis_url, prefix=self.prefix)
        try:
            async with Ingest(encoder, memory, settings) as ingest:
                for name in FILE_STREAMS:
                    ingest.start_stream(StreamSpec(name, str(self.video), settings=settings))
                secured = WebSettings.model_validate({"token": self.token})
                apps = [
                    (create_app(secured, redis, whip=ingest.whip_app(token=self.token)), self.port),
                    (create_app(WebSettings(), redis, whip=ingest.whip_app()), self.open_port),
                ]
                servers = [uvicorn.Server(self._config(app, port)) for app, port in apps]
                tasks = [asyncio.create_task(s.serve()) for s in servers]
                while not all(s.started for s in servers):
                    if any(t.done() for t in tasks):
                        raise RuntimeError("uvicorn stopped while starting")
                    await asyncio.sleep(0.02)
                self.ready.set()
                await self.stop_event.wait()
                for s in servers:
                    s.should_exit = True
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await memory.close()
