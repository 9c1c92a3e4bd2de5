"""Watch events: the life cycle of one occurrence (a pure state machine) and the durable event log.

Life cycle, per watch (in the manner of Frigate's review items), evaluated at each tick in stream time:

    idle ──score >= threshold──► start ──score >= threshold──► update (every such tick)
      ▲                            │
      └── end ◄── below threshold for `cooldown` s of stream time (since the last tick above it)

A tick below the threshold inside the cooldown writes nothing; the occurrence continues if the score
comes back. `step` is pure (state in, state and event out), so it is tested without a model or Redis;
the worker persists the state in `fl:{cam}:watchstate` together with the tick (watches.py).

Events are written to `fl:{cam}:events` (a Stream: durable, clients resume from the last entry id they
saw) and published on `fl:events:live` (pub/sub: live push only, it may lose messages; catch up from
the stream).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, ValidationError

from flashlive.memory.cancellation import reraise_if_cancelling
from flashlive.memory.keys import DEFAULT_PREFIX, WatchKeys, check_stream_name, events_channel
from flashlive.memory.messages import ClipSpan, Event, MessageError, Watch, parse_event
from flashlive.memory.store import CONNECTION_ERRORS

log = logging.getLogger(__name__)

CADENCE_SLACK = 0.05  # s: clips come every ~4 s with jitter; "every 8 s" should not slip a tick


class WatchState(BaseModel):
    """What a watch remembers between ticks (persisted as JSON)."""

    model_config = ConfigDict(extra="forbid")

    active: bool = False
    event: str = ""  # id of the current occurrence
    started: float = 0.0  # stream time it started
    last_above: float = 0.0  # end of the last clip evaluated at or above the threshold
    peak: float = 0.0
    thumbnail: str = ""  # clip id of the peak
    last_eval: float | None = None  # end of the last clip evaluated (for second cadences)
    score: float | None = None  # at the last evaluation
    clip: ClipSpan | None = None  # the last clip evaluated
    evaluations: int = 0


def due(watch: Watch, state: WatchState, clip: ClipSpan) -> bool:
    """Whether `watch` is evaluated at a tick at `clip`: never twice at one clip (a stream's last clip
    is ticked again when a watch is registered, for that watch only)."""
    if state.clip is not None and state.clip.id == clip.id:
        return False
    if watch.cadence == "clip" or state.last_eval is None:
        return True
    return clip.end - state.last_eval >= float(watch.cadence) - CADENCE_SLACK


def step(
    watch: Watch, state: WatchState, score: float, clip: ClipSpan, *, now: float | None = None
) -> tuple[WatchState, Event | None]:
    """One evaluation of `watch` at `clip` with `score`: the next state and the event to write."""
    s = state.model_copy(
        update={"last_eval": clip.end, "score": score, "clip": clip, "evaluations": state.evaluations + 1}
    )
    above = score >= watch.threshold
    if above and not s.active:
        s.active, s.event, s.started = True, uuid.uuid4().hex, clip.start
        s.last_above, s.peak, s.thumbnail = clip.end, score, clip.id
        return s, _event(watch, s, "start", score, clip, now)
    if above:
        s.last_above = clip.end
        if score > s.peak:
            s.peak, s.thumbnail = score, clip.id
        return s, _event(watch, s, "update", score, clip, now)
    if s.active and clip.end - s.last_above >= watch.cooldown:
        event = _event(watch, s, "end", score, clip, now)
        s.active, s.event = False, ""
        return s, event
    return s, None


def end_event(watch: Watch, state: WatchState, *, now: float | None = None) -> Event | None:
    """The `end` of an open occurrence whose watch is being removed (None if none is open)."""
    if not state.active or state.clip is None:
        return None
    return _event(watch, state, "end", state.score or 0.0, state.clip, now)


def _event(watch: Watch, s: WatchState, kind: str, score: float, clip: ClipSpan, now: float | None) -> Event:
    fields = dict(
        id=s.event, watch=watch.id, stream=watch.stream, condition=watch.condition, kind=kind,
        score=score, peak=max(s.peak, score), threshold=watch.threshold, clip_id=clip.id,
        clip_start=clip.start, clip_end=clip.end, started=s.started, thumbnail=s.thumbnail or clip.id,
    )  # fmt: skip
    if now is not None:
        fields["time"] = now
    return Event.model_validate(fields)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(fields: Any, where: str) -> Event | None:
    try:
        return parse_event(fields.get(b"m", b""))
    except MessageError as exc:
        log.error("skipping an unreadable event %s: %s", where, exc)
        return None


class EventLog:
    """Reading (and, for removals, writing) the per-stream event streams."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = DEFAULT_PREFIX, maxlen: int = 10_000) -> None:
        self.client = client
        self.prefix = prefix
        self.maxlen = maxlen
        self.channel = events_channel(prefix)

    def key(self, stream: str) -> str:
        return WatchKeys(self.prefix, check_stream_name(stream)).events

    async def append(self, event: Event) -> str:
        """Write one event and publish it (used outside ticks: the end of a removed watch's event)."""
        data = event.dumps()
        eid = _s(
            await self.client.xadd(self.key(event.stream), {"m": data}, maxlen=self.maxlen, approximate=True)
        )
        await self.client.publish(self.channel, f'{{"id":"{eid}","event":{data}}}')
        return eid

    async def read(self, stream: str, *, after: str = "0-0", count: int = 100) -> list[tuple[str, Event]]:
        """Up to `count` events after entry id `after` (exclusive), oldest first: for paging history."""
        entries: Any = await self.client.xrange(self.key(stream), f"({after}", "+", count=count)
        out = []
        for eid, fields in entries:
            event = _decode(fields, _s(eid))
            if event is not None:
                out.append((_s(eid), event))
        return out

    async def latest(self, stream: str, count: int = 100) -> list[tuple[str, Event]]:
        """The newest `count` events, oldest first."""
        entries: Any = await self.client.xrevrange(self.key(stream), "+", "-", count=count)
        out = [(_s(eid), e) for eid, f in reversed(entries) if (e := _decode(f, _s(eid))) is not None]
        return out

    async def follow(
        self, after: dict[str, str], *, block: float = 1.0
    ) -> AsyncGenerator[tuple[str, str, Event], None]:
        """(stream, entry id, event) for events after the given id per stream ("0-0": from the start,
        "$": only new ones), forever. Reconnects when Redis goes away; nothing is missed or repeated
        because the cursor is the entry id. Stop by breaking out of the loop."""
        cursors = {self.key(s): (s, eid) for s, eid in after.items()}
        while True:
            try:
                reply: Any = await self.client.xread(
                    {k: eid for k, (_, eid) in cursors.items()}, count=256, block=max(1, round(block * 1000))
                )
            except CONNECTION_ERRORS as exc:
                reraise_if_cancelling(exc)
                log.debug("following events: redis unreachable (%s), retrying", exc)
                await asyncio.sleep(0.2)
                continue
            for key, entries in reply or []:
                key = _s(key)
                stream = cursors[key][0]
                for eid, fields in entries:
                    cursors[key] = (stream, _s(eid))
                    event = _decode(fields, _s(eid))
                    if event is not None:
                        yield stream, _s(eid), event

    async def live(self) -> AsyncGenerator[tuple[str, Event], None]:
        """(entry id, event) as published. Live push only: after a reconnect, catch up with `read`."""
        pubsub = self.client.pubsub()
        await pubsub.subscribe(self.channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    wrapped = _Live.model_validate_json(message["data"])
                except ValidationError as exc:
                    log.error("skipping an unreadable live event: %s", exc)
                    continue
                yield wrapped.id, wrapped.event
        finally:
            await pubsub.aclose()


class _Live(BaseModel):
    id: str
    event: Event


def states_json(states: Sequence[tuple[str, WatchState]]) -> list[str]:
    """Flatten (watch id, state) pairs for the tick script."""
    out: list[str] = []
    for wid, state in states:
        out += [wid, state.model_dump_json()]
    return out
