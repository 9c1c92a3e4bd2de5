"""What the engine hands back: a piece per step (`StepOutput`) and a final record (`AnswerResult`).

Plain data without torch, so the worker can turn it into its queue messages (`to_dict` gives the
JSON-ready form).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from flashlive.memory.messages import Evidence
from flashlive.model.config import DropoutConfig

FINISH_STOP, FINISH_LENGTH, FINISH_ABORT, FINISH_ERROR = "stop", "length", "abort", "error"


@dataclass(frozen=True)
class ClipTime:
    """A clip the answer was computed from."""

    clip_id: str
    start: float
    end: float
    frames: int


@dataclass
class Timings:
    """Seconds (and a rate) for one answer.

    projector and prefix are the shared visual prefix's own costs (paid once for all questions on it);
    prefill is this question's batch prefill; first_token runs from the request's arrival (`add`, or
    the start of `Engine.answer`, which includes the prefix) to its first token; decode runs from the
    first token to the last; tokens_per_s = decoded tokens after the first / decode.
    """

    projector: float = 0.0
    prefix: float = 0.0
    prefill: float = 0.0
    first_token: float = 0.0
    decode: float = 0.0
    tokens_per_s: float = 0.0


@dataclass
class AnswerResult:
    seq_id: int
    answer: str  # surrounding whitespace stripped, as the release does
    finish_reason: str  # "stop" (an end token), "length" (max_new_tokens), "abort" or "error"
    stream: str
    window_start: float
    window_end: float
    clips: list[ClipTime]
    duration: float  # the time message's seconds
    num_frames: int  # the time message's frame count
    visual_tokens: int  # before dropout
    visual_kept: list[int]  # after each dropout stage
    dropout: DropoutConfig | None
    evidence: list[Evidence]  # the most-attended clips, best first
    prompt_tokens: int  # text before the video + visual tokens + question tokens
    new_tokens: int
    timings: Timings = field(default_factory=Timings)
    prefill_batch: int = 1  # questions prefilled in one batch with this one (itself included)
    decode_batch: int = 0  # the most sequences one of its decode steps advanced (0: it took none)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dropout"] = None if self.dropout is None else dataclasses.asdict(self.dropout)
        out["evidence"] = [e.model_dump() for e in self.evidence]
        return out


@dataclass
class StepOutput:
    """What one engine step did for one sequence."""

    seq_id: int
    text: str  # new answer text ("" while a character or a run of spaces is incomplete)
    token_id: int | None  # the token generated (None when the step ended the sequence at a stop id)
    finished: bool = False
    result: AnswerResult | None = None  # set when finished
    error: Exception | None = None  # set when the step failed for this sequence (it is finished)
