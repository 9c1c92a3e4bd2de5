"""The worker's `Engine` protocol on the real model (`flashlive.model.engine.Engine`).

The worker runs each job in a thread of its own. The model engine is step-wise and not thread-safe,
so one lock (the step lock) guards `add`, `step` and `abort`, and whichever job thread needs its next
piece drives the next step. A step advances every running answer at once, so concurrent jobs share
batched decode steps; each step's outputs are routed to their job's queue. `should_stop()` is checked
before every step a job waits on: a cancelled or expired job leaves the batch within one decode step.

Prefixes are computed *outside* the step lock (the model engine allows it: a prefix reads only the
weights), so a long window's prefix does not stall the answers already decoding. Jobs asking about
the same clips with the same dropout at the same time share one prefix: the first computes it, the
others wait for it (or find it while some job still holds it), and a step about to prefill waits a
moment (`GATHER_S`) for requests handed the same prefix to be added, so their questions are
prefilled as one batch. Each answer reports what it shared (`AnswerOutcome.prefix_reused`,
`prefill_batch`, `decode_batch`); `prefixes_computed` / `prefixes_reused` count for the process.

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
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from flashlive.memory.messages import DropoutSettings, Generation
from flashlive.memory.types import Clip
from flashlive.model.config import MODEL_CARD_DROPOUT, DropoutConfig, scale_dropout
from flashlive.model.engine import Engine, PrefixHandle
from flashlive.model.errors import ModelError, PromptTooLongError
from flashlive.model.generation_config import RequestSampling
from flashlive.model.result import FINISH_ABORT, AnswerResult, StepOutput
from flashlive.model.runner import PrefixCancelled
from flashlive.model.window import VideoWindow
from flashlive.model.worker.engine import (
    AnswerOutcome,
    ContextLimitError,
    EngineRequestError,
    EngineStopped,
)

log = logging.getLogger(__name__)

GATHER_S = 0.05  # s a prefill step waits for requests handed a prefix to be added (one batch)
STOP_POLL_S = 0.05  # s between should_stop() checks while waiting for another job's prefix


def _request_error(exc: Exception) -> EngineRequestError:
    if isinstance(exc, PromptTooLongError):
        return ContextLimitError(str(exc))
    return EngineRequestError(str(exc))


@dataclass(eq=False)
class ModelPrefix:
    handle: PrefixHandle
    started: float  # perf_counter() when the prefix was asked for: first-token time counts from it
    reused: bool = False  # computed for another request
    arriving: bool = False  # handed out with others at once: a prefill waits for it (GATHER_S)


@dataclass(eq=False)
class _Pending:
    """A prefix being computed, and how many requests wait for it."""

    ready: threading.Event = field(default_factory=threading.Event)
    waiters: int = 0


class ModelEngine:
    """`Engine` (model/worker/engine.py) over the batching model engine; safe to call from many threads."""

    def __init__(self, engine: Engine, *, name: str | None = None, step_delay: float = 0.0) -> None:
        self.engine = engine
        self.name = name or engine.cfg.name
        self.encoder_id = engine.encoder_id
        self.clip_frames = engine.cfg.vision.clip_frames
        self.step_delay = step_delay  # test-only: s slept per step, so a test catches an answer mid-way
        # weights generated from the preset's seed, not loaded from a checkpoint: answers are noise
        # (the worker's heartbeat carries it; the page shows a banner)
        self.random_weights = engine.cfg.seed is not None
        self.max_running = 0  # the largest batch a decode step ran (how much jobs shared steps)
        self.prefixes_computed = 0
        self.prefixes_reused = 0  # asks for a prefix answered by one computed for another request
        self._lock = threading.Condition()  # the step lock: engine.add/step/abort and the outputs
        self._outputs: dict[int, deque[StepOutput]] = {}
        self._arriving = 0  # prefixes handed out together and not yet used (see ModelPrefix.arriving)
        self._plock = threading.Lock()  # the prefix table
        self._prefixes: weakref.WeakValueDictionary[tuple[object, ...], PrefixHandle] = (
            weakref.WeakValueDictionary()
        )
        self._computing: dict[tuple[object, ...], _Pending] = {}

    @classmethod
    def load(
        cls,
        model: str = "tiny",
        *,
        device: str = "cpu",
        dtype: str = "auto",
        download: bool = False,
        progress: bool = True,
        step_delay: float = 0.0,
    ) -> ModelEngine:
        engine = Engine.load(model, device=device, dtype=dtype, download=download, progress=progress)
        return cls(engine, step_delay=step_delay)

    def dropout_config(self, dropout: DropoutSettings) -> DropoutConfig:
        """A request's dropout; without layers, the model card's at this model's relative depths."""
        if dropout.layers is not None:
            layers = tuple(dropout.layers)
        else:
            layers = scale_dropout(MODEL_CARD_DROPOUT, self.engine.cfg.llm.num_hidden_layers).layers
        return DropoutConfig(dropout.mode, layers, tuple(dropout.ratios))

    def prefix(
        self,
        clips: Sequence[Clip],
        dropout: DropoutSettings | None,
        *,
        duration: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ModelPrefix:
        """The window's prefix, computed outside the step lock. Jobs asking about the same clips with
        the same dropout at the same time share one (kept only while some job holds it); one that
        arrives while it is being computed waits for it."""
        started = time.perf_counter()
        try:
            window = VideoWindow.from_clips(clips, duration=duration)
            config = None if dropout is None else self.dropout_config(dropout)
        except (ModelError, ValueError) as exc:
            raise _request_error(exc) from exc
        key = (window.stream, window.encoder_id, window.clip_ids, window.duration, config)
        waited = False
        while True:
            with self._plock:
                handle = self._prefixes.get(key)
                # same ids, other tokens: a stream deleted and written again since
                if handle is not None and np.array_equal(handle.window.tokens, window.tokens):
                    self.prefixes_reused += 1
                    return ModelPrefix(handle, started, reused=True, arriving=waited)
                pending = self._computing.get(key)
                if pending is None:
                    pending = self._computing[key] = _Pending()
                    break
                pending.waiters += 1
            waited = True
            while not pending.ready.wait(STOP_POLL_S):  # another request computes it
                if should_stop is not None and should_stop():
                    with self._plock:
                        if not pending.ready.is_set():
                            pending.waiters -= 1
                            raise EngineStopped("stopped while waiting for the window's prefix")
            # it is ready, or its request stopped before it was (then this one computes it)
        computed: PrefixHandle | None = None
        try:
            computed = self.engine.prefix(window, config, cancel=should_stop)
        except PrefixCancelled as exc:
            raise EngineStopped(str(exc)) from exc
        except (ModelError, ValueError) as exc:
            raise _request_error(exc) from exc
        finally:
            with self._plock:
                del self._computing[key]
                if computed is not None:
                    self._prefixes[key] = computed
                    self.prefixes_computed += 1
                    if pending.waiters:  # they and this one are about to add their questions
                        with self._lock:
                            self._arriving += pending.waiters + 1
            pending.ready.set()
        return ModelPrefix(computed, started, arriving=pending.waiters > 0)

    def _arrived(self, prefix: ModelPrefix) -> None:
        if not prefix.arriving:
            return
        prefix.arriving = False
        with self._lock:
            self._arriving = max(0, self._arriving - 1)
            self._lock.notify_all()

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
        finally:
            self._arrived(prefix)
        return ModelRun(self, seq, prefix, should_stop)

    def score_yes_no(self, prefix: ModelPrefix, questions: Sequence[str]) -> list[float]:
        """Outside the step lock: scoring builds caches of its own (model/engine.py)."""
        self._arrived(prefix)
        try:
            return self.engine.score_yes_no(prefix.handle, questions)
        except (ModelError, ValueError) as exc:
            raise _request_error(exc) from exc

    # ------------------------------------------------------------------------ driven by job threads

    def _next(self, seq: int) -> StepOutput | None:
        """The next output of `seq`, stepping the engine (for everyone) when it has none queued."""
        with self._lock:
            queue = self._outputs[seq]
            # requests handed a prefix are about to be added: prefill them in the same batch
            gather = not queue and self.engine.num_waiting and self._arriving
            if gather and not self._lock.wait_for(lambda: not self._arriving, timeout=GATHER_S):
                self._arriving = 0  # a request that never came (its job failed first)
            if not queue:
                if self.step_delay:
                    time.sleep(self.step_delay)
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
            timings={  # a reused prefix was paid for by the request it was computed for
                "projector": 0.0 if self._prefix.reused else t.projector,
                "prefill": t.prefill if self._prefix.reused else t.prefix + t.prefill,
                "first_token": t.first_token,
                "decode": t.decode,
            },
            prefix_reused=self._prefix.reused,
            prefill_batch=r.prefill_batch,
            decode_batch=r.decode_batch,
        )

    @property
    def outcome(self) -> AnswerOutcome:
        if self._outcome is None:
            raise RuntimeError("iterate the run first")
        return self._outcome
