"""A fake `Engine` for the worker's tests: the real protocol, no model.

Its behaviour is derived from its input, so tests check that the worker passed the right things:
the answer names the clips it was given, `score_yes_no` returns the mean token value of the newest
clip (tests write the score they want into a clip's tokens), the context check counts 64 tokens per
clip like the real model, and `should_stop()` is honoured before every decode step. Decode steps can
be slowed down (`step_s`) so that a job is still running when a test freezes or kills its worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from flashlive.memory.messages import DropoutSettings, Generation
from flashlive.memory.types import Clip
from flashlive.model.worker.engine import AnswerOutcome, ContextLimitError, EngineRequestError

ENCODER_ID = "fake@test"
TOKENS_PER_CLIP = 64


@dataclass
class FakePrefix:
    clips: list[Clip]
    dropout: DropoutSettings | None


class FakeRun:
    def __init__(
        self,
        engine: FakeEngine,
        prefix: FakePrefix,
        words: list[str],
        limit: int,
        prompt_tokens: int,
        dropout: DropoutSettings | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.prefix = prefix
        self.words = words
        self.limit = limit
        self.prompt_tokens = prompt_tokens
        self.dropout = dropout
        self.should_stop = should_stop
        self._outcome: AnswerOutcome | None = None

    def __iter__(self) -> Iterator[str]:
        t0 = time.perf_counter()
        with self.engine.lock:
            self.engine.active += 1
            self.engine.max_active = max(self.engine.max_active, self.engine.active)
        try:
            yield from self._decode(t0)
        finally:
            with self.engine.lock:
                self.engine.active -= 1

    def _decode(self, t0: float) -> Iterator[str]:
        text = ""
        reason: Literal["stop", "length", "stopped"] = "length" if self.limit < len(self.words) else "stop"
        for word in self.words[: self.limit]:
            if self.should_stop():
                reason = "stopped"
                break
            time.sleep(self.engine.step_s)
            with self.engine.lock:
                self.engine.steps += 1
            text += word
            yield word
        n = len(self.prefix.clips) * TOKENS_PER_CLIP
        kept = [n] + ([int(n * r) for r in self.dropout.ratios[1:]] if self.dropout else [])
        means = [float(c.tokens.astype("float32").mean()) for c in self.prefix.clips]
        best = max(range(len(means)), key=lambda i: means[i])
        self._outcome = AnswerOutcome(
            text=text, finish_reason=reason, visual_tokens=kept, prompt_tokens=self.prompt_tokens,
            new_tokens=len(text.split()), evidence=[(best, 1.0)],
            timings={"projector": 0.001, "prefill": 0.002, "decode": time.perf_counter() - t0},
        )  # fmt: skip

    @property
    def outcome(self) -> AnswerOutcome:
        assert self._outcome is not None, "iterate the run first"
        return self._outcome


class FakeEngine:
    name = "fake"
    encoder_id = ENCODER_ID
    clip_frames = 4

    def __init__(
        self, *, step_s: float = 0.0, length: int = 8, max_context: int = 4096, random_weights: bool = False
    ) -> None:
        self.random_weights = random_weights  # reported in the heartbeat (the page's banner)
        self.step_s = step_s
        self.length = length  # words in every answer (it stops earlier at max_new_tokens)
        self.max_context = max_context
        self.steps = 0  # decode steps taken, all jobs
        self.prefixes = 0
        self.active = 0  # answers being decoded now
        self.max_active = 0
        self.durations: list[float | None] = []  # `duration` of every prefix asked for
        self.lock = threading.Lock()

    def prefix(
        self,
        clips: Sequence[Clip],
        dropout: DropoutSettings | None,
        *,
        duration: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FakePrefix:
        self.durations.append(duration)
        if dropout is not None and dropout.layers is not None and dropout.layers[-1] > 24:
            raise EngineRequestError(f"dropout layer {dropout.layers[-1]} is past the model's 24 layers")
        with self.lock:
            self.prefixes += 1
        return FakePrefix(list(clips), dropout)

    def answer(
        self,
        prefix: FakePrefix,
        question: str,
        *,
        generation: Generation,
        should_stop: Callable[[], bool],
    ) -> FakeRun:
        if "explode" in question:
            raise RuntimeError("the fake engine was told to explode")
        prompt = len(prefix.clips) * TOKENS_PER_CLIP + len(question.split()) + 40
        if prompt > self.max_context:
            raise ContextLimitError(
                f"the prompt needs {prompt} tokens; the model's context is {self.max_context}"
            )
        clips = prefix.clips
        words = [f"{len(clips)} clips", f" from {clips[0].start:g}", f" to {clips[-1].end:g}."]
        words += [f" w{i}" for i in range(max(0, self.length - len(words)))]
        return FakeRun(self, prefix, words, generation.max_new_tokens, prompt, prefix.dropout, should_stop)

    def score_yes_no(self, prefix: FakePrefix, questions: Sequence[str]) -> list[float]:
        if any("explode" in q for q in questions):
            raise RuntimeError("the fake engine was told to explode")
        score = float(prefix.clips[-1].tokens.astype("float32").mean())
        return [1.0 - score if "NOT" in q else score for q in questions]
