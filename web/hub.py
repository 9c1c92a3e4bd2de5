"""Live events to every WebSocket client from one Redis pub/sub subscription per web process.

Pub/sub is push only: a message published while this process was not subscribed (a Redis restart)
is not delivered. The events themselves are durable in each stream's events stream, so after a
reconnect the hub asks every subscriber to `resync` (catch up from the last id it delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

import redis.asyncio as aioredis
from pydantic import ValidationError

from flashlive.memory.keys import events_channel
from flashlive.memory.messages import Event
from flashlive.memory.store import CONNECTION_ERRORS

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    def offer(self, stream: str, entry_id: str, event: Event) -> None:
        """Take a live event; must not block (queue it)."""

    def resync(self) -> None:
        """Live messages may have been lost: catch up from the events streams."""


class Hub:
    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.client = client
        self.channel = events_channel(prefix)
        self.subscribers: set[Subscriber] = set()
        self.received = 0  # live events seen
        self.delivered = 0  # offers made to subscribers
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # subscribed (tests and benchmarks wait for it)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="events-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _run(self) -> None:
        first = True
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self.ready.set()
                if not first:
                    for sub in list(self.subscribers):
                        sub.resync()
                first = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._dispatch(message.get("data"))
            except CONNECTION_ERRORS as exc:
                self.ready.clear()
                log.warning("live events: redis unreachable (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, data: Any) -> None:
        try:
            wrapped = json.loads(data)
            entry_id = str(wrapped["id"])
            event = Event.model_validate(wrapped["event"])
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.error("skipping an unreadable live event: %s", exc)
            return
        self.received += 1
        for sub in list(self.subscribers):
            sub.offer(event.stream, entry_id, event)
            self.delivered += 1
