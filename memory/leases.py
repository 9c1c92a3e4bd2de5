"""One writer per stream: a lease in Redis that every append is fenced by.

`VideoMemory.acquire(stream, source=..., ttl_s=...)` takes the stream's lease (`SET NX PX` inside a
script, which also checks that the stream holds no clips of another source) and renews it every third
of its ttl. The append script refuses a clip whose writer does not hold the lease, so two ingests can
never interleave one stream: the second one is refused at `acquire` (naming the holder), and a writer
whose lease expired while it could not reach Redis takes it back only if nobody else took the stream in
the meantime (every acquire writes its token to the meta's `writer`). The key carries the stream's hash
tag, and its value, the token, is `<holder>/<random>`: `holder` says who writes (`ingest pid 123 on
host`), for messages and `flashlive memory ls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def default_holder() -> str:
    """Who this process is, for other writers' refusals: `ingest pid 123 on host`."""
    return f"ingest pid {os.getpid()} on {socket.gethostname()}"


def new_token(holder: str | None = None) -> str:
    return f"{holder or default_holder()}/{secrets.token_hex(6)}"


def holder_of(token: str) -> str:
    """The readable part of a lease token."""
    return token.rsplit("/", 1)[0] if "/" in token else token


@dataclass
class Lease:
    """This process's hold on one stream. `origin`: where a file source's media time starts on the
    stream's timeline (0 for a new stream; just after its last clip when another source continues it)."""

    stream: str
    token: str
    ttl_ms: int
    source: str
    origin: float = 0.0
    previous_source: str = ""  # the source the stream held before ("" for a new stream or the same one)
    lost: str | None = None  # set when another writer took the stream over
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def holder(self) -> str:
        return holder_of(self.token)

    @property
    def renew_every_s(self) -> float:
        return self.ttl_ms / 3000.0

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
