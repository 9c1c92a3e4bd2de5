"""What the worker needs from a model: the `Engine` protocol (torch-free, so the loop is tested with a
fake engine and web/ never pulls torch in through it).

An engine is synchronous and blocking: the worker calls it from a thread per job and reads the text
through an asyncio queue (`bridge.py`). Its three calls follow the split of the model API:

- `prefix(clips, dropout)`: the question-independent part (projector, system text, visual tokens,
  with the request's dropout settings): computed once per window and shared read-only by every
  question about that window (concurrent asks on it, the watches of one stream tick); it may take
  long (a big window), so it polls `should_stop()` and raises `EngineStopped` when told to;
- `answer(prefix, question, ...)`: the per-question suffix (its prefill, and the text-guided dropout
  stages, which need the question) and the decode loop, as an iterator of text pieces; it calls
  `should_stop()` before each decode step, so a cancelled or expired job frees the worker within
  one step;
- `score_yes_no(prefix, questions)`: P("Yes") / (P("Yes") + P("No")) from the next-token logits after
  a yes/no prompt, one score per question: what watches are evaluated with.

Errors an engine raises for a request it cannot serve are `EngineRequestError`s (the worker answers
the job with their `code` and message and keeps serving); anything else is a bug or a device fault
(answered as `internal`, logged with its traceback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from flashlive.memory.messages import DropoutSettings, ErrorCode, Generation
from flashlive.memory.types import Clip


class EngineRequestError(ValueError):
    """A request this engine cannot serve as asked. `code` goes into the job's error record."""

    code = ErrorCode.INVALID_REQUEST


class ContextLimitError(EngineRequestError):
    """Visual tokens + question (+ the answer's room) exceed the model's context."""

    code = ErrorCode.CONTEXT_LIMIT


class EngineStopped(Exception):
    """`should_stop()` turned true while a prefix was computed or waited for: nothing to answer with.
    The worker writes what the stop means (cancelled, deadline, nothing when taken over)."""


@dataclass
class AnswerOutcome:
    """What an engine reports once an answer's pieces are exhausted."""

    text: str
    finish_reason: Literal["stop", "length", "stopped"]  # stopped: should_stop() said so
    visual_tokens: list[int]  # entering the LLM, then after each dropout stage
    prompt_tokens: int
    new_tokens: int
    # (index into the prefix's clips, score): the clips that received the most attention
    evidence: list[tuple[int, float]] = field(default_factory=list)
    # seconds: projector, prefill, first_token (from the start of `prefix`), decode
    timings: dict[str, float] = field(default_factory=dict)
    prefix_reused: bool = False  # the prefix was computed for another (concurrent) request
    prefill_batch: int = 1  # questions prefilled together with this one, itself included
    decode_batch: int = 1  # the largest decode step this answer took part in (answers at once)


class AnswerRun(Protocol):
    """The text of one answer as it is generated; `outcome` is set once the iterator is exhausted."""

    def __iter__(self) -> Iterator[str]: ...

    @property
    def outcome(self) -> AnswerOutcome: ...


class Engine(Protocol):
    """An engine may also have `random_weights: bool` (True for untrained weights); the worker puts it
    in its heartbeat (read with getattr: engines without it have trained weights)."""

    name: str  # model name for the records ("tiny", a checkpoint id)
    encoder_id: str  # the token space it reads: memory refuses tokens of another encoder
    clip_frames: int  # frames per clip (4): turns a frame budget into clips

    def prefix(
        self,
        clips: Sequence[Clip],
        dropout: DropoutSettings | None,
        *,
        duration: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Any:
        """The shared visual prefix of these clips (in time order; the last may repeat, as the release
        pads). `duration`: the time message's seconds, when not the clips' span (release sampling).
        Blocking. Raises EngineRequestError (e.g. ContextLimitError, or dropout settings this model
        cannot run), EngineStopped when `should_stop()` turns true before it is ready."""
        ...

    def answer(
        self,
        prefix: Any,
        question: str,
        *,
        generation: Generation,
        should_stop: Callable[[], bool],
    ) -> AnswerRun:
        """Answer one question over a prefix. Raises EngineRequestError (e.g. ContextLimitError)."""
        ...

    def score_yes_no(self, prefix: Any, questions: Sequence[str]) -> list[float]:
        """P(yes) in [0, 1] for each yes/no question over the prefix."""
        ...
