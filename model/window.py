"""The model's input: a window of clips with their real times.

A `VideoWindow` is what a question is asked about: the clips' HiCo tokens in time order and, for each
clip, its id, start and end time and frame count. The prompt's time message ("The video lasts for D
seconds, and N frames are uniformly sampled from it.") and the evidence an answer cites both come
from these numbers, so no caller has to make them up.

Built from memory clips (`from_clips`, for live streams) or from the clips sampled from a file
(`from_file`, for ask-file). No torch here: a window is plain data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flashlive.memory.keys import entry_id
from flashlive.memory.types import Clip
from flashlive.model.errors import WindowError


@dataclass(frozen=True, eq=False)
class VideoWindow:
    stream: str
    tokens: np.ndarray  # [N, T, C] float16: N clips of T tokens (64), before the projector
    clip_ids: tuple[str, ...]
    starts: tuple[float, ...]  # seconds on the stream's timeline
    ends: tuple[float, ...]
    frames: tuple[int, ...]  # frames each clip was made from
    duration: float  # the time message's seconds
    encoder_id: str = ""

    def __post_init__(self) -> None:
        n = len(self.clip_ids)
        if self.tokens.ndim != 3:
            raise WindowError(f"tokens must be [clips, tokens, channels], got shape {self.tokens.shape}")
        if n == 0 or self.tokens.shape[0] != n:
            raise WindowError(
                f"a window needs at least one clip and tokens for each, got {n} ids and "
                f"{self.tokens.shape[0]} token sets"
            )
        if not len(self.starts) == len(self.ends) == len(self.frames) == n:
            raise WindowError("clip ids, starts, ends and frame counts must have one entry per clip")
        runs = [cid for i, cid in enumerate(self.clip_ids) if i == 0 or cid != self.clip_ids[i - 1]]
        if len(set(runs)) != len(runs):  # the release pads by repeating the last clip: only in place
            raise WindowError("a clip may appear again only right after itself")
        for s, e, f in zip(self.starts, self.ends, self.frames, strict=True):
            if not (math.isfinite(s) and math.isfinite(e) and e > s):
                raise WindowError(f"a clip must end after it starts, got [{s}, {e})")
            if f < 1:
                raise WindowError(f"a clip must hold at least one frame, got {f}")
        if any(b < a for a, b in zip(self.starts, self.starts[1:], strict=False)):
            raise WindowError("clips must be in time order")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise WindowError(f"the duration must be a positive number of seconds, got {self.duration}")

    @property
    def num_clips(self) -> int:
        return len(self.clip_ids)

    @property
    def tokens_per_clip(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def visual_tokens(self) -> int:
        return int(self.tokens.shape[0] * self.tokens.shape[1])

    @property
    def num_frames(self) -> int:
        """Frames actually used: the time message's frame count."""
        return sum(self.frames)

    @property
    def start(self) -> float:
        return self.starts[0]

    @property
    def end(self) -> float:
        return self.ends[-1]

    @classmethod
    def from_clips(cls, clips: Sequence[Clip], *, duration: float | None = None) -> VideoWindow:
        """A window of memory clips (e.g. `VideoMemory.read_window`'s result), in time order; a clip may
        repeat right after itself (the release's padding, `sampling.release_window_clips`).

        Clip ids are their memory entry ids; the duration is `duration` when given (release sampling
        states the whole window's), else the span from the first clip's start to the last clip's end.
        """
        if not clips:
            raise WindowError("a window needs at least one clip")
        streams = {c.stream for c in clips}
        encoders = {c.encoder_id for c in clips}
        if len(streams) > 1:
            raise WindowError(f"clips of one window must come from one stream, got {sorted(streams)}")
        if len(encoders) > 1:
            raise WindowError(f"clips of one window must share an encoder, got {sorted(encoders)}")
        shapes = {c.tokens.shape for c in clips}
        if len(shapes) > 1:
            raise WindowError(f"clips of one window must have one token shape, got {sorted(shapes)}")
        tokens = np.stack([np.asarray(c.tokens, dtype=np.float16) for c in clips])
        return cls(
            stream=clips[0].stream,
            tokens=tokens,
            clip_ids=tuple(entry_id(c.start) for c in clips),
            starts=tuple(float(c.start) for c in clips),
            ends=tuple(float(c.end) for c in clips),
            frames=tuple(int(c.frames) for c in clips),
            duration=float(clips[-1].end) - float(clips[0].start) if duration is None else float(duration),
            encoder_id=clips[0].encoder_id,
        )

    @classmethod
    def from_file(
        cls,
        tokens: np.ndarray,
        frame_times: Sequence[float],
        *,
        duration: float,
        name: str = "file",
        encoder_id: str = "",
    ) -> VideoWindow:
        """A window of clips sampled from a file: tokens [N, T, C] and the time of every sampled frame.

        Frames go to clips in order, len(frame_times) / N per clip. A clip runs from its first frame to
        the next clip's first frame; the last one to one sampling interval (duration / frame count)
        after its last frame, capped at the duration. `duration` is the time message's (the release:
        frame count / average fps).
        """
        n = int(tokens.shape[0]) if tokens.ndim == 3 else 0
        if n == 0 or len(frame_times) % n:
            raise WindowError(f"{len(frame_times)} frame times do not split into {n} clips")
        per = len(frame_times) // n
        step = duration / len(frame_times)
        starts = [float(frame_times[i * per]) for i in range(n)]
        last = float(frame_times[-1])
        ends = [*starts[1:], min(last + step, duration)]
        # a clip must not be empty: the release pads short videos by repeating the last frame
        ends = [e if e > s else s + step for s, e in zip(starts, ends, strict=True)]
        return cls(
            stream=name,
            tokens=np.asarray(tokens, dtype=np.float16),
            clip_ids=tuple(str(i) for i in range(n)),
            starts=tuple(starts),
            ends=tuple(ends),
            frames=(per,) * n,
            duration=float(duration),
            encoder_id=encoder_id,
        )
