"""Test helpers for real HTTP and WebRTC peers: an ASGI app on uvicorn, urllib requests, a camera track."""

from __future__ import annotations

import asyncio
import fractions
import importlib.util
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any, Literal, NamedTuple

import av
import media
from aiortc import VideoStreamTrack
from helpers import free_port, require


class PatternTrack(VideoStreamTrack):
    """A publisher's camera: the moving test pattern at aiortc's default 30 fps clock."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(media.pattern(self.sent, 96, 64), format="rgb24")
        frame.pts, frame.time_base = pts, fractions.Fraction(time_base)
        self.sent += 1
        return frame


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: str


async def http(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
    """A real HTTP request (urllib in a thread, so the event loop keeps serving)."""

    def call() -> Reply:
        request = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=20) as resp:
                return Reply(
                    resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
                )
        except urllib.error.HTTPError as err:
            return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read().decode())

    return await asyncio.to_thread(call)


async def serve(app: Any, *, lifespan: Literal["auto", "on", "off"] = "on") -> AsyncIterator[str]:
    """Serve `app` on a free loopback port with uvicorn for one `async for` body; yields the base URL."""
    require(importlib.util.find_spec("uvicorn"), "uvicorn is not installed (pip install uvicorn)")
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
