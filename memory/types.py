"""Messages that cross process boundaries through Redis.

Writers (ingest) and readers (workers, web) import these from here, so both sides of the store agree
without importing each other.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np


class StreamState(enum.StrEnum):
    """A stream's ingest life cycle: connecting -> live -> (retrying -> connecting -> live)* -> stopped
    or error.

    `stopped`: the ingest ended and every clip it cut is stored (or was already there); the meta's
    `error` may still say why it ended early (a backfill interrupted before the end of its file).
    `error`: the ingest ended because something failed (the source, the memory, the encoder) or it lost
    clips; `error` in the meta says what, and the meta's `lost` counters say how many.
    """

    CONNECTING = "connecting"
    LIVE = "live"
    RETRYING = "retrying"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def active(self) -> bool:
        """An ingest is (or should be) writing the stream."""
        return self in (StreamState.CONNECTING, StreamState.LIVE, StreamState.RETRYING)


@dataclass
class Clip:
    """One compressed clip: 4 sampled frames reduced to `tokens` (HiCo output, before the projector).

    Times are seconds on the stream's own timeline: monotonic per stream, never reset. Live sources
    anchor it to wall-clock time (unix seconds); files use media time from 0.
    """

    stream: str
    start: float  # time of the clip's first frame
    end: float  # time just after its last frame (last frame time + 1 / sample fps)
    frames: int
    tokens: np.ndarray  # [T, C] float16, T = tokens per clip (64)
    encoder_id: str
    thumbnail: bytes = b""  # small JPEG of one frame of the clip
    wall_start: float = 0.0  # unix time the first frame was captured (0 when unknown)
    extra: dict[str, str] = field(default_factory=dict)
    # what the clip shows: ingest hashes the sampled frames; empty: the memory hashes tokens + thumbnail.
    # The same id with the same digest is a duplicate (a retry); with another digest, a conflict.
    digest: str = ""


@dataclass
class ClipInfo:
    """A stored clip without its tokens: what listings, timelines and thumbnail replays need."""

    stream: str
    id: str  # Redis stream entry id, "<start ms>-1"
    start: float
    end: float
    frames: int
    encoder_id: str
    token_shape: tuple[int, ...]
    nbytes: int  # token bytes + thumbnail bytes held for this clip
    thumbnail: bytes = b""  # filled only when asked for
    wall_start: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    token_dtype: str = "float16"
    digest: str = ""  # see Clip.digest ("" for clips stored before digests existed)


@dataclass
class StreamStats:
    """What the memory holds for one stream. Times are on the stream timeline (see Clip)."""

    stream: str
    clips: int
    bytes: int  # token + thumbnail bytes of the clips held (Redis overhead not included)
    first_start: float | None  # None while the stream holds no clip
    last_end: float | None
    trimmed_clips: int  # removed by retention so far
    trimmed_bytes: int
    dropped: int  # lost to a full local buffer while Redis was unreachable
    duplicates: int  # appends ignored because that clip was already stored
    encoder_id: str
    state: str  # a StreamState, or "" before ingest reported one
    lost: int = 0  # clips any writer lost, for any reason (`losses` by reason; includes `dropped`)
    losses: dict[str, int] = field(default_factory=dict)
    error: str = ""  # why the stream is in `error` (or why a `stopped` one ended early)
    writer: str = ""  # who holds the stream's write lease now ("" when no ingest is writing it)
    reported: float = 0.0  # unix time of the last status report

    @property
    def span(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return self.last_end - self.first_start


@dataclass
class IngestCounters:
    """The numbers ingest keeps per stream. Written to memory with the state (`VideoMemory.set_state`,
    every few seconds while the stream runs), so any process can read them (`VideoMemory.status`)."""

    frames_in: int = 0  # decoded frames seen
    frames_sampled: int = 0
    # Every clip cut is accounted for: clips_cut = clips + duplicates + dropped_clips + lost_clips
    # + pending_clips + buffered_clips (the last two are in flight, 0 once the stream has ended).
    clips_cut: int = 0  # clips the stream cut from its sampled frames
    clips: int = 0  # clips stored in memory
    duplicates: int = 0  # clips memory already held (same id, same content): a resumed backfill
    dropped_clips: int = 0  # live: clips skipped because the encoder fell behind (backpressure)
    lost_clips: int = 0  # clips lost otherwise: encoder failure, memory buffer full, refused by memory
    pending_clips: int = 0  # complete clips waiting for the encoder
    buffered_clips: int = 0  # encoded clips waiting in the memory's local buffer for Redis
    corrupt_s: float = 0.0  # seconds of the source skipped because its data could not be decoded
    lag_s: float = 0.0  # seconds the oldest waiting clip has waited (0 when caught up)
    latency_s: float = 0.0  # last clip: complete -> stored
    sample_fps: float = 0.0  # current sample rate (lower than configured under `lower_fps`)
    input_fps: float = 0.0  # decoded frames per second, smoothed
    reconnects: int = 0
    errors: int = 0

    def counters(self) -> IngestCounters:
        """A copy holding only these fields (also from a subclass that keeps more)."""
        return IngestCounters(**{f.name: getattr(self, f.name) for f in fields(IngestCounters)})

    def to_json(self) -> str:
        return json.dumps(asdict(self.counters()), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> IngestCounters:
        """Parse what `to_json` wrote; fields this version does not know are ignored (a newer writer)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        out = cls()
        for f in fields(cls):
            if f.name in data:
                setattr(out, f.name, int(data[f.name]) if f.type == "int" else float(data[f.name]))
        return out


@dataclass(frozen=True)
class StreamStatus:
    """What ingest last reported about a stream, as any process reads it from memory."""

    stream: str
    state: StreamState
    since: float  # unix time the state began
    reported: float  # unix time of the report (a stale one: the ingest process is gone)
    source: str  # with credentials masked
    error: str  # why the stream is retrying or stopped ("" when it is not)
    metrics: IngestCounters
