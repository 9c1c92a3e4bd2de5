"""Messages that cross process boundaries through Redis.

Writers (ingest) and readers (workers, web) import these from here, so both sides of the store agree
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    state: str

    @property
    def span(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return self.last_end - self.first_start


@dataclass(frozen=True)
class Evidence:
    """A clip an answer cites: `score` is the share of the model's attention to the video that this
    clip's tokens received (from the last prompt token, see docs/model.md)."""

    clip_id: str
    start: float
    end: float
    score: float
