"""Helpers for the web tests: the app on uvicorn in a thread (so sync clients work too), a worker
subprocess with the fake engine, clips with real JPEG thumbnails."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fake_engine import ENCODER_ID
from helpers import free_port
from PIL import Image

from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.web.app import create_app
from flashlive.web.settings import WebSettings

TESTS = Path(__file__).parent


class ThreadServer:
    """uvicorn serving `app` on a free loopback port in a thread with its own event loop."""

    def __init__(self, app: Any, *, ws_max_size: int = 64 * 1024) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                ws_max_size=ws_max_size, lifespan="on",
            )
        )  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@dataclass
class Web:
    url: str
    redis_url: str
    prefix: str
    token: str | None = None

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def memory(self) -> VideoMemory:
        return VideoMemory.from_url(self.redis_url, prefix=self.prefix)


@contextlib.contextmanager
def web_app(redis_url: str, prefix: str, *, whip: Any = None, **settings: Any) -> Iterator[Web]:
    app = create_app(WebSettings(**settings), RedisSettings.from_dsn(redis_url, prefix=prefix), whip=whip)
    with ThreadServer(app) as server:
        token = settings.get("token")
        yield Web(server.url, redis_url, prefix, token)


@contextlib.contextmanager
def worker_process(
    redis_url: str, prefix: str, name: str, *, step_s: float = 0.02, length: int = 8, random: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """tests/worker_proc.py (the worker loop with the fake engine) until the block ends."""
    args = [sys.executable, str(TESTS / "worker_proc.py"), redis_url, prefix, name, str(step_s), str(length)]
    proc = subprocess.Popen(
        [*args, *(["--random"] if random else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"worker did not start: {line!r}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def jpeg(value: int, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (value % 256, 80, 160)).save(out, format="JPEG")
    return out.getvalue()


async def fill(
    memory: VideoMemory, stream: str, n: int, *, start: float = 1000.0, step: float = 4.0, score: float = 0.2
) -> list[Clip]:
    """`n` clips of the fake engine's encoder, each with a thumbnail; tokens hold `score` (what the
    fake engine's yes/no score reads)."""
    clips = []
    for i in range(n):
        tokens = np.full((64, 8), score, np.float16)
        t = start + i * step
        clip = Clip(stream, t, t + step, 4, tokens, ENCODER_ID, thumbnail=jpeg(i * 20))
        await memory.append(clip)
        clips.append(clip)
    return clips
