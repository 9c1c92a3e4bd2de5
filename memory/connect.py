"""Open the memory: the configured Redis URL, else the embedded server (started here when needed)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from flashlive.memory.server import RedisServer, running_server_url
from flashlive.memory.store import VideoMemory


@contextlib.asynccontextmanager
async def open_memory(
    url: str | None, *, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> AsyncIterator[VideoMemory]:
    """`url` (from `flashlive.settings.redis_url_from_env`) or, when None, the embedded server on
    `data_dir`: one already running there is reused, otherwise one is started and stopped on exit."""
    server: RedisServer | None = None
    if url is None:
        url = running_server_url(data_dir)
    if url is None:
        server = await RedisServer(data_dir).astart()
        url = server.url
    memory = VideoMemory.from_url(url, **kwargs)
    try:
        yield memory
    finally:
        try:
            await memory.close()
        finally:
            if server is not None:
                await server.astop()
