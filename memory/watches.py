"""Standing questions ("watches") in Redis, and the scheduling of their ticks across workers.

`WatchStore`: register, list, get and delete watches by id. They live in Redis (`fl:{cam}:watches`,
plus the index `fl:watches` id -> stream), so they survive restarts of every process.

`TickScheduler`: a *tick* is one evaluation of a stream's watches at one clip. Each stream has a tick
cursor (`fl:{cam}:ticks`): the last clip evaluated (`done`) and at most one clip being evaluated
(`inflight`, with its worker and a lease). Claiming is one script (compare-and-set on the cursor), so:

- a tick is never evaluated by two workers: only the holder of `inflight` may complete it, and the
  completion (states, events, cursor advance) is one script that checks the holder;
- none is skipped silently: clips are taken in order, one after the other; a tick whose worker died
  or froze is claimed again after its lease (the same clip); a tick that cannot be evaluated (its clip
  was trimmed, the model failed) is counted in `failed`; and with `max_lag` set, a scheduler that is
  more than `max_lag` seconds behind jumps to the newest clip and counts what it jumped over in
  `skipped`. `lag()` reports how far behind evaluation is (newest clip end - last evaluated clip end).

Every script touches only keys of the stream's hash tag (Redis Cluster safe). Watches of one stream are
evaluated one tick at a time (in order, so the event life cycle sees time move forward); different
streams are evaluated in parallel by different workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from flashlive.memory.events import EventLog, WatchState, end_event, states_json
from flashlive.memory.keys import (
    DEFAULT_PREFIX,
    WatchKeys,
    check_stream_name,
    events_channel,
    watch_index_key,
)
from flashlive.memory.messages import Event, MessageError, Watch, parse_watch
from flashlive.memory.queue_scripts import TICK_CLAIM, TICK_COMPLETE, TICK_EXTEND, TICK_INIT

log = logging.getLogger(__name__)

DEFAULT_TICK_LEASE = 30.0  # s without an extension before another worker takes a tick over
MAX_WATCHES_PER_STREAM = 256


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class WatchLimitError(ValueError):
    """Too many watches on one stream."""


class WatchStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.index = watch_index_key(prefix)
        self._init = client.register_script(TICK_INIT)

    def keys(self, stream: str) -> WatchKeys:
        return WatchKeys(self.prefix, check_stream_name(stream))

    async def add(self, watch: Watch) -> Watch:
        """Store (or replace, same id) a watch. It is evaluated at once over the window ending with the
        stream's newest clip (when it has one, also on a stream that gets no new clips), then at every
        clip after it. The stream need not exist yet (a camera not yet online)."""
        keys = self.keys(watch.stream)
        existing = await self.get(watch.id)
        if existing is not None and existing.stream != watch.stream:
            raise ValueError(f"watch {watch.id!r} already exists on stream {existing.stream!r}")
        if existing is None and await self.client.hlen(keys.watches) >= MAX_WATCHES_PER_STREAM:
            raise WatchLimitError(f"stream {watch.stream!r} has {MAX_WATCHES_PER_STREAM} watches already")
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.watches, watch.id, watch.dumps())
            if existing is None:
                pipe.hdel(keys.states, watch.id)
            await pipe.execute()
        await self._init(keys=[keys.ticks, keys.clips])
        await self.client.hset(self.index, watch.id, watch.stream)
        return watch

    async def get(self, watch_id: str) -> Watch | None:
        stream = _s(await self.client.hget(self.index, watch_id))
        if not stream:
            return None
        raw = await self.client.hget(self.keys(stream).watches, watch_id)
        return self._decode(raw, watch_id) if raw is not None else None

    async def all(self, stream: str | None = None) -> list[Watch]:
        """Watches of one stream, or of all streams; by creation time."""
        streams = [stream] if stream is not None else await self.streams()
        out: list[Watch] = []
        for name in streams:
            for wid, raw in (await self.client.hgetall(self.keys(name).watches)).items():
                watch = self._decode(raw, _s(wid))
                if watch is not None:
                    out.append(watch)
        return sorted(out, key=lambda w: (w.created, w.id))

    async def streams(self) -> list[str]:
        """Streams that have watches (what workers schedule ticks for)."""
        return sorted({_s(s) for s in await self.client.hvals(self.index)})

    async def delete(self, watch_id: str) -> Watch | None:
        """Remove a watch and its state; an occurrence still open gets its `end` event. Returns the
        removed watch, None if there was none."""
        watch = await self.get(watch_id)
        if watch is None:
            await self.client.hdel(self.index, watch_id)
            return None
        keys = self.keys(watch.stream)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(keys.states, watch_id)
            pipe.hdel(keys.watches, watch_id)
            pipe.hdel(keys.states, watch_id)
            raw_state, _, _ = await pipe.execute()
        await self.client.hdel(self.index, watch_id)
        if raw_state is not None:
            event = end_event(watch, WatchState.model_validate_json(raw_state))
            if event is not None:
                await EventLog(self.client, prefix=self.prefix).append(event)
        return watch

    async def states(self, stream: str) -> dict[str, WatchState]:
        raw = await self.client.hgetall(self.keys(stream).states)
        out = {}
        for wid, value in raw.items():
            try:
                out[_s(wid)] = WatchState.model_validate_json(value)
            except ValidationError as exc:
                log.error("resetting the unreadable state of watch %s: %s", _s(wid), exc)
        return out

    def _decode(self, raw: bytes | str, watch_id: str) -> Watch | None:
        try:
            return parse_watch(raw)
        except MessageError as exc:
            log.error("skipping stored watch %s: %s", watch_id, exc)
            return None


@dataclass(frozen=True)
class Tick:
    """One stream's watches to evaluate at one clip, held by `owner` until completed or its lease ends."""

    stream: str
    clip_id: str
    owner: str
    reclaimed: bool  # its previous holder died or froze
    skipped: int  # clips jumped over before it (max_lag rule)


@dataclass(frozen=True)
class TickLag:
    stream: str
    newest_end: float | None  # end of the stream's newest clip
    evaluated_end: float | None  # end of the last clip whose tick completed
    lag: float  # seconds of stream time not evaluated yet (0 when caught up)
    inflight: str  # clip id being evaluated, "" if none
    evaluated: int
    failed: int
    skipped: int
    reclaimed: int


class TickScheduler:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease: float = DEFAULT_TICK_LEASE,
        max_lag: float = 0.0,
        events_maxlen: int = 10_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self.max_lag = max_lag
        self.events_maxlen = events_maxlen
        self.channel = events_channel(prefix)
        self._claim = client.register_script(TICK_CLAIM)
        self._extend = client.register_script(TICK_EXTEND)
        self._complete = client.register_script(TICK_COMPLETE)

    def keys(self, stream: str) -> WatchKeys:
        return WatchKeys(self.prefix, check_stream_name(stream))

    async def claim(self, stream: str, worker: str) -> Tick | None:
        """The stream's next tick for `worker`, or None (caught up, or another worker holds one)."""
        keys = self.keys(stream)
        reply = await self._claim(
            keys=[keys.ticks, keys.clips],
            args=[worker, round(time.time() * 1000), round(self.lease * 1000), round(self.max_lag * 1000)],
        )
        if _s(reply[0]) != "claimed":
            return None
        tick = Tick(stream, _s(reply[1]), worker, _s(reply[2]) == "1", int(_s(reply[3])))
        if tick.skipped:
            log.warning("%s: watches %d clips behind: skipped to the newest clip", stream, tick.skipped)
        return tick

    async def extend(self, tick: Tick) -> bool:
        """Renew the lease of a tick still being evaluated; False if another worker took it over."""
        keys = self.keys(tick.stream)
        ok = await self._extend(
            keys=[keys.ticks],
            args=[tick.owner, tick.clip_id, round(time.time() * 1000), round(self.lease * 1000)],
        )
        return bool(ok)

    async def complete(
        self,
        tick: Tick,
        clip_end: float,
        states: Sequence[tuple[str, WatchState]],
        events: Sequence[Event],
        *,
        failed: bool = False,
    ) -> list[str] | None:
        """Write the tick's new watch states and events, advance the cursor; one atomic step.

        Returns the event entry ids, or None when this worker no longer holds the tick (its lease
        ran out and another worker took it: nothing is written)."""
        keys = self.keys(tick.stream)
        args: list[str | int | float] = [
            tick.owner, tick.clip_id, repr(clip_end), "failed" if failed else "evaluated",
            self.events_maxlen, self.channel, len(states), *states_json(states),
        ]  # fmt: skip
        for event in events:
            args += [event.watch, event.dumps()]
        reply = await self._complete(keys=[keys.ticks, keys.watches, keys.states, keys.events], args=args)
        if _s(reply[0]) != "ok":
            log.warning(
                "%s: tick at %s was taken over by another worker; result dropped", tick.stream, tick.clip_id
            )
            return None
        return [_s(x) for x in reply[1:]]

    async def lag(self, stream: str) -> TickLag:
        """How far the stream's watch evaluation is behind its newest clip, and the tick counters."""
        keys = self.keys(stream)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.ticks)
            pipe.hget(keys.meta, "last_end")
            raw, last_end = await pipe.execute()
        f = {_s(k): _s(v) for k, v in raw.items()}
        newest = float(_s(last_end)) if last_end else None
        done = float(f["done_end"]) if f.get("done_end") else None
        lag = 0.0
        if newest is not None and f.get("done"):
            after: Any = await self.client.xrange(keys.clips, f"({f['done']}", "+", count=1)
            if after:  # something is not evaluated yet
                since = done if done is not None else float(_s(after[0][1][b"s"]))
                lag = max(0.0, newest - since)
        return TickLag(
            stream=stream, newest_end=newest, evaluated_end=done, lag=lag, inflight=f.get("inflight", ""),
            evaluated=int(f.get("evaluated", 0)), failed=int(f.get("failed", 0)),
            skipped=int(f.get("skipped", 0)), reclaimed=int(f.get("reclaimed", 0)),
        )  # fmt: skip
