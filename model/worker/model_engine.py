"""The worker's `Engine` protocol on the real model (`flashlive.model.engine.Engine`).

The worker runs each job in a thread of its own. The model engine is step-wise and not thread-safe,
so one lock guards it, and whichever job thread needs its next piece drives the next step. A step
advances every running answer at once, so concurrent jobs share batched decode steps (and questions
added together on one prefix share a prefill); each step's outputs are routed to their job's queue.
`should_stop()` is checked before every step a job waits on: a cancelled or expired job leaves the
batch within one decode step.

Model errors a request causes become `EngineRequestError`s (too long for the context:
`ContextLimitError`), so the worker answers the job with a clear error and keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from flashlive.memory.messages import DropoutSettings, Generation
from flashlive.memory.types import Clip
from flashlive.model.config import DropoutConfig
from flashlive.model.engine import Engine, PrefixHandle
from flashlive.model.errors import ModelError, PromptTooLongError
from flashlive.model.generation_config import RequestSampling
from flashlive.model.result import FINISH_ABORT, AnswerResult, StepOutput
from flashlive.model.window import VideoWindow
from flashlive.model.worker.engine import AnswerOutcome, ContextLimitError, EngineRequestError

log = logging.getLogger(__name__)


def _request_error(exc: Exception) -> EngineRequestError:
    if isinstance(exc, PromptTooLongError):
        return ContextLimitError(str(exc))
    return EngineRequestError(str(exc))


@dataclass(eq=False)
class ModelPrefix:
    handle: PrefixHandle
    started: float  # perf_counter() when the prefix was asked for: first-token time counts from it


class ModelEngine:
    """`Engine` (model/worker/engine.py) over the batching model engine; safe to call from many threads."""

    def __init__(self, engine: Engine, *, name: str | None = None) -> None:
        self.engine = engine
        self.name = name or engine.cfg.name
        self.encoder_id = engine.encoder_id
        self.clip_frames = engine.cfg.vision.clip_frames
        # weights generated from the preset's seed, not loaded from a checkpoint: answers are noise
        # (the worker's heartbeat carries it; the page shows a banner)
        self.random_weights = engine.cfg.seed is not None
        self.max_running = 0  # the largest batch a decode step ran (how much jobs shared steps)
        self._lock = threading.Lock()
        self._outputs: dict[int, deque[StepOutput]] = {}
        self._prefixes: weakref.WeakValueDictionary[tuple[object, ...], PrefixHandle] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    def load(
        cls, model: str = "tiny", *, device: str = "cpu", dtype: str = "auto", download: bool = False
    ) -> ModelEngine:
        return cls(Engine.load(model, device=device, dtype=dtype, download=download, progress=True))

    def prefix(self, clips: Sequence[Clip], dropout: DropoutSettings | None) -> ModelPrefix:
        """The window's prefix; jobs asking about the same clips with the same dropout at the same
        time share one (kept only while some job holds it), so their questions prefill together."""
        started = time.perf_counter()
        try:
            window = VideoWindow.from_clips(clips)
            config = (
                None
                if dropout is None
                else DropoutConfig(dropout.mode, tuple(dropout.layers), tuple(dropout.ratios))
            )
            key = (window.stream, window.encoder_id, window.clip_ids, config)
            with self._lock:
                handle = self._prefixes.get(key)
                if handle is None:
                    handle = self.engine.prefix(window, config)
                    self._prefixes[key] = handle
        except (ModelError, ValueError) as exc:
            raise _request_error(exc) from exc
        return ModelPrefix(handle, started)

    def answer(
        self,
        prefix: ModelPrefix,
        question: str,
        *,
        generation: Generation,
        should_stop: Callable[[], bool],
    ) -> ModelRun:
        request = RequestSampling(
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            seed=generation.seed,
        )
        try:
            params = self.engine.sampling(request)
            with self._lock:
                seq = self.engine.add(prefix.handle, question, params, arrival=prefix.started)
                self._outputs[seq] = deque()
        except (ModelError, ValueError) as exc:
            raise _request_error(exc) from exc
        return ModelRun(self, seq, prefix, should_stop)

    def score_yes_no(self, prefix: ModelPrefix, questions: Sequence[str]) -> list[float]:
        try:
            with self._lock:
                return self.engine.score_yes_no(prefix.handle, questions)
        except (ModelError, ValueError) as exc:
            raise _request_error(exc) from exc

    # ------------------------------------------------------------------------ driven by job threads

    def _next(self, seq: int) -> StepOutput | None:
        """The next output of `seq`, stepping the engine (for everyone) when it has none queued."""
        with self._lock:
            queue = self._outputs[seq]
            if not queue:
                self.max_running = max(self.max_running, self.engine.num_running)
                for out in self.engine.step():
                    if out.seq_id in self._outputs:
                        self._outputs[out.seq_id].append(out)
            return queue.popleft() if queue else None

    def _abort(self, seq: int) -> AnswerResult | None:
        with self._lock:
            self._outputs.pop(seq, None)
            return self.engine.abort(seq)

    def _done(self, seq: int) -> None:
        with self._lock:
            self._outputs.pop(seq, None)


class ModelRun:
    """One answer's text as it is generated; `outcome` once the iteration has ended."""

    def __init__(
        self, engine: ModelEngine, seq: int, prefix: ModelPrefix, should_stop: Callable[[], bool]
    ) -> None:
        self._engine = engine
        self._seq = seq
        self._prefix = prefix
        self._should_stop = should_stop
        self._outcome: AnswerOutcome | None = None

    def __iter__(self) -> Iterator[str]:
        result: AnswerResult | None = None
        try:
            while result is None:
                if self._should_stop():
                    result = self._engine._abort(self._seq)
                    break
                out = self._engine._next(self._seq)
                if out is None:
                    continue
                if out.error is not None:  # the model failed on this answer's step (logged there)
                    result = out.result
                    raise out.error
                if out.text:
                    yield out.text
                if out.finished:
                    result = out.result
        finally:
            if result is None:  # the consumer left early: free the row
                result = self._engine._abort(self._seq)
            else:
                self._engine._done(self._seq)
        assert result is not None
        self._outcome = self._to_outcome(result)

    def _to_outcome(self, r: AnswerResult) -> AnswerOutcome:
        reason: Literal["stop", "length", "stopped"] = (
            "stopped"
            if r.finish_reason == FINISH_ABORT
            else "length"
            if r.finish_reason == "length"
            else "stop"
        )
        index = {cid: i for i, cid in enumerate(self._prefix.handle.window.clip_ids)}
        t = r.timings
        return AnswerOutcome(
            text=r.answer,
            finish_reason=reason,
            visual_tokens=[r.visual_tokens, *r.visual_kept],
            prompt_tokens=r.prompt_tokens,
            new_tokens=r.new_tokens,
            evidence=[(index[e.clip_id], e.score) for e in r.evidence],
            timings={
                "projector": t.projector,
                "prefill": t.prefix + t.prefill,
                "first_token": t.first_token,
                "decode": t.decode,
            },
        )

    @property
    def outcome(self) -> AnswerOutcome:
        if self._outcome is None:
            raise RuntimeError("iterate the run first")
        return self._outcome
