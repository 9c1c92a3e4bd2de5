"""Watches: the event life cycle (pure), registration in Redis, tick scheduling across workers (never
twice, none skipped silently, lag), the durable event log and its live channel."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from flashlive.memory.events import EventLog, WatchState, due, step
from flashlive.memory.messages import ClipSpan, Event, Watch
from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.memory.watches import TickScheduler, WatchStore

ENC = "fake@test"


def span(i: int) -> ClipSpan:
    return ClipSpan(id=f"{i * 4000}-1", start=4.0 * i, end=4.0 * i + 4.0)


def run(watch: Watch, scores: list[float]) -> list[tuple[int, str]]:
    """Feed one score per clip through the state machine; (clip index, event kind) of what it emits."""
    state, out = WatchState(), list[tuple[int, str]]()
    for i, score in enumerate(scores):
        if not due(watch, state, span(i)):
            continue
        state, event = step(watch, state, score, span(i))
        if event is not None:
            out.append((i, event.kind))
    return out


def test_lifecycle_start_update_end_after_cooldown() -> None:
    w = Watch(stream="s", condition="a person", threshold=0.6, cooldown=8.0)
    scores = [0.1, 0.7, 0.9, 0.2, 0.8, 0.1, 0.1, 0.1, 0.95, 0.0, 0.0]
    # clip 3 is below but 4 s after the last clip above (inside the cooldown): the occurrence goes on;
    # clip 6 ends 8 s after clip 4, the last one above: end. The same again for 8 -> 10.
    expected = [(1, "start"), (2, "update"), (4, "update"), (6, "end"), (8, "start"), (10, "end")]
    assert run(w, scores) == expected


def test_lifecycle_cooldown_zero_ends_at_once_and_threshold_is_inclusive() -> None:
    w = Watch(stream="s", condition="c", threshold=0.5, cooldown=0)
    assert run(w, [0.5, 0.49, 0.5]) == [(0, "start"), (1, "end"), (2, "start")]


def test_lifecycle_event_fields_follow_the_occurrence() -> None:
    w = Watch(stream="s", condition="smoke", threshold=0.5, cooldown=0)
    state = WatchState()
    state, start = step(w, state, 0.6, span(3))
    state, update = step(w, state, 0.9, span(4))
    state, _ = step(w, state, 0.7, span(5))
    state, end = step(w, state, 0.1, span(6))
    assert start is not None and update is not None and end is not None
    assert start.id == update.id == end.id and start.started == end.started == 12.0
    assert end.peak == 0.9 and end.thumbnail == span(4).id and end.kind == "end"
    assert not state.active and state.evaluations == 4


def test_cadence_in_seconds_skips_ticks_in_between() -> None:
    w = Watch(stream="s", condition="c", threshold=0.5, cadence=12.0, cooldown=0)
    assert run(w, [0.9] * 10) == [(0, "start"), (3, "update"), (6, "update"), (9, "update")]


@pytest.fixture
def env(memory: VideoMemory) -> tuple[VideoMemory, WatchStore, TickScheduler]:
    return (
        memory,
        WatchStore(memory.client, prefix=memory.prefix),
        TickScheduler(memory.client, prefix=memory.prefix),
    )


async def append(memory: VideoMemory, stream: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        await memory.append(Clip(stream, 4.0 * i, 4.0 * i + 4.0, 4, np.zeros((4, 4), np.float16), ENC))


async def test_watch_store_add_list_delete_and_survive_restart(
    env: tuple[VideoMemory, WatchStore, TickScheduler], redis_server: RedisServer
) -> None:
    _, store, _ = env
    a = await store.add(Watch(stream="door", condition="a person at the door", created=1))
    b = await store.add(Watch(stream="yard", condition="a dog", cadence=10, created=2))
    assert [w.id for w in await store.all()] == [a.id, b.id]
    assert await store.all("door") == [a] and await store.streams() == ["door", "yard"]
    redis_server.restart()
    assert await store.get(b.id) == b
    with pytest.raises(ValueError, match="already exists on stream"):
        await store.add(a.model_copy(update={"stream": "yard"}))
    assert await store.delete(a.id) == a
    assert await store.delete(a.id) is None
    assert await store.all() == [b] and await store.streams() == ["yard"]


async def test_first_tick_is_the_newest_clip_then_each_clip_in_order(
    env: tuple[VideoMemory, WatchStore, TickScheduler],
) -> None:
    memory, store, ticks = env
    await append(memory, "cam", 0, 5)
    await store.add(Watch(stream="cam", condition="c"))
    tick = await ticks.claim("cam", "w1")
    assert tick is not None and tick.clip_id == "16000-1"
    assert await ticks.claim("cam", "w2") is None  # one tick of a stream at a time
    assert await ticks.complete(tick, 20.0, [], []) == []
    assert await ticks.claim("cam", "w2") is None  # caught up
    assert (await ticks.lag("cam")).lag == 0
    await append(memory, "cam", 5, 3)
    assert (await ticks.lag("cam")).lag == 12.0
    got = []
    while (t := await ticks.claim("cam", "w2")) is not None:
        got.append(t.clip_id)
        await ticks.complete(t, 0.0, [], [])
    assert got == ["20000-1", "24000-1", "28000-1"]


async def test_a_watch_registered_on_a_stopped_stream_is_evaluated_at_once(
    env: tuple[VideoMemory, WatchStore, TickScheduler],
) -> None:
    """The stream's newest clip was evaluated and no clip comes after it: registering a watch ticks
    that clip again, once, for the watches not evaluated at it."""
    memory, store, ticks = env
    await append(memory, "cam", 0, 3)
    first = await store.add(Watch(stream="cam", condition="a", threshold=0.5, cooldown=0))
    tick = await ticks.claim("cam", "w1")
    assert tick is not None and tick.clip_id == "8000-1"
    state, _ = step(first, WatchState(), 0.9, span(2))
    await ticks.complete(tick, 12.0, [(first.id, state)], [])
    assert await ticks.claim("cam", "w1") is None  # caught up; the stream is stopped

    second = await store.add(Watch(stream="cam", condition="b", threshold=0.5, cooldown=0))
    again = await ticks.claim("cam", "w2")
    assert again is not None and again.clip_id == "8000-1" and not again.reclaimed
    states = await store.states("cam")
    # at that clip, only the new watch is due
    assert not due(first, states[first.id], span(2)) and due(second, WatchState(), span(2))
    await ticks.complete(again, 12.0, [], [])
    assert await ticks.claim("cam", "w2") is None  # once

    # registered while a tick is in flight (it may have read the watches before): that clip again
    await append(memory, "cam", 3, 1)
    held = await ticks.claim("cam", "w1")
    assert held is not None and held.clip_id == "12000-1"
    await store.add(Watch(stream="cam", condition="c"))
    assert await ticks.claim("cam", "w2") is None  # busy
    await ticks.complete(held, 16.0, [], [])
    late = await ticks.claim("cam", "w2")
    assert late is not None and late.clip_id == "12000-1"
    await ticks.complete(late, 16.0, [], [])

    # registered before new clips arrive: the next clip's tick evaluates it, nothing is ticked twice
    await store.add(Watch(stream="cam", condition="d"))
    await append(memory, "cam", 4, 1)
    nxt = await ticks.claim("cam", "w1")
    assert nxt is not None and nxt.clip_id == "16000-1"
    await ticks.complete(nxt, 20.0, [], [])
    assert await ticks.claim("cam", "w1") is None
    lag = await ticks.lag("cam")
    assert (lag.evaluated, lag.reclaimed, lag.skipped, lag.lag) == (5, 0, 0, 0)


def test_a_watch_is_never_due_twice_at_one_clip() -> None:
    every_clip = Watch(stream="s", condition="c")
    state, _ = step(every_clip, WatchState(), 0.3, span(4))
    assert not due(every_clip, state, span(4)) and due(every_clip, state, span(5))


async def test_many_workers_evaluate_each_tick_exactly_once(
    env: tuple[VideoMemory, WatchStore, TickScheduler],
) -> None:
    memory, store, ticks = env
    await append(memory, "cam", 0, 1)
    await store.add(Watch(stream="cam", condition="c"))
    evaluated: list[str] = []

    async def worker(name: str) -> None:
        idle = 0
        while idle < 20:
            tick = await ticks.claim("cam", name)
            if tick is None:
                idle += 1
                await asyncio.sleep(0.005)
                continue
            idle = 0
            evaluated.append(tick.clip_id)
            await asyncio.sleep(random.random() * 0.003)
            assert await ticks.complete(tick, 0.0, [], []) is not None

    async def camera() -> None:
        for i in range(1, 40):
            await append(memory, "cam", i, 1)
            await asyncio.sleep(0.002)

    await asyncio.gather(camera(), *(worker(f"w{k}") for k in range(3)))
    assert evaluated == [f"{i * 4000}-1" for i in range(40)]
    lag = await ticks.lag("cam")
    assert lag.evaluated == 40 and lag.lag == 0 and lag.skipped == 0


async def test_a_tick_of_a_frozen_worker_is_taken_over_and_its_late_result_dropped(
    env: tuple[VideoMemory, WatchStore, TickScheduler],
) -> None:
    memory, store, _ = env
    ticks = TickScheduler(memory.client, prefix=memory.prefix, lease=0.2)
    await append(memory, "cam", 0, 3)
    w = await store.add(Watch(stream="cam", condition="c", threshold=0.5, cooldown=0))
    frozen = await ticks.claim("cam", "frozen")
    assert frozen is not None
    assert await ticks.claim("cam", "other") is None
    await asyncio.sleep(0.3)
    rescue = await ticks.claim("cam", "other")
    assert rescue is not None and rescue.clip_id == frozen.clip_id and rescue.reclaimed
    assert not await ticks.extend(frozen)
    state, event = step(w, WatchState(), 0.9, span(2))
    assert event is not None
    assert await ticks.complete(frozen, 12.0, [(w.id, state)], [event]) is None  # nothing written
    ids = await ticks.complete(rescue, 12.0, [(w.id, state)], [event])
    assert ids is not None and len(ids) == 1
    log = EventLog(memory.client, prefix=memory.prefix)
    assert [e.kind for _, e in await log.read("cam")] == ["start"]
    assert (await store.states("cam"))[w.id].active
    assert (await ticks.lag("cam")).reclaimed == 1


async def test_max_lag_skips_to_the_newest_clip_and_counts_it(memory: VideoMemory) -> None:
    store = WatchStore(memory.client, prefix=memory.prefix)
    ticks = TickScheduler(memory.client, prefix=memory.prefix, max_lag=10.0)
    await append(memory, "cam", 0, 2)
    await store.add(Watch(stream="cam", condition="c"))
    tick = await ticks.claim("cam", "w")
    assert tick is not None
    await ticks.complete(tick, 8.0, [], [])
    await append(memory, "cam", 2, 10)  # 40 s of clips arrive while nobody evaluates
    tick = await ticks.claim("cam", "w")
    assert tick is not None and tick.clip_id == "44000-1" and tick.skipped == 9
    await ticks.complete(tick, 48.0, [], [])
    assert (await ticks.lag("cam")).skipped == 9


async def test_event_reader_restarted_midway_misses_and_repeats_nothing(
    env: tuple[VideoMemory, WatchStore, TickScheduler],
) -> None:
    memory, store, ticks = env
    log = EventLog(memory.client, prefix=memory.prefix)
    await append(memory, "cam", 0, 1)
    w = await store.add(Watch(stream="cam", condition="c", threshold=0.5, cooldown=4))
    scores = iter([0.9, 0.9, 0.1, 0.1, 0.8, 0.2, 0.2, 0.9, 0.9, 0.0, 0.0])
    live: list[tuple[str, Event]] = []

    async def listen() -> None:
        async for item in log.live():
            live.append(item)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.1)

    async def evaluate_all() -> None:
        while (tick := await ticks.claim("cam", "w")) is not None:
            i = int(tick.clip_id.split("-")[0]) // 4000
            state = (await store.states("cam")).get(w.id, WatchState())
            state, event = step(w, state, next(scores), span(i))
            await ticks.complete(tick, span(i).end, [(w.id, state)], [event] if event else [])

    seen: list[tuple[str, str]] = []
    cursor = "0-0"

    async def read_some(total: int) -> None:
        nonlocal cursor
        reader = log.follow({"cam": cursor}, block=0.2)
        async for _stream, eid, event in reader:
            seen.append((eid, event.kind))
            cursor = eid
            if len(seen) >= total:
                break
        await reader.aclose()

    for i in range(1, 6):
        await append(memory, "cam", i, 1)
        await evaluate_all()
    await read_some(2)  # the reader stops here (a page closed, a process restarted)
    for i in range(6, 11):
        await append(memory, "cam", i, 1)
        await evaluate_all()
    await read_some(8)  # a new reader resumes from the last id the first one saw
    assert [k for _, k in seen] == ["start", "update", "end", "start", "end", "start", "update", "end"]
    history = await log.read("cam")
    assert [(eid, e.kind) for eid, e in history] == seen
    await asyncio.sleep(0.1)
    listener.cancel()
    assert [eid for eid, _ in live] == [eid for eid, _ in seen]
    # paging from the middle returns exactly the rest
    assert await log.read("cam", after=history[2][0]) == history[3:]


async def test_deleting_a_watch_ends_its_open_event(
    env: tuple[VideoMemory, WatchStore, TickScheduler],
) -> None:
    memory, store, ticks = env
    await append(memory, "cam", 0, 1)
    w = await store.add(Watch(stream="cam", condition="c", threshold=0.1))
    tick = await ticks.claim("cam", "w")
    assert tick is not None
    state, event = step(w, WatchState(), 0.9, span(0))
    assert event is not None
    await ticks.complete(tick, 4.0, [(w.id, state)], [event])
    await store.delete(w.id)
    events = await EventLog(memory.client, prefix=memory.prefix).read("cam")
    assert [e.kind for _, e in events] == ["start", "end"] and events[0][1].id == events[1][1].id
    # a tick finishing after the delete writes no state or event for the removed watch
    await append(memory, "cam", 1, 1)
    await store.add(Watch(stream="cam", condition="other"))
    tick = await ticks.claim("cam", "w")
    assert tick is not None
    _, again = step(w, state, 0.9, span(1))
    assert again is not None
    assert await ticks.complete(tick, 8.0, [(w.id, state)], [again]) == []
    assert w.id not in await store.states("cam")
