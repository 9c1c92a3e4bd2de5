"""What the routes share: one Redis connection pool and the memory-side objects built on it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from fastapi import Request

from flashlive.memory.events import EventLog
from flashlive.memory.jobs import JobQueue
from flashlive.memory.registry import StreamRegistry
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import VideoMemory, make_client
from flashlive.memory.watches import TickScheduler, WatchStore
from flashlive.web.hub import Hub
from flashlive.web.security import RateLimiter
from flashlive.web.settings import WebSettings


@dataclass
class Services:
    settings: WebSettings
    redis: RedisSettings
    client: aioredis.Redis
    memory: VideoMemory
    queue: JobQueue
    watches: WatchStore
    ticks: TickScheduler
    events: EventLog
    registry: StreamRegistry
    hub: Hub
    limiter: RateLimiter
    whip: bool  # POST /whip/{name} is served (in-process or proxied)
    background: set[object] = field(default_factory=set)  # fire-and-forget tasks (cancels)
    asks: Counter[str] = field(default_factory=Counter)  # questions submitted, by API (for /metrics)

    @classmethod
    def build(cls, settings: WebSettings, redis: RedisSettings, *, whip: bool) -> Services:
        client = make_client(redis)
        prefix = redis.prefix
        return cls(
            settings=settings,
            redis=redis,
            client=client,
            memory=VideoMemory(client, prefix=prefix),
            queue=JobQueue(client, prefix=prefix),
            watches=WatchStore(client, prefix=prefix),
            ticks=TickScheduler(client, prefix=prefix),
            events=EventLog(client, prefix=prefix),
            registry=StreamRegistry(client, prefix=prefix),
            hub=Hub(client, prefix=prefix),
            limiter=RateLimiter(settings.rate_limit.per_s, settings.rate_limit.burst),
            whip=whip,
        )

    async def close(self) -> None:
        await self.hub.stop()
        await self.client.aclose()


def services(request: Request) -> Services:
    """FastAPI dependency: the app's services (built in its lifespan)."""
    svc: Services = request.app.state.services
    return svc
