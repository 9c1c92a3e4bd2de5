"""Online frame sampling: keep about `fps` frames a second, on a timeline that never goes back.

Sources hand over presentation times that may jump (a camera reconnect restarts pts at 0, a clock
glitch), stall, or come at a variable rate. The sampler maps them onto the stream's own timeline
(DESIGN §3, `Clip`): live sources anchor to wall-clock unix time, files to media time from `origin`
(0, or just after the stream's last clip when another file continues a stream).

Files keep media time: a forward jump in pts is a gap in the video (a low or variable frame rate, a
stretch the decoder could not decode) and stays a gap, so stored times match the media. Only pts going
backwards re-anchors a file just after its last frame (time never goes back). Live sources re-anchor on
any discontinuity (pts back, or ahead of the wall clock), to the wall clock.

Only kept frames are converted to RGB. Frames keep their native size unless the long side exceeds
`max_side` (ingest passes `IngestSettings.max_side`), where swscale shrinks them (aspect kept): the
model does the exact bicubic resize to S×S later, so a 1080p camera costs ~1 MB per sampled frame
instead of ~6 MB, and the result differs from resizing the full frame by far less than one uint8 step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .types import SourceFrame

log = logging.getLogger(__name__)


@dataclass
class SampledFrame:
    rgb: np.ndarray  # [H, W, 3] uint8
    time: float  # seconds on the stream timeline (monotonic, never reset)
    wall: float  # unix time the frame was decoded
    slot: float = -1.0  # its slot on the sampling grid (<= time, > time - step); -1: same as time

    def __post_init__(self) -> None:
        if self.slot < 0:
            self.slot = self.time


class Sampler:
    """Picks frames at `fps` by presentation time. Keep one per stream across reconnects.

    The timeline is `pts + offset`. Files: offset starts at origin - first pts (media time from
    `origin`). Live: a frame cannot have been captured after it was decoded, so offset tracks
    min(wall - pts) and stream time never runs ahead of the wall clock, even when a server opens with a
    burst of buffered frames; a frame whose time would go backwards is clamped just after the last one
    (it will not be sampled). Discontinuities re-anchor the offset just after the last frame: for live
    sources pts going back or forward by more than the wall clock allows, for files pts going back.
    """

    def __init__(
        self,
        fps: float,
        *,
        live: bool = True,
        max_side: int | None = None,
        jump_tolerance: float = 2.0,
        origin: float = 0.0,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"sample rate must be positive, got {fps} fps")
        self._fps = float(fps)
        self.live = live
        self.origin = origin  # where a file's media time starts on the stream timeline
        self.max_side = max_side
        # how far pts may run ahead of (or behind) the wall clock before it counts as a jump
        self.jump_tolerance = jump_tolerance
        self._offset: float | None = None  # timeline time = pts + offset
        self._last_pts: float | None = None
        self._last_time: float | None = None  # timeline time of the last frame seen
        self._last_wall = 0.0
        self._frame_step = 1.0 / 30  # running estimate of the source frame interval
        self._due: float | None = None  # timeline time of the next frame to keep
        self.frames_in = 0
        self.frames_kept = 0
        self.discontinuities = 0

    @property
    def fps(self) -> float:
        return self._fps

    @fps.setter
    def fps(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"sample rate must be positive, got {value} fps")
        self._fps = float(value)

    @property
    def step(self) -> float:
        return 1.0 / self._fps

    def reset_source(self) -> None:
        """The source reconnected: its next pts starts a new segment of the same timeline."""
        self._offset = None
        self._last_pts = None

    def timeline(self, pts: float, wall: float) -> float:
        """Map one frame's pts to the stream timeline, re-anchoring on discontinuities."""
        if self._offset is None or self._last_pts is None:
            self._anchor(pts, wall, reason="source (re)started")
        else:
            dpts = pts - self._last_pts
            dwall = wall - self._last_wall
            # files: a forward jump is a gap in the media (backfill decodes faster than real time, so
            # the wall clock tells nothing there); live: pts ahead of the wall clock is a discontinuity
            ahead = self.live and dpts > dwall + self.jump_tolerance
            if dpts < 0 or ahead:
                self._anchor(pts, wall, reason=f"pts jumped by {dpts:+.3f}s")
            else:
                if 0 < dpts < 1.0:
                    self._frame_step = 0.9 * self._frame_step + 0.1 * dpts
                latency = wall - pts
                # live: a frame captured earlier than assumed pulls the timeline back (never ahead of the
                # clock); pts falling far behind the clock (camera clock drift) moves it forward
                if self.live and (latency < self._offset or latency - self._offset > self.jump_tolerance):
                    self._offset = latency
        assert self._offset is not None
        t = pts + self._offset
        if self._last_time is not None and t <= self._last_time:
            t = self._last_time + 1e-6
        self._last_pts, self._last_wall, self._last_time = pts, wall, t
        return t

    def time_of(self, pts: float) -> float | None:
        """The stream time of a source pts in the current segment (None before the first frame)."""
        return None if self._offset is None else pts + self._offset

    def _anchor(self, pts: float, wall: float, reason: str) -> None:
        if self._last_time is None:
            start = wall if self.live else self.origin
        else:
            # never backwards, and leave one frame interval after the last frame
            after = self._last_time + self._frame_step
            start = max(after, wall) if self.live else after
            self.discontinuities += 1
            log.info("timeline re-anchored at %.3f (%s)", start, reason)
        self._offset = start - pts

    def push(self, frame: SourceFrame) -> SampledFrame | None:
        """Feed every decoded frame; returns the frame when it is one to keep."""
        self.frames_in += 1
        t = self.timeline(frame.pts, frame.wall)
        if self._due is None:
            self._due = t
        if t < self._due:
            return None
        # a stall or a lower rate: restart the cadence here rather than keeping a burst of catch-up frames
        if t - self._due >= self.step:
            self._due = t
        slot = self._due
        self._due += self.step
        self.frames_kept += 1
        return SampledFrame(self.to_rgb(frame), t, frame.wall, slot)

    def to_rgb(self, frame: SourceFrame) -> np.ndarray:
        vf = frame.frame
        w, h = vf.width, vf.height
        if self.max_side and max(w, h) > self.max_side:
            scale = self.max_side / max(w, h)
            # even sizes keep swscale's chroma handling exact
            w, h = max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)
            return vf.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
        return vf.to_ndarray(format="rgb24")
