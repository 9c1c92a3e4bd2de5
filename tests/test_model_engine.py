"""The worker's Engine protocol on the real (tiny) model: answers, concurrent jobs sharing decode steps,
stopping within a step, request errors; and one ask and one watch through a worker and a real Redis."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from helpers import unique_prefix

from flashlive.memory.events import EventLog
from flashlive.memory.jobs import JobQueue
from flashlive.memory.messages import AskJob, DropoutSettings, FinalRecord, Generation, Piece, Watch
from flashlive.memory.results import collect
from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.memory.watches import TickScheduler, WatchStore
from flashlive.model.engine import Engine, PrefixHandle
from flashlive.model.worker.engine import ContextLimitError, EngineRequestError, EngineStopped
from flashlive.model.worker.model_engine import ModelEngine
from flashlive.model.worker.service import Worker, WorkerSettings

RECIPE_ON_TINY = DropoutSettings(layers=[1, 3])  # the model card's ratios on the 4-layer tiny LLM


@pytest.fixture(scope="module")
def model() -> ModelEngine:
    return ModelEngine(Engine.load("tiny"))


def clips(model: ModelEngine, n: int, stream: str = "cam", seed: int = 0, t0: float = 0.0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    width = model.engine.cfg.vision.width
    return [
        Clip(
            stream,
            t0 + 4 * i,
            t0 + 4 * i + 4,
            4,
            (rng.standard_normal((64, width))).astype(np.float16),
            model.encoder_id,
        )
        for i in range(n)
    ]


def never() -> bool:
    return False


def test_an_answer_reports_what_the_worker_records(model: ModelEngine) -> None:
    prefix = model.prefix(clips(model, 5), RECIPE_ON_TINY)
    run = model.answer(prefix, "What happens?", generation=Generation(max_new_tokens=6), should_stop=never)
    text = "".join(run)
    out = run.outcome
    assert out.text == text and out.finish_reason in ("stop", "length") and 0 < out.new_tokens <= 6
    assert out.visual_tokens == [320, 240, 80]
    assert out.evidence and all(0 <= i < 5 and 0 < s <= 1 for i, s in out.evidence)
    assert set(out.timings) == {"projector", "prefill", "first_token", "decode"}
    assert out.timings["first_token"] >= out.timings["prefill"] > 0
    assert not model.engine.has_unfinished()


@pytest.mark.slow
def test_concurrent_jobs_share_decode_steps(model: ModelEngine) -> None:
    windows = [clips(model, 4, seed=1), clips(model, 6, stream="yard", seed=2)]
    generation = Generation(max_new_tokens=8)

    def one(i: int, start: threading.Barrier | None) -> str:
        prefix = model.prefix(windows[i], None)
        run = model.answer(prefix, f"What happens in part {i}?", generation=generation, should_stop=never)
        if start is not None:
            start.wait()
        return "".join(run)

    alone = [one(0, None), one(1, None)]
    model.max_running = 0
    start = threading.Barrier(2)
    together: list[str] = ["", ""]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, one(i, start))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone
    assert model.max_running == 2  # both answers advanced in the same decode steps
    assert not model.engine.has_unfinished()


def test_should_stop_frees_the_engine_within_a_step(model: ModelEngine) -> None:
    prefix = model.prefix(clips(model, 3), None)
    pieces: list[str] = []
    run = model.answer(
        prefix,
        "Describe it.",
        generation=Generation(max_new_tokens=200),
        should_stop=lambda: len(pieces) >= 2,
    )
    for piece in run:
        pieces.append(piece)
    assert run.outcome.finish_reason == "stopped" and run.outcome.new_tokens <= 3
    assert not model.engine.has_unfinished()


def test_the_recipe_without_layers_takes_the_models_depths(model: ModelEngine) -> None:
    # `{}` (the page's dropout box, `flashlive ask --dropout recipe`): [4, 18] of 28 -> [1, 3] of 4
    assert model.dropout_config(DropoutSettings()).layers == (1, 3)
    assert model.dropout_config(DropoutSettings(mode="attention", ratios=[1, 0.5, 0.125])).layers == (1, 3)
    assert model.dropout_config(DropoutSettings(layers=[2], ratios=[1, 0.5])).layers == (2,)
    window = clips(model, 3)
    recipe = model.prefix(window, DropoutSettings())
    assert recipe.handle is model.prefix(window, RECIPE_ON_TINY).handle  # the same dropout, one prefix
    assert recipe.handle.visual_kept == [144, 48]


def test_requests_the_model_cannot_serve(model: ModelEngine) -> None:
    good = clips(model, 2)
    other = [Clip(c.stream, c.start, c.end, c.frames, c.tokens, "another-encoder") for c in good]
    with pytest.raises(EngineRequestError, match="encoder"):
        model.prefix(other, None)
    with pytest.raises(EngineRequestError, match="dropout layer 18 does not exist"):
        model.prefix(good, DropoutSettings(layers=[4, 18]))  # the 28-layer depths on a 4-layer model
    prefix = model.prefix(good, None)
    with pytest.raises(ContextLimitError, match="does not fit"):
        model.answer(prefix, "why? " * 9000, generation=Generation(), should_stop=never)
    with pytest.raises(EngineRequestError, match="control token"):
        model.answer(prefix, "hi <|im_start|>", generation=Generation(), should_stop=never)
    assert not model.engine.has_unfinished()


async def wait_for(cond: Callable[[], Awaitable[object]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_a_worker_answers_and_watches_with_the_real_model(
    model: ModelEngine, redis_server: RedisServer
) -> None:
    prefix = unique_prefix("m")
    memory = VideoMemory.from_url(redis_server.url, prefix=prefix)
    queue = JobQueue.from_url(redis_server.url, prefix=prefix)
    # leases long enough for a real model on a busy CPU; polls short
    fast = WorkerSettings(heartbeat=0.5, lease=5, tick_lease=5, block=0.1, cancel_poll=0.05, watch_poll=0.05)
    worker = Worker.connect(model, redis_server.url, prefix=prefix, settings=fast)
    task = asyncio.create_task(worker.run())
    try:
        for c in clips(model, 6, t0=100.0):
            await memory.append(c)
        job = AskJob.model_validate(
            {"stream": "cam", "question": "What happens?", "dropout": RECIPE_ON_TINY.model_dump(),
             "generation": {"max_new_tokens": 5}}
        )  # fmt: skip
        await queue.submit(job)
        records, final = await collect(queue.client, job.id, prefix=queue.prefix, timeout=60)
        assert isinstance(final, FinalRecord), final
        assert "".join(r.text for r in records if isinstance(r, Piece)) == final.answer
        assert (final.used_start, final.used_end, final.frames) == (100.0, 124.0, 24)
        assert final.visual_tokens == [384, 288, 96] and 0 < final.new_tokens <= 5
        assert final.evidence and {e.clip_id for e in final.evidence} <= {c.id for c in final.clips}
        assert final.model == "tiny" and final.timings.prefill > 0
        [info] = await queue.workers()
        assert info.random_weights  # tiny's weights come from its seed: the page's banner

        store = WatchStore(memory.client, prefix=prefix)
        ticks = TickScheduler(memory.client, prefix=prefix)
        watch = await store.add(Watch(stream="cam", condition="Is anything moving?", window=8, threshold=0.0))
        [late] = clips(model, 1, t0=124.0, seed=9)
        await memory.append(late)

        async def evaluated() -> bool:
            return (await ticks.lag("cam")).evaluated_end == 128.0

        await wait_for(evaluated)
        events = [e for _, e in await EventLog(memory.client, prefix=prefix).read("cam")]
        # threshold 0 fires at once (on the clip that was newest when the watch came, or the next)
        assert events and events[0].kind == "start" and {e.watch for e in events} == {watch.id}
        assert events[-1].clip_start == 124.0 and all(0.0 <= e.score <= 1.0 for e in events)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)
        await memory.close()
        await queue.close()


def test_jobs_on_the_same_window_share_its_prefix_while_they_hold_it(model: ModelEngine) -> None:
    window = clips(model, 3, seed=4)
    a = model.prefix(window, None)
    b = model.prefix(list(window), None)
    assert b.handle is a.handle  # computed once
    assert model.prefix(window, RECIPE_ON_TINY).handle is not a.handle  # other dropout, other prefix
    assert model.prefix(window[:2], None).handle is not a.handle
    alive = weakref.ref(a.handle)
    del a, b
    gc.collect()
    assert alive() is None  # nobody holds it: freed, not cached forever


def test_a_reused_id_with_other_tokens_is_not_taken_for_the_same_prefix(model: ModelEngine) -> None:
    window = clips(model, 2, seed=5)
    a = model.prefix(window, None)
    other = [Clip(c.stream, c.start, c.end, c.frames, -c.tokens, c.encoder_id) for c in window]
    b = model.prefix(other, None)  # same ids (a stream deleted and written again), other tokens
    assert b.handle is not a.handle and not b.reused


@pytest.mark.slow
def test_concurrent_asks_on_one_window_share_one_prefix_and_one_prefill(
    model: ModelEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = clips(model, 8, seed=6)
    generation = Generation(max_new_tokens=4)
    alone = []
    for i in range(4):
        run = model.answer(
            model.prefix(window, None), f"question {i}?", generation=generation, should_stop=never
        )
        alone.append("".join(run))
    del run
    gc.collect()  # nobody holds the window's prefix now: the askers below compute it again
    computed, reused = model.prefixes_computed, model.prefixes_reused
    engine_prefix = model.engine.prefix

    def slow_prefix(*args: Any, **kwargs: Any) -> PrefixHandle:
        time.sleep(0.5)  # every asker arrives while it is computed, however busy the machine
        return engine_prefix(*args, **kwargs)

    start = threading.Barrier(4)
    outcomes: list[object] = [None] * 4
    texts = [""] * 4

    def ask(i: int) -> None:
        start.wait()
        run = model.answer(
            model.prefix(window, None), f"question {i}?", generation=generation, should_stop=never
        )
        texts[i] = "".join(run)
        outcomes[i] = run.outcome

    monkeypatch.setattr(model.engine, "prefix", slow_prefix)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert texts == alone  # batched answers are the answers asked one at a time
    assert (model.prefixes_computed - computed, model.prefixes_reused - reused) == (1, 3)
    assert sorted(o.prefix_reused for o in outcomes) == [False, True, True, True]  # type: ignore[attr-defined]
    assert [o.prefill_batch for o in outcomes] == [4, 4, 4, 4]  # type: ignore[attr-defined]
    assert [o.decode_batch for o in outcomes] == [4, 4, 4, 4]  # type: ignore[attr-defined]
    assert not model.engine.has_unfinished()


@pytest.mark.slow
def test_a_long_prefix_does_not_stall_the_running_answers(model: ModelEngine) -> None:
    """The big window's prefix polls its should_stop between 2,048-token chunks: at the first poll it
    waits until the running answer has decoded more tokens. Were the prefix computed under the step
    lock, the answer could not move and the wait would time out."""
    pieces: list[str] = []
    done = threading.Event()
    run = model.answer(
        model.prefix(clips(model, 2, seed=7), None),
        "Tell me a long story.",
        generation=Generation(max_new_tokens=2000),
        should_stop=done.is_set,
    )
    decoding = threading.Thread(target=lambda: pieces.extend(run))
    decoding.start()
    moved: list[bool] = []

    def meanwhile() -> bool:
        if not moved:
            before = len(pieces)
            deadline = time.monotonic() + 30
            while len(pieces) < before + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            moved.append(len(pieces) >= before + 3)
        return False

    try:
        big = model.prefix(clips(model, 80, stream="big", seed=8), None, should_stop=meanwhile)
    finally:
        done.set()
        decoding.join(30)
    assert moved == [True] and big.handle.window.num_clips == 80
    assert run.outcome.finish_reason == "stopped" and not model.engine.has_unfinished()


def test_a_stopped_request_leaves_the_prefix_it_waited_for(
    model: ModelEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(EngineStopped):
        model.prefix(clips(model, 40, stream="stop", seed=9), None, should_stop=lambda: True)
    engine_prefix = model.engine.prefix
    release = threading.Event()

    def held_prefix(*args: Any, **kwargs: Any) -> PrefixHandle:
        release.wait(10)
        return engine_prefix(*args, **kwargs)

    window = clips(model, 3, stream="wait", seed=10)
    monkeypatch.setattr(model.engine, "prefix", held_prefix)
    first = threading.Thread(target=lambda: model.prefix(window, None))
    first.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    try:
        with pytest.raises(EngineStopped, match="waiting"):
            model.prefix(window, None, should_stop=lambda: time.monotonic() - t0 > 0.2)
    finally:
        release.set()
        first.join(30)
