"""Group sampled frames into fixed-length clips (4 frames for every released model).

A clip never spans a long gap (a stall or a reconnect): the partial clip is flushed first, padded by
repeating its last frame so the tower still sees `clip_frames` frames (the release pads short videos
the same way). `frames` on the flushed clip counts only the real ones, and its `end` is just after its
last real frame, so clip times tile the sampled time without inventing any.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .sampler import SampledFrame


@dataclass
class PendingClip:
    """A complete clip waiting for the encoder."""

    stream: str
    frames: np.ndarray  # [clip_frames, H, W, 3] uint8 (padded when real_frames < clip_frames)
    times: list[float]  # timeline time of each real frame
    slots: list[float]  # sampling-grid slot of each (<= time): `end` uses it so clips never overlap
    walls: list[float]  # unix time each real frame was decoded
    step: float  # sample interval when the clip was cut (1 / fps)
    ready: float = field(default_factory=time.monotonic)  # when it became complete

    @property
    def real_frames(self) -> int:
        return len(self.times)

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def end(self) -> float:
        # the last frame's slot + one step: after the last frame, and not after the next clip's start
        return self.slots[-1] + self.step

    @property
    def wall_start(self) -> float:
        return self.walls[0]


class ClipAssembler:
    """Collects sampled frames of one stream and cuts them into clips."""

    def __init__(self, stream: str, clip_frames: int = 4, *, max_gap_steps: float = 3.0) -> None:
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        self.stream = stream
        self.clip_frames = clip_frames
        self.max_gap_steps = max_gap_steps
        self._frames: list[SampledFrame] = []

    @property
    def pending(self) -> int:
        return len(self._frames)

    def push(self, frame: SampledFrame, step: float) -> list[PendingClip]:
        """Add one sampled frame; returns the clips it completed (0, 1, or 2 after a gap)."""
        out: list[PendingClip] = []
        if self._frames and frame.time - self._frames[-1].time > self.max_gap_steps * step:
            out.extend(self.flush(step))
        if self._frames and frame.rgb.shape != self._frames[0].rgb.shape:
            out.extend(self.flush(step))  # resolution changed mid-clip (a camera renegotiated)
        self._frames.append(frame)
        if len(self._frames) == self.clip_frames:
            out.extend(self.flush(step))
        return out

    def flush(self, step: float) -> list[PendingClip]:
        """Cut whatever is pending (padding it) — at a gap, source end or shutdown."""
        if not self._frames:
            return []
        frames, self._frames = self._frames, []
        rgb = [f.rgb for f in frames]
        rgb.extend([rgb[-1]] * (self.clip_frames - len(rgb)))
        return [
            PendingClip(
                stream=self.stream,
                frames=np.stack(rgb),
                times=[f.time for f in frames],
                slots=[f.slot for f in frames],
                walls=[f.wall for f in frames],
                step=step,
            )
        ]
