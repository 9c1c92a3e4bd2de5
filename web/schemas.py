"""Request and response bodies of the HTTP API (docs/web.md). Requests refuse unknown fields.

Messages shared with the workers (`Window`, `DropoutSettings`, `Watch`, `Event`, `FinalRecord`, ...)
come from `flashlive.memory.messages`; this module only adds what the HTTP side needs around them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flashlive.memory.messages import (
    DEFAULT_FRAME_BUDGET,
    DEFAULT_MAX_NEW_TOKENS,
    MAX_FRAME_BUDGET,
    MAX_NEW_TOKENS,
    DropoutSettings,
    Event,
    StreamName,
    Window,
)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    pass


# -- streams ---------------------------------------------------------------------------------


class StreamCreate(Request):
    """Register a pulled stream; an ingest process picks it up (memory/registry.py)."""

    name: StreamName
    url: str = Field(min_length=1, max_length=4096, description="rtsp(s):// or http(s):// (HLS too)")
    transport: Literal["tcp", "udp"] = "tcp"
    fps: float | None = Field(default=None, gt=0, le=30, allow_inf_nan=False)
    loop: bool = False


class StreamOut(Response):
    name: str
    state: str  # connecting | live | retrying | stopped, or "pending" (registered, no ingest yet)
    stale: bool  # the last report is old: its ingest process is gone
    since: float | None
    reported: float | None
    source: str  # credentials masked
    error: str
    registered: bool  # added through the API (DELETE stops its ingest)
    clips: int
    bytes: int
    first_start: float | None
    last_end: float | None
    span_s: float
    lag_s: float  # how long the oldest clip waiting for the encoder has waited
    latency_s: float  # last clip: complete -> stored
    fps: float  # current sample rate
    input_fps: float
    dropped_clips: int
    pending_clips: int
    reconnects: int
    encoder_id: str


class StreamList(Response):
    streams: list[StreamOut]


class StreamDeleted(Response):
    name: str
    unregistered: bool
    memory_deleted: bool


# -- memory ----------------------------------------------------------------------------------


class Segment(Response):
    id: str
    start: float
    end: float
    frames: int
    thumbnail_url: str | None


class SegmentList(Response):
    stream: str
    start: float | None
    end: float | None
    segments: list[Segment]
    truncated: bool  # more clips follow: ask again with start=next_start
    next_start: float | None


# -- ask -------------------------------------------------------------------------------------


class AskRequest(Request):
    stream: StreamName
    question: str = Field(min_length=1)
    window: Window = Field(default_factory=Window, description='{"last": S}, {"start": T, "end": T} or {}')
    budget: int = Field(default=DEFAULT_FRAME_BUDGET, ge=1, le=MAX_FRAME_BUDGET, description="frames")
    recent: int = Field(default=0, ge=0, le=MAX_FRAME_BUDGET, description="newest clips always kept")
    dropout: DropoutSettings | None = None
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    detach: bool = Field(
        default=False,
        description="Answer 202 with the job id at once; follow it over /ws or GET /api/ask/{id}/events. "
        "A detached job is not cancelled when the client goes away.",
    )


class AskAccepted(Response):
    job: str
    events_url: str
    cancel_url: str


class AskStatus(Response):
    job: str
    status: str  # queued | running | done | failed
    attempt: int
    submitted: float
    deadline: float
    result: dict[str, Any] | None  # the final or error record, once there is one


class CancelOut(Response):
    job: str
    status: str  # cancelled | signalled | finished


# -- watches and events ----------------------------------------------------------------------


class WatchCreate(Request):
    stream: StreamName
    condition: str = Field(min_length=1, max_length=2000)
    window: float = Field(default=8.0, gt=0, le=3600, allow_inf_nan=False)
    cadence: Literal["clip"] | float = "clip"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    cooldown: float = Field(default=30.0, ge=0, le=86_400, allow_inf_nan=False)
    budget: int = Field(default=64, ge=1, le=2048)


class WatchList(Response):
    watches: list[dict[str, Any]]


class EventOut(Response):
    id: str  # entry id in the stream's events stream: the cursor (`after`)
    event: Event
    thumbnail_url: str


class EventPage(Response):
    stream: str
    events: list[EventOut]
    next_after: str  # pass as `after` for the next page (the same value when there was none)


# -- info and health -------------------------------------------------------------------------


class WorkerOut(Response):
    name: str
    host: str
    model: str
    random_weights: bool
    running: int
    concurrency: int


class Info(Response):
    version: str
    models: list[str]
    random_weights: bool  # a worker runs untrained weights: show the banner
    workers: list[WorkerOut]
    queue: dict[str, int]
    auth: bool  # a bearer token is required
    whip: bool  # POST /whip/{name} is served
    limits: dict[str, Any]
