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
