"""Evaluating one watch tick: every due watch of a stream at one clip, sharing the visual prefix.

The scheduler (memory/watches.py) hands a worker a tick; this reads the clip, picks the watches whose
cadence is due, reads each distinct window (watches with the same window length and budget share
one read and one prefix), scores every condition with `Engine.score_yes_no`, steps each watch's
event life cycle (memory/events.py) and completes the tick: states, events and the cursor in one
script. A tick that cannot be evaluated (its clip was trimmed, the model failed) is completed as
failed, so the stream moves on and the failure is counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence

from flashlive.memory.errors import MemoryStoreError, RangeOutsideMemoryError
from flashlive.memory.events import WatchState, due, step
from flashlive.memory.keys import id_ms
from flashlive.memory.messages import ClipSpan, Event, Watch
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.memory.watches import Tick, TickScheduler, WatchStore
from flashlive.model.worker.engine import Engine

log = logging.getLogger(__name__)


def watch_question(condition: str) -> str:
    """The yes/no question a condition is scored with (one wording for every engine)."""
    return f"Is the following true in the video: {condition.strip().rstrip('?.')}? Answer yes or no."


class TickEvaluator:
    def __init__(self, engine: Engine, memory: VideoMemory, store: WatchStore, ticks: TickScheduler) -> None:
        self.engine = engine
        self.memory = memory
        self.store = store
        self.ticks = ticks
        self.held: dict[str, Tick] = {}  # stream -> the tick this worker evaluates now

    async def extend_leases(self) -> None:
        for tick in list(self.held.values()):
            if not await self.ticks.extend(tick):
                log.warning("tick %s@%s was taken over by another worker", tick.stream, tick.clip_id)

    async def evaluate(self, tick: Tick) -> list[str] | None:
        """Evaluate and complete one tick; returns the ids of the events written (None: lost)."""
        self.held[tick.stream] = tick
        try:
            return await self._evaluate(tick)
        finally:
            self.held.pop(tick.stream, None)

    async def _evaluate(self, tick: Tick) -> list[str] | None:
        clip = await self._clip(tick)
        if clip is None:
            log.warning("tick %s@%s: the clip is gone (trimmed); skipped", tick.stream, tick.clip_id)
            return await self.ticks.complete(tick, 0.0, [], [], failed=True)
        watches = await self.store.all(tick.stream)
        states = await self.store.states(tick.stream)
        todo = [(w, states.get(w.id, WatchState())) for w in watches]
        todo = [(w, s) for w, s in todo if due(w, s, clip)]
        try:
            results = await self._score(tick.stream, clip, todo)
        except MemoryStoreError as exc:
            log.error("tick %s@%s: %s", tick.stream, tick.clip_id, exc)
            return await self.ticks.complete(tick, clip.end, [], [], failed=True)
        except Exception:
            log.exception("tick %s@%s: the model failed", tick.stream, tick.clip_id)
            return await self.ticks.complete(tick, clip.end, [], [], failed=True)
        new_states: list[tuple[str, WatchState]] = []
        events: list[Event] = []
        now = time.time()
        for (watch, state), score in zip(todo, results, strict=True):
            state, event = step(watch, state, score, clip, now=now)
            new_states.append((watch.id, state))
            if event is not None:
                events.append(event)
        return await self.ticks.complete(tick, clip.end, new_states, events)

    async def _clip(self, tick: Tick) -> ClipSpan | None:
        t = id_ms(tick.clip_id) / 1000
        try:
            infos = await self.memory.list_clips(tick.stream, start=t, end=t + 0.001)
        except MemoryStoreError:
            return None
        return ClipSpan(id=infos[0].id, start=infos[0].start, end=infos[0].end) if infos else None

    async def _score(
        self, stream: str, clip: ClipSpan, todo: Sequence[tuple[Watch, WatchState]]
    ) -> list[float]:
        """One score per watch; watches with the same window share the read and the prefix."""
        groups: dict[tuple[float, int], list[int]] = defaultdict(list)
        for i, (watch, _) in enumerate(todo):
            groups[(watch.window, watch.budget)].append(i)
        scores = [0.0] * len(todo)
        for (window, budget), members in groups.items():
            # the `window` seconds ending with the tick's clip, which is always included
            clips = await self.memory.read_window(
                stream, encoder_id=self.engine.encoder_id, start=min(clip.start, clip.end - window),
                end=clip.start + 0.001, budget=max(1, budget // self.engine.clip_frames),
            )  # fmt: skip
            if not clips:
                raise RangeOutsideMemoryError(f"clip {clip.id} of stream {stream!r} is gone")
            questions = [watch_question(todo[i][0].condition) for i in members]
            got = await asyncio.to_thread(self._score_blocking, clips, questions)
            for i, score in zip(members, got, strict=True):
                scores[i] = min(1.0, max(0.0, float(score)))
        return scores

    def _score_blocking(self, clips: list[Clip], questions: list[str]) -> list[float]:
        prefix = self.engine.prefix(clips, None)
        return self.engine.score_yes_no(prefix, questions)
