"""Typed, versioned messages between viewers (web, CLI), query workers and event readers.

Everything that crosses a process boundary through the job queue, a job's result stream or a
stream's events stream is one of these pydantic models, serialised as JSON. Both sides validate:
the sender by building the model, the receiver with `parse_job` / `parse_record` / `parse_event`,
which never raise for bad input from the wire: they return (or raise, for jobs) an `ErrorRecord`
with a code and a message a person can act on.

Versioning: every message has `v`. A receiver understands versions up to `SCHEMA_VERSION`; a newer
one is answered with `ErrorCode.UNSUPPORTED_VERSION` before any other field is looked at, since a
newer sender may use fields this side does not know. Add a field with a default and keep `v`; bump
`v` when a field changes meaning or a required field appears.

This module imports no torch (web/ uses it) and nothing outside memory/.
"""

from __future__ import annotations

import enum
import json
import re
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from flashlive.memory.keys import STREAM_NAME

SCHEMA_VERSION = 1

# -- the rules, one place each -----------------------------------------------------------------

DEFAULT_FRAME_BUDGET = 512  # frames: the release's evaluation budget
MAX_FRAME_BUDGET = 20_000  # frames: 5,000 clips, 320k visual tokens, ~650 MB of tokens read
DEFAULT_MAX_NEW_TOKENS = 1024  # as in the release's chat()
MAX_NEW_TOKENS = 16_384
MAX_QUESTION_CHARS = 32_000  # bounds a message's size; the context limit (tokens) is the engine's check
DEFAULT_DEADLINE_S = 300.0  # a job nobody finished within this is answered with deadline_exceeded
MAX_DEADLINE_S = 24 * 3600.0
DROPOUT_MODES = ("uniform", "attention", "uniform0_attention", "uniform1_attention")
# How a worker picks the window's clips: "uniform" spreads the budget's clips over the window (first and
# last included; `recent` keeps the newest); "release" applies the release chat()'s frame-count rule to
# the 1 fps video the memory holds (model/sampling.py::release_window_clips; docs/model.md, "Live windows").
SamplingRule = Literal["uniform", "release"]
SAMPLING_RULES: tuple[str, ...] = get_args(SamplingRule)
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"  # used inside Redis keys: no braces, no spaces

JobId = Annotated[str, StringConstraints(pattern=JOB_ID)]
StreamName = Annotated[str, StringConstraints(pattern=STREAM_NAME.pattern)]
Seconds = Annotated[float, Field(allow_inf_nan=False)]


def new_id() -> str:
    return uuid.uuid4().hex


class Message(BaseModel):
    """Base of every message: unknown fields are refused, `v` is checked against what we understand."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    v: int = SCHEMA_VERSION

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"message version must be >= 1, not {v}")
        if v > SCHEMA_VERSION:
            raise ValueError(f"message version {v} is newer than this side understands ({SCHEMA_VERSION})")
        return v

    def dumps(self) -> str:
        return self.model_dump_json()


class Part(BaseModel):
    """A nested part of a message (no version of its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- requests ----------------------------------------------------------------------------------


class Window(Part):
    """Which part of a stream's memory: `last` seconds before the newest clip's end, or clips whose
    start lies in [start, end) (either end may be open), or everything (nothing set)."""

    last: Seconds | None = Field(default=None, gt=0)
    start: Seconds | None = None
    end: Seconds | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Window:
        if self.last is not None and (self.start is not None or self.end is not None):
            raise ValueError("give either last=SECONDS or start/end, not both")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"window start ({self.start}) must be before its end ({self.end})")
        return self

    def describe(self) -> str:
        if self.last is not None:
            return f"the last {self.last:g} s"
        if self.start is None and self.end is None:
            return "the whole memory"
        lo = "-inf" if self.start is None else f"{self.start:g}"
        hi = "+inf" if self.end is None else f"{self.end:g}"
        return f"[{lo}, {hi})"


# The model card's stages sit before layers 4 and 18 of 28; a request that names no layers gets them at
# the same relative depths of the model that serves it (model/config.py::scale_dropout).
RECIPE_STAGES = 2


class DropoutSettings(Part):
    """Progressive visual-token dropout for one request (prefill only). `{}` is the model-card recipe;
    leave the field out (null) for no dropout, the release's default. `layers` null: the model card's
    depths ([4, 18] of 28 layers) scaled to the serving model's depth, so `{}` fits every model."""

    mode: Literal["uniform", "attention", "uniform0_attention", "uniform1_attention"] = "uniform0_attention"
    layers: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(default=None, max_length=64)
    ratios: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default=[1.0, 0.75, 0.25], max_length=65)

    @model_validator(mode="after")
    def _stages(self) -> DropoutSettings:
        stages = RECIPE_STAGES if self.layers is None else len(self.layers)
        if len(self.ratios) != stages + 1:
            raise ValueError(
                f"dropout needs one ratio more than layers: {stages} layers"
                f"{' (the recipe, when none are given)' if self.layers is None else ''}, "
                f"{len(self.ratios)} ratios"
            )
        if self.layers is not None and self.layers != sorted(set(self.layers)):
            raise ValueError(f"dropout layers must be strictly increasing, got {self.layers}")
        return self


class Generation(Part):
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, allow_inf_nan=False)  # 0 = greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, lt=2**63)


def _deadline() -> float:
    return time.time() + DEFAULT_DEADLINE_S


class AskJob(Message):
    """A question about one stream's memory, for a worker. `deadline` is unix seconds: past it the job
    is answered with `deadline_exceeded`, queued or running."""

    type: Literal["ask"] = "ask"
    id: JobId = Field(default_factory=new_id)
    stream: StreamName
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    window: Window = Field(default_factory=Window)
    budget: int = Field(default=DEFAULT_FRAME_BUDGET, ge=1, le=MAX_FRAME_BUDGET)  # frames
    recent: int = Field(default=0, ge=0, le=MAX_FRAME_BUDGET)  # newest clips always kept
    dropout: DropoutSettings | None = None
    generation: Generation = Field(default_factory=Generation)
    submitted: Seconds = Field(default_factory=time.time)
    deadline: Seconds = Field(default_factory=_deadline)
    # added within v1 (defaulted): a worker from before it refuses a job that sets it (unknown field)
    sampling: SamplingRule = "uniform"

    @field_validator("question")
    @classmethod
    def _not_blank(cls, q: str) -> str:
        if not q.strip():
            raise ValueError("the question is blank")
        return q

    @model_validator(mode="after")
    def _sane(self) -> AskJob:
        if self.deadline - self.submitted > MAX_DEADLINE_S:
            raise ValueError(f"deadline is more than {MAX_DEADLINE_S:.0f} s after submission")
        if self.sampling == "release" and self.recent:
            raise ValueError("recent keeps the newest clips of uniform sampling: 0 with release sampling")
        return self


class Watch(Message):
    """A standing question about one stream, evaluated at every new clip (`cadence="clip"`) or at most
    every `cadence` seconds of stream time, over the last `window` seconds. An event starts when the
    score P(yes) reaches `threshold` and ends once it stayed below for `cooldown` seconds."""

    type: Literal["watch"] = "watch"
    id: JobId = Field(default_factory=new_id)
    stream: StreamName
    condition: str = Field(min_length=1, max_length=2_000)
    window: Seconds = Field(default=8.0, gt=0, le=3600)
    cadence: Literal["clip"] | Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = "clip"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    cooldown: Seconds = Field(default=30.0, ge=0, le=86_400)
    budget: int = Field(default=64, ge=1, le=2_048)  # frames read per evaluation
    created: Seconds = Field(default_factory=time.time)

    @field_validator("condition")
    @classmethod
    def _not_blank(cls, c: str) -> str:
        if not c.strip():
            raise ValueError("the condition is blank")
        return c


# -- what a worker writes to a job's result stream ---------------------------------------------


class ErrorCode(enum.StrEnum):
    INVALID_MESSAGE = "invalid_message"  # not JSON, wrong types, unknown fields, impossible values
    UNSUPPORTED_VERSION = "unsupported_version"  # `v` newer than this side understands
    UNKNOWN_STREAM = "unknown_stream"
    EMPTY_MEMORY = "empty_memory"  # the stream exists but holds no clip yet
    WINDOW_OUTSIDE_MEMORY = "window_outside_memory"  # the window misses what the memory holds
    WINDOW_EMPTY = "window_empty"  # inside the memory's span, but no clip starts in it (a pause)
    ENCODER_MISMATCH = "encoder_mismatch"  # the stream's tokens are another model's
    CONTEXT_LIMIT = "context_limit"  # question + visual tokens + answer exceed the model's context
    INVALID_REQUEST = "invalid_request"  # well-formed but not servable (bad dropout for this model, ...)
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"  # a bug or a failing device: the worker logged the traceback


class ClipSpan(Part):
    id: str  # memory entry id, "<start ms>-1"
    start: float
    end: float


class Evidence(Part):
    """A clip the answer drew on (attention it received), for the page to replay."""

    clip_id: str
    start: float
    end: float
    score: float


class Timings(Part):
    """Seconds, except tokens_per_s. first_token and total count from the job's submission (what the
    viewer waited); the others are the parts on the worker."""

    queue_wait: float = 0.0
    memory_read: float = 0.0
    projector: float = 0.0
    prefill: float = 0.0
    first_token: float = 0.0
    decode: float = 0.0
    tokens_per_s: float = 0.0
    total: float = 0.0


class Batching(Part):
    """How an answer shared work with concurrent ones on its worker (the worker's batching at work)."""

    prefix_reused: bool = False  # the window's visual prefix was computed for a concurrent job, not again
    prefill_batch: int = 1  # questions prefilled in one batch with this one (itself included)
    decode_batch: int = 1  # the most answers that took one decode step together with this one


class Piece(Message):
    """Text generated so far by one attempt: readers concatenate pieces of the latest attempt.

    `attempt` grows each time a worker (re)starts the job after a failover; `seq` counts pieces within
    an attempt from 0. A piece of a higher attempt than any seen means "the answer restarts": drop the
    text of earlier attempts (see `AnswerText`).
    """

    type: Literal["piece"] = "piece"
    job: JobId
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    text: str


class FinalRecord(Message):
    type: Literal["final"] = "final"
    job: JobId
    attempt: int = Field(ge=1)
    stream: str
    question: str
    answer: str
    finish_reason: Literal["stop", "length"]
    window: Window  # as asked
    used_start: float  # first clip's start .. last clip's end, of the clips actually given to the model
    used_end: float
    clips: list[ClipSpan]
    frames: int
    visual_tokens: list[int]  # visual tokens entering the LLM, then after each dropout stage
    prompt_tokens: int
    new_tokens: int
    dropout: DropoutSettings | None
    timings: Timings
    evidence: list[Evidence]
    worker: str
    model: str
    # added within v1 (defaulted, so records of older workers still read)
    sampling: SamplingRule = "uniform"  # as asked
    file_frames: int | None = None  # release sampling: frames chat() would take from a file this long
    batching: Batching = Field(default_factory=Batching)


class ErrorRecord(Message):
    type: Literal["error"] = "error"
    job: JobId | None = None  # None when even the id of a bad job could not be read
    attempt: int = Field(default=0, ge=0)  # 0: written outside an attempt (queued cancel, bad message)
    code: ErrorCode
    message: str


Record = Annotated[Piece | FinalRecord | ErrorRecord, Field(discriminator="type")]
TERMINAL = ("final", "error")


# -- events --------------------------------------------------------------------------------------


class Event(Message):
    """One step of a watch's event (a Frigate-style review item): `start` when the score reaches the
    threshold, `update` on each later evaluation while it stays there, `end` after the cooldown."""

    type: Literal["event"] = "event"
    id: str  # the review item: start, updates and end of one occurrence share it
    watch: JobId
    stream: str
    condition: str
    kind: Literal["start", "update", "end"]
    score: float  # at this evaluation
    peak: float  # highest score of the occurrence so far
    threshold: float
    clip_id: str  # the clip evaluated (its end is the evaluation's time on the stream timeline)
    clip_start: float
    clip_end: float
    started: float  # stream time the occurrence started (the first clip above the threshold)
    thumbnail: str  # clip id whose thumbnail shows the occurrence best (highest score)
    time: float = Field(default_factory=time.time)  # wall clock when written


# -- parsing from the wire -----------------------------------------------------------------------


class MessageError(Exception):
    """A message that cannot be used; `record` is the error record to answer it with."""

    def __init__(self, record: ErrorRecord) -> None:
        super().__init__(record.message)
        self.record = record


M = TypeVar("M")

_JOB: TypeAdapter[AskJob] = TypeAdapter(AskJob)
_WATCH: TypeAdapter[Watch] = TypeAdapter(Watch)
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)
_RECORD: TypeAdapter[Piece | FinalRecord | ErrorRecord] = TypeAdapter(Record)


def _load(raw: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _readable_id(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    return value if isinstance(value, str) and re.match(JOB_ID, value) else None


def _version_error(data: dict[str, Any], what: str, job: str | None) -> ErrorRecord | None:
    v = data.get("v", SCHEMA_VERSION)
    if isinstance(v, int) and not isinstance(v, bool) and v > SCHEMA_VERSION:
        return ErrorRecord(
            job=job,
            code=ErrorCode.UNSUPPORTED_VERSION,
            message=f"{what} has message version {v}, newer than this side understands "
            f"({SCHEMA_VERSION}); upgrade this side",
        )
    return None


def explain(exc: ValidationError) -> str:
    """pydantic's errors as one line: `budget: Input should be less than or equal to 20000; ...`."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse(raw: bytes | str, adapter: TypeAdapter[M], *, what: str, id_field: str = "id") -> M:
    """Validate a message from the wire. Raises `MessageError` whose `.record` says what is wrong
    (with the job id when it could be read, so the answer reaches the right viewer)."""
    try:
        data = _load(raw)
    except ValueError as exc:
        raise MessageError(
            ErrorRecord(code=ErrorCode.INVALID_MESSAGE, message=f"bad {what}: {exc}")
        ) from None
    job = _readable_id(data, id_field)
    too_new = _version_error(data, what, job)
    if too_new is not None:
        raise MessageError(too_new)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise MessageError(
            ErrorRecord(job=job, code=ErrorCode.INVALID_MESSAGE, message=f"bad {what}: {explain(exc)}")
        ) from None


def parse_job(raw: bytes | str) -> AskJob:
    """A job from the queue. Raises `MessageError`."""
    return parse(raw, _JOB, what="ask job")


def parse_watch(raw: bytes | str) -> Watch:
    return parse(raw, _WATCH, what="watch")


def parse_event(raw: bytes | str) -> Event:
    return parse(raw, _EVENT, what="event")


def parse_record(raw: bytes | str, job: str | None = None) -> Piece | FinalRecord | ErrorRecord:
    """A record of a job's result stream. Never raises: a record this side cannot read becomes an
    ErrorRecord (terminal), so a reader always ends with one final or error record."""
    try:
        return parse(raw, _RECORD, what="result record", id_field="job")
    except MessageError as exc:
        rec = exc.record
        return rec if rec.job is not None or job is None else rec.model_copy(update={"job": job})
