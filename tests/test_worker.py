"""The query worker against a real redis-server with the fake engine: answers with every field of the
final record, bad jobs answered with clear errors while it keeps serving, cancellation and deadlines
free it, watches raise events through it, and Redis restarted under it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_engine import ENCODER_ID, FakeEngine
from helpers import unique_prefix

from flashlive.memory.events import EventLog
from flashlive.memory.jobs import Delivery, JobQueue
from flashlive.memory.messages import (
    SCHEMA_VERSION,
    AskJob,
    DropoutSettings,
    ErrorCode,
    ErrorRecord,
    FinalRecord,
    Generation,
    Piece,
    Watch,
    Window,
)
from flashlive.memory.results import Record, collect
from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.memory.watches import TickScheduler, WatchStore
from flashlive.model.worker.service import Worker, WorkerSettings

FAST: dict[str, Any] = dict(
    heartbeat=0.1, lease=0.5, tick_lease=0.5, block=0.1, cancel_poll=0.05, watch_poll=0.05, drain=1.0
)


def clip(stream: str, i: int, value: float = 0.0, encoder: str = ENCODER_ID) -> Clip:
    """Clip i covers [4i, 4i + 4) s; its tokens all hold `value` (the fake engine's yes/no score)."""
    return Clip(stream, 4.0 * i, 4.0 * i + 4.0, 4, np.full((64, 8), value, np.float16), encoder)


@dataclass
class Env:
    memory: VideoMemory
    queue: JobQueue
    worker: Worker
    engine: FakeEngine

    async def ask(
        self, timeout: float = 10.0, **fields: object
    ) -> tuple[list[Record], FinalRecord | ErrorRecord]:
        job = AskJob.model_validate({"stream": "cam", "question": "What happens?", **fields})
        await self.queue.submit(job)
        return await collect(self.queue.client, job.id, prefix=self.queue.prefix, timeout=timeout)

    async def ask_raw(self, data: dict[str, object]) -> FinalRecord | ErrorRecord:
        await self.queue.submit_raw(json.dumps(data))
        # a raw message has no job state until the worker answers it: the reader would call it unknown
        results = self.queue.keys(str(data["id"])).results
        await wait_for(lambda: self.queue.client.exists(results))
        _, last = await collect(self.queue.client, str(data["id"]), prefix=self.queue.prefix, timeout=10)
        return last


async def start_env(url: str, engine: FakeEngine, **settings: object) -> tuple[Env, asyncio.Task[None]]:
    prefix = unique_prefix("k")
    memory = VideoMemory.from_url(url, prefix=prefix)
    queue = JobQueue.from_url(url, prefix=prefix)
    options: dict[str, Any] = {**FAST, **settings}
    worker = Worker.connect(engine, url, prefix=prefix, settings=WorkerSettings(**options))
    task = asyncio.create_task(worker.run())
    return Env(memory, queue, worker, engine), task


async def stop_env(env: Env, task: asyncio.Task[None]) -> None:
    env.worker.stop()
    await asyncio.wait_for(task, 10)
    await env.memory.close()
    await env.queue.close()


@pytest.fixture
async def env(redis_server: RedisServer, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    options = getattr(request, "param", {})
    engine = FakeEngine(**options.get("engine", {}))
    e, task = await start_env(redis_server.url, engine, **options.get("settings", {}))
    yield e
    await stop_env(e, task)


async def test_ask_streams_pieces_then_a_complete_final_record(env: Env) -> None:
    for i in range(10):
        await env.memory.append(clip("cam", i, value=0.9 if i == 9 else 0.1))
    records, final = await env.ask(window={"last": 20}, budget=8, dropout={})
    assert isinstance(final, FinalRecord), final
    pieces = [r for r in records if isinstance(r, Piece)]
    assert pieces and "".join(p.text for p in pieces) == final.answer
    assert [p.seq for p in pieces] == list(range(len(pieces))) and {p.attempt for p in pieces} == {1}
    # last 20 s before the newest end (40 s) = clips starting at 20..36; budget 8 frames = 2 clips
    assert [c.start for c in final.clips] == [20.0, 36.0]
    assert (final.used_start, final.used_end, final.frames) == (20.0, 40.0, 8)
    assert final.answer.startswith("2 clips from 20 to 40.")
    assert final.visual_tokens == [128, 96, 32]  # the recipe: ratios 0.75, 0.25 of 2 x 64
    assert final.dropout == DropoutSettings() and final.model == "fake" and final.worker == env.worker.name
    assert final.window == Window(last=20) and final.finish_reason == "stop"
    [ev] = final.evidence
    assert (ev.clip_id, ev.start, ev.end) == ("36000-1", 36.0, 40.0)  # the clip with most "attention"
    t = final.timings
    assert 0 <= t.queue_wait <= t.first_token <= t.total and t.memory_read > 0 and t.decode > 0
    assert t.tokens_per_s == pytest.approx(final.new_tokens / t.decode)


async def test_recent_keeps_the_newest_clips(env: Env) -> None:
    for i in range(20):
        await env.memory.append(clip("cam", i))
    _, final = await env.ask(budget=16, recent=2)
    assert isinstance(final, FinalRecord)
    assert [c.start for c in final.clips] == [0.0, 68.0, 72.0, 76.0]


async def test_max_new_tokens_gives_finish_reason_length(env: Env) -> None:
    await env.memory.append(clip("cam", 0))
    _, final = await env.ask(generation=Generation(max_new_tokens=2).model_dump())
    assert isinstance(final, FinalRecord) and final.finish_reason == "length"
    assert final.answer == "1 clips from 0"


@pytest.mark.parametrize("env", [{"engine": {"max_context": 600}}], indirect=True)
async def test_bad_jobs_get_clear_errors_and_the_worker_keeps_serving(env: Env) -> None:
    for i in range(20):
        await env.memory.append(clip("cam", i))
    await env.memory.append(clip("gap", 0))
    await env.memory.append(clip("gap", 100))
    await env.memory.append(clip("other", 0, encoder="another-model@224"))
    await env.memory.set_state("empty", "connecting")
    good = json.loads(AskJob(stream="cam", question="q").model_dump_json())

    def raw(**change: object) -> dict[str, object]:
        return {**good, "id": uuid.uuid4().hex, **change}

    cases: list[tuple[Callable[[], Awaitable[object]], ErrorCode, str]] = [
        (lambda: env.ask(stream="nowhere"), ErrorCode.UNKNOWN_STREAM, "unknown stream 'nowhere'"),
        (lambda: env.ask(stream="empty"), ErrorCode.EMPTY_MEMORY, "holds no clips yet"),
        (
            lambda: env.ask(window={"start": 1e6, "end": 1e6 + 60}),
            ErrorCode.WINDOW_OUTSIDE_MEMORY,
            "holds clips",
        ),
        (lambda: env.ask(stream="gap", window={"start": 10, "end": 20}), ErrorCode.WINDOW_EMPTY, "paused"),
        (lambda: env.ask(stream="other"), ErrorCode.ENCODER_MISMATCH, "another-model@224"),
        (lambda: env.ask(budget=4000), ErrorCode.CONTEXT_LIMIT, "context is 600"),
        (lambda: env.ask(budget=8, recent=5), ErrorCode.INVALID_REQUEST, "recent=5 clips"),
        (lambda: env.ask(dropout={"layers": [4, 30]}), ErrorCode.INVALID_REQUEST, "past the model"),
        (lambda: env.ask(question="please explode"), ErrorCode.INTERNAL, "RuntimeError"),
        (lambda: env.ask_raw(raw(budget=10**9)), ErrorCode.INVALID_MESSAGE, "budget"),
        (lambda: env.ask_raw(raw(budget="all", extra=1)), ErrorCode.INVALID_MESSAGE, "extra"),
        (lambda: env.ask_raw(raw(window={"start": 9, "end": 3})), ErrorCode.INVALID_MESSAGE, "window"),
        (lambda: env.ask_raw(raw(v=SCHEMA_VERSION + 1, shiny=True)), ErrorCode.UNSUPPORTED_VERSION, "newer"),
    ]
    for call, code, words in cases:
        result = await call()
        last = result[1] if isinstance(result, tuple) else result
        assert isinstance(last, ErrorRecord), (code, last)
        assert last.code == code and words in last.message, (code, last.message)
    await env.queue.submit_raw(b"\x00 not json at all")  # no id: nobody to answer; must not stop it
    _, final = await env.ask(budget=8)
    assert isinstance(final, FinalRecord)
    assert (await env.queue.depth()).waiting == 0  # every bad job was taken off the queue
    assert env.worker.outcomes["final"] == 1 and env.worker.outcomes[ErrorCode.INVALID_MESSAGE] == 4


@pytest.mark.parametrize(
    "env",
    [{"engine": {"step_s": 0.02, "length": 15}, "settings": {"concurrency": c}} for c in (1, 3)],
    indirect=True,
)
async def test_concurrency_is_the_number_of_answers_at_once(env: Env) -> None:
    await env.memory.append(clip("cam", 0))
    results = await asyncio.gather(*(env.ask(question=f"q{i}") for i in range(4)))
    assert all(isinstance(final, FinalRecord) for _, final in results)
    assert env.engine.max_active == env.worker.settings.concurrency


@pytest.mark.parametrize("env", [{"engine": {"step_s": 0.05, "length": 400}}], indirect=True)
async def test_cancel_frees_the_worker_within_a_step(env: Env) -> None:
    await env.memory.append(clip("cam", 0))
    job = AskJob(stream="cam", question="long story")
    await env.queue.submit(job)
    reader = aiter_records(env, job.id)
    first = await anext(reader)
    assert isinstance(first, Piece)
    steps = env.engine.steps
    t0 = time.monotonic()
    await env.queue.cancel(job.id)
    rest = [r async for r in reader]
    assert isinstance(rest[-1], ErrorRecord) and rest[-1].code == ErrorCode.CANCELLED
    assert time.monotonic() - t0 < 2.0
    assert env.engine.steps - steps < 20  # stopped after a few steps, not the 400 it would take
    env.engine.length = 3
    _, final = await env.ask(timeout=5)  # the only slot is free again
    assert isinstance(final, FinalRecord)


@pytest.mark.parametrize("env", [{"engine": {"step_s": 0.05, "length": 400}}], indirect=True)
async def test_deadline_frees_the_worker(env: Env) -> None:
    await env.memory.append(clip("cam", 0))
    now = time.time()
    t0 = time.monotonic()
    _, last = await env.ask(submitted=now, deadline=now + 0.6)
    assert isinstance(last, ErrorRecord) and last.code == ErrorCode.DEADLINE_EXCEEDED
    assert "deadline" in last.message and time.monotonic() - t0 < 3
    # a job already past its deadline in the queue is answered without running
    steps = env.engine.steps
    _, last = await env.ask(submitted=now - 10, deadline=now - 1)
    assert isinstance(last, ErrorRecord) and last.code == ErrorCode.DEADLINE_EXCEEDED
    assert env.engine.steps == steps


async def aiter_records(env: Env, job: str) -> AsyncIterator[Record]:
    from flashlive.memory.results import read_results

    async for _, record in read_results(env.queue.client, job, prefix=env.queue.prefix, timeout=10):
        yield record


async def test_watch_events_through_the_worker(env: Env) -> None:
    store = WatchStore(env.memory.client, prefix=env.memory.prefix)
    log = EventLog(env.memory.client, prefix=env.memory.prefix)
    ticks = TickScheduler(env.memory.client, prefix=env.memory.prefix)
    await env.memory.append(clip("door", 0, 0.1))
    w = await store.add(
        Watch(stream="door", condition="a person is at the door", window=2, threshold=0.5, cooldown=8)
    )
    other = await store.add(
        Watch(stream="door", condition="NOT a person", window=8, threshold=0.95, cooldown=0)
    )
    scores = [0.2, 0.8, 0.9, 0.1, 0.1, 0.1, 0.1, 0.0]  # clips 1..8
    for i, score in enumerate(scores, start=1):
        await env.memory.append(clip("door", i, score))
        await wait_for(partial(ticks_done, ticks, "door", i))
    events = [e for _, e in await log.read("door")]
    mine = [(e.kind, e.clip_start) for e in events if e.watch == w.id]
    # start at clip 2 (0.8), update at 3, below from 4 on; 8 s after clip 3's end (16 s) is clip 5's end
    assert mine == [("start", 8.0), ("update", 12.0), ("end", 20.0)]
    theirs = [(e.kind, e.clip_start) for e in events if e.watch == other.id]
    assert theirs == [("start", 32.0)]  # 1 - 0.0 >= 0.95 only at the last clip
    lag = await ticks.lag("door")
    assert lag.lag == 0 and lag.failed == 0 and lag.evaluated == 9
    assert env.engine.prefixes == 2 * 9  # one prefix per distinct window per tick, shared by watches


async def test_a_watch_added_to_a_stopped_stream_is_evaluated_at_once(env: Env) -> None:
    """docs/workers.md: a new watch is evaluated at once, also when its stream gets no new clip."""
    store = WatchStore(env.memory.client, prefix=env.memory.prefix)
    log = EventLog(env.memory.client, prefix=env.memory.prefix)
    for i in range(3):
        await env.memory.append(clip("door", i, 0.9))
    first = await store.add(Watch(stream="door", condition="a person", window=8, threshold=0.5))
    await wait_for(lambda: log.read("door"))
    second = await store.add(Watch(stream="door", condition="a parcel", window=8, threshold=0.5))

    async def second_fired() -> bool:
        return any(e.watch == second.id for _, e in await log.read("door"))

    await wait_for(second_fired)
    await asyncio.sleep(0.3)  # several idle polls of the worker: nothing more is evaluated
    events = [(e.watch, e.kind, e.clip_start) for _, e in await log.read("door")]
    assert events == [(first.id, "start", 8.0), (second.id, "start", 8.0)]
    states = await store.states("door")
    assert states[first.id].evaluations == 1 and states[second.id].evaluations == 1


async def test_a_failing_tick_is_counted_and_the_stream_moves_on(env: Env) -> None:
    store = WatchStore(env.memory.client, prefix=env.memory.prefix)
    ticks = TickScheduler(env.memory.client, prefix=env.memory.prefix)
    await env.memory.append(clip("cam", 0))
    bad = await store.add(Watch(stream="cam", condition="the model will explode"))
    await wait_for(partial(ticks_done, ticks, "cam", 0))
    assert (await ticks.lag("cam")).failed == 1
    await store.delete(bad.id)
    await store.add(Watch(stream="cam", condition="fine", threshold=0.0))
    await env.memory.append(clip("cam", 1))
    await wait_for(partial(ticks_done, ticks, "cam", 1))
    lag = await ticks.lag("cam")
    assert (lag.failed, lag.evaluated, lag.lag) == (1, 1, 0)
    [(_, event)] = await EventLog(env.memory.client, prefix=env.memory.prefix).read("cam")
    assert event.kind == "start" and event.clip_start == 4.0


async def test_a_job_that_keeps_killing_workers_is_given_up(redis_server: RedisServer) -> None:
    prefix = unique_prefix("p")
    queue = JobQueue.from_url(redis_server.url, prefix=prefix)
    memory = VideoMemory.from_url(redis_server.url, prefix=prefix)
    await memory.append(clip("cam", 0))
    job = AskJob(stream="cam", question="q")
    await queue.submit(job)
    await queue.read("victim-0", block=0.1)
    for k in range(1, 5):  # four more workers took it and died
        assert await queue.reclaim(f"victim-{k}", lease=0.0)
    await asyncio.sleep(0.6)  # idle past the worker's lease
    worker = Worker(FakeEngine(), memory, queue, WorkerSettings(**FAST))
    task = asyncio.create_task(worker.run())
    try:
        _, last = await collect(queue.client, job.id, prefix=prefix, timeout=10)
        assert isinstance(last, ErrorRecord) and last.code == ErrorCode.INTERNAL
        assert "started 5 times" in last.message
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await memory.close()
        await queue.close()


async def ticks_done(ticks: TickScheduler, stream: str, i: int) -> bool:
    return (await ticks.lag(stream)).evaluated_end == 4.0 * i + 4.0


async def wait_for(cond: Callable[[], Awaitable[object]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
async def test_redis_restarted_under_a_running_worker(tmp_path: Path) -> None:
    """A second redis-server of its own: restarted (clean) and killed (crash) while the worker runs,
    between jobs and in the middle of one."""
    engine = FakeEngine()
    with RedisServer(tmp_path / "redis", appendfsync="always") as server:
        env, task = await start_env(server.url, engine, heartbeat=0.2, lease=2.0, tick_lease=2.0)
        try:
            await env.memory.append(clip("cam", 0))
            _, final = await env.ask()
            assert isinstance(final, FinalRecord)
            server.restart()
            _, final = await env.ask(timeout=20)
            assert isinstance(final, FinalRecord)
            engine.step_s, engine.length = 0.02, 60  # about 1.2 s of decoding
            job = AskJob(stream="cam", question="slow")
            await env.queue.submit(job)
            reader = aiter_records(env, job.id)
            records = [await anext(reader)]
            await asyncio.to_thread(server.restart)  # mid-answer: its writes wait and go on
            records += [r async for r in reader]
            last = records[-1]
            assert isinstance(last, FinalRecord) and last.attempt == 1
            assert "".join(r.text for r in records if isinstance(r, Piece)) == last.answer  # nothing lost
            assert len(last.answer.split()) == 63
            engine.step_s, engine.length = 0.0, 8
            server.kill()
            await asyncio.sleep(1.0)  # the worker's loops meet the dead server and wait
            server.start()
            _, final = await env.ask(timeout=20)
            assert isinstance(final, FinalRecord) and final.attempt == 1

            async def alive() -> bool:  # its heartbeat expired while Redis was down; it comes back
                return [w.name for w in await env.queue.workers()] == [env.worker.name]

            await wait_for(alive)
        finally:
            await stop_env(env, task)


async def test_release_sampling_applies_chat_rule_to_the_window(env: Env) -> None:
    for i in range(20):  # 80 s at 1 fps: 80 frames of 4-frame clips
        await env.memory.append(clip("cam", i))
    _, final = await env.ask(window={"last": 40}, sampling="release")
    assert isinstance(final, FinalRecord), final
    # 10 clips = 40 frames: N = 8 * floor(40 / 8) = 40, the minimum 64 drops to what the window has
    assert final.sampling == "release" and final.frames == 40 and len(final.clips) == 10
    assert final.file_frames == 64  # what chat() takes from a 40 s file: the memory cannot give it
    assert env.engine.durations[-1] == 40.0  # the time message states the whole window
    _, final = await env.ask(sampling="release", budget=8)  # the budget is chat()'s maximum
    assert isinstance(final, FinalRecord) and final.frames == 64 and len(final.clips) == 16  # min wins
    # middles of 16 equal intervals of the 20 clips
    assert [c.start for c in final.clips] == [
        4.0 * i for i in (0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18)
    ]
    _, final = await env.ask(window={"last": 4}, sampling="release")  # one clip: padded, as chat() pads
    assert isinstance(final, FinalRecord)
    assert [c.start for c in final.clips] == [76.0, 76.0] and final.frames == 8
    assert [e.clip_id for e in final.evidence] == ["76000-1"]  # cited once
    _, last = await env.ask(sampling="release", budget=30)
    assert (
        isinstance(last, ErrorRecord)
        and last.code == ErrorCode.INVALID_REQUEST
        and "multiple of 4" in last.message
    )
    _, final = await env.ask(window={"last": 8})  # uniform: the default, states the clips' span
    assert isinstance(final, FinalRecord) and final.sampling == "uniform" and final.file_frames is None
    assert env.engine.durations[-1] is None


@pytest.mark.parametrize(
    "env",
    # a heartbeat every 50 ms and a slow decode step: heartbeats fall between the halt and the job's
    # end, the window where a touch after the hand-back would make the job look busy for 30 s
    [{"engine": {"step_s": 0.25, "length": 400}, "settings": {"drain": 0.3, "lease": 30, "heartbeat": 0.05}}],
    indirect=True,
)
async def test_stop_hands_a_running_job_back_at_once(env: Env) -> None:
    await env.memory.append(clip("cam", 0))
    job = AskJob(stream="cam", question="long story")
    await env.queue.submit(job)
    reader = aiter_records(env, job.id)
    assert isinstance(await anext(reader), Piece)
    t0 = time.monotonic()
    env.worker.stop()

    async def idle() -> bool:
        return not env.worker.running

    await wait_for(idle, timeout=3)
    assert time.monotonic() - t0 < 1.5  # the drain (0.3 s) and one decode step, not the whole answer
    # handed back: another worker takes it over at once, though the lease is 30 s. The jobs leave
    # `running` as they halt, while the hand-back's write may still be on its way: poll briefly.
    claimed: list[Delivery] = []

    async def handed_back() -> bool:
        claimed[:] = await env.queue.reclaim("other", lease=30)
        return bool(claimed)

    await wait_for(handed_back, timeout=2)
    [taken] = claimed
    assert taken.entry_id and (await env.queue.status(job.id)).status == "running"  # type: ignore[union-attr]
