"""Pulled streams registered at run time (`POST /api/streams`), and how ingest processes pick them up.

The registry is desired state, reconciled by ingest (a controller loop, not a message queue), so no
message can be lost for good:

- `fl:ingest:streams` (Hash): stream name -> `StreamRegistration` JSON. The web app adds and removes
  entries; nothing else writes it.
- `fl:ingest:changes` (pub/sub): a wake-up after every change. Ingest processes also re-read the hash
  every `poll` seconds, so a missed wake-up (a reconnect) only delays a change by that much.
- `fl:{name}:owner` (String with a TTL): the ingest process running a registered stream. Taken with
  SET NX PX and renewed while the stream runs (`claim`), so with several ingest processes each stream
  runs in exactly one of them; when its owner dies the lease expires and another one takes it over.

Torch-free: the web app imports it; ingest (`flashlive.app.ingest`) follows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import Field, ValidationError

from flashlive.memory.keys import DEFAULT_PREFIX, owner_key, registry_channel, registry_key
from flashlive.memory.messages import Message, StreamName
from flashlive.memory.store import CONNECTION_ERRORS

log = logging.getLogger(__name__)

DEFAULT_LEASE = 10.0  # s an owner may go without renewing before another ingest process takes over

# renew our lease, or take a free one: 1 if `owner` holds the stream now
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StreamRegistration(Message):
    """A pulled stream to ingest: what `POST /api/streams` stored."""

    type: Literal["stream"] = "stream"
    name: StreamName
    url: str = Field(min_length=1, max_length=4096)
    transport: Literal["tcp", "udp"] = "tcp"
    fps: float | None = Field(default=None, gt=0, le=30, allow_inf_nan=False)
    loop: bool = False  # files only: start again at the end
    created: float = Field(default_factory=time.time)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamRegistry:
    def __init__(self, client: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.key = registry_key(prefix)
        self.channel = registry_channel(prefix)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    async def add(self, registration: StreamRegistration) -> bool:
        """Register a stream; False (nothing changed) when the name is registered already."""
        added = await self.client.hsetnx(self.key, registration.name, registration.dumps())
        if added:
            await self.client.publish(self.channel, registration.name)
        return bool(added)

    async def remove(self, name: str) -> bool:
        """Unregister a stream (its ingest process stops it); False if it was not registered."""
        removed = await self.client.hdel(self.key, name)
        if removed:
            await self.client.publish(self.channel, name)
        return bool(removed)

    async def get(self, name: str) -> StreamRegistration | None:
        raw = await self.client.hget(self.key, name)
        return self._decode(name, raw) if raw is not None else None

    async def all(self) -> dict[str, StreamRegistration]:
        out = {}
        for name, raw in (await self.client.hgetall(self.key)).items():
            reg = self._decode(_s(name), raw)
            if reg is not None:
                out[reg.name] = reg
        return out

    def _decode(self, name: str, raw: bytes | str) -> StreamRegistration | None:
        try:
            return StreamRegistration.model_validate_json(raw)
        except ValidationError as exc:
            log.error("skipping the unreadable registration of stream %r: %s", name, exc)
            return None

    # -- ownership (ingest side) -----------------------------------------------------------------

    async def claim(self, name: str, owner: str, *, lease: float = DEFAULT_LEASE) -> bool:
        """Take or renew the lease on a registered stream; False when another process holds it."""
        return bool(await self._claim(keys=[owner_key(self.prefix, name)], args=[owner, round(lease * 1000)]))

    async def release(self, name: str, owner: str) -> None:
        await self._release(keys=[owner_key(self.prefix, name)], args=[owner])

    async def owner(self, name: str) -> str | None:
        value = await self.client.get(owner_key(self.prefix, name))
        return _s(value) if value is not None else None

    async def follow(self, *, poll: float = 2.0) -> AsyncGenerator[dict[str, StreamRegistration], None]:
        """The registrations now, then again after every change (at the latest every `poll` s).
        Waits out Redis outages. Stop by breaking out of the loop."""
        pubsub = None
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = self.client.pubsub()
                        await pubsub.subscribe(self.channel)
                    yield await self.all()
                    deadline = time.monotonic() + poll
                    while (left := deadline - time.monotonic()) > 0:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                        if message is not None:
                            break
                except CONNECTION_ERRORS as exc:
                    log.debug("following the stream registry: redis unreachable (%s)", exc)
                    if pubsub is not None:
                        await _close_quietly(pubsub)
                        pubsub = None
                    await asyncio.sleep(min(poll, 1.0))
        finally:
            if pubsub is not None:
                await _close_quietly(pubsub)


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception as exc:  # closing a broken connection: nothing to do about it
        log.debug("closing a pub/sub connection: %s", exc)
