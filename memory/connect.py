"""Open the memory: the configured Redis URL, else the embedded server (started here when needed)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from flashlive.memory.server import RedisServer, running_server_url
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import VideoMemory


@contextlib.asynccontextmanager
async def open_memory(settings: RedisSettings, **kwargs: Any) -> AsyncIterator[VideoMemory]:
    """A `VideoMemory` on `settings.url` or, without one, on the embedded server of `settings.data_dir`:
    one already running there is reused, otherwise one is started here and stopped on exit.
    `kwargs` go to `VideoMemory` (retention, buffer size, ...)."""
    server: RedisServer | None = None
    if settings.url is None:
        url = running_server_url(settings.data_path)
        if url is None:
            server = await RedisServer(settings.data_path).astart()
            url = server.url
        settings = settings.model_copy(update={"url": url})
    memory = VideoMemory.from_settings(settings, **kwargs)
    try:
        yield memory
    finally:
        try:
            await memory.close()
        finally:
            if server is not None:
                await server.astop()
