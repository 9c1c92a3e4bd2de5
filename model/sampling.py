"""Which frames the model sees: the release's "dynamic_fps1" rule, for files and for live windows.

One source for the rule (docs/model.md, "Sampling"). The release computes it in
`llava/video_utils.py::get_frame_indices` (training tree) and the same function in the Hugging Face
remote code's `mm_utils.py`, whose `load_video` (called by `chat()`) passes min 64, max 512, step 8.

For a video of `vlen` frames lasting D = vlen / average fps seconds:

    N = step * max(1, floor(D / step))      ~1 frame a second, in whole steps
    N = min(N, max_frames)                  the budget
    N = max(N, min_frames')                 min_frames' = min_frames, or whole steps of vlen when the
                                            video has fewer frames than min_frames (the minimum wins
                                            over the maximum)
    frames = middles of min(N, vlen) equal intervals of [0, vlen), padded to N with the last index.

Everything here is plain integer arithmetic: no decoding, no torch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from flashlive.model.errors import SamplingError


@dataclass(frozen=True)
class FrameSampling:
    """The three numbers of the rule. `step` is the release's `local_num_frames`."""

    min_frames: int = 64
    max_frames: int = 512
    step: int = 8

    def check(self, clip_frames: int) -> None:
        """Every N the rule can give must be whole clips, or the tower cannot take the frames."""
        for name, value in (("min_frames", self.min_frames), ("max_frames", self.max_frames)):
            if value < 1:
                raise SamplingError(f"{name} must be at least 1, got {value}")
            if value % clip_frames:
                raise SamplingError(f"{name} must be a multiple of the {clip_frames}-frame clip, got {value}")
        if self.step < 1 or self.step % clip_frames:
            raise SamplingError(
                f"frame step must be a positive multiple of the {clip_frames}-frame clip, got {self.step}"
            )


# HF remote code, mm_utils.py::load_video (what chat() runs): min_num_frames=64, local_num_frames=8,
# max_num_frames = chat()'s max_num_frames (512 by default).
CHAT_SAMPLING = FrameSampling(min_frames=64, max_frames=512, step=8)
# Training scripts (stage 3/4): --frames_lowbound 64 --frames_upbound 512 --local_num_frames 4.
TRAINING_SAMPLING = FrameSampling(min_frames=64, max_frames=512, step=4)


def release_frame_count(vlen: int, duration: float, rule: FrameSampling = CHAT_SAMPLING) -> int:
    """N, the number of frames the release feeds the model for a video of `vlen` frames, D seconds."""
    if vlen < 1:
        raise SamplingError(f"a video needs at least one frame, got {vlen}")
    min_frames = rule.min_frames
    if min_frames > vlen:
        min_frames = (vlen // rule.step) * rule.step
    n = rule.step * max(1, int(duration // rule.step))
    n = min(n, rule.max_frames)
    return max(min_frames, n)


def middle_indices(vlen: int, n: int) -> list[int]:
    """Split [0, vlen) into n equal intervals (integer edges) and take each interval's middle."""
    edges = np.linspace(0, vlen, n + 1).astype(int)
    return [int((lo + hi - 1) // 2) for lo, hi in itertools.pairwise(edges)]


def release_frame_indices(vlen: int, n: int) -> list[int]:
    """The N frame indices: middles of min(N, vlen) intervals, then the last one repeated up to N."""
    picked = middle_indices(vlen, min(n, vlen))
    return picked + [picked[-1]] * (n - len(picked))


def sample_frames(vlen: int, duration: float, rule: FrameSampling = CHAT_SAMPLING) -> list[int]:
    return release_frame_indices(vlen, release_frame_count(vlen, duration, rule))


# ---------------------------------------------------------------- live windows


@dataclass(frozen=True)
class WindowPlan:
    """The release's rule applied to a window of the live memory (see `release_window_clips`)."""

    clips: list[int]  # positions in the window's clips, in time order; the last repeats when padded
    frames: int  # N: the frame count the prompt's time message names (len(clips) * clip_frames)
    duration: float  # D of the 1 fps video the memory holds: its frame count / the sampling rate
    file_frames: int  # N chat() takes from a source file of this duration with >= that many frames

    @property
    def short_of_file(self) -> int:
        """Frames chat() would have had from the original file that the memory cannot supply."""
        return max(0, self.file_frames - self.frames)


def release_window_clips(
    n_clips: int, *, clip_frames: int = 4, fps: float = 1.0, rule: FrameSampling = CHAT_SAMPLING
) -> WindowPlan:
    """Pick whole clips of a live window the way `chat()` samples a file.

    The memory keeps tokens of `clip_frames`-frame clips sampled at `fps`, and no frames, so the
    window is treated as the video the memory holds: vlen = n_clips * clip_frames frames at `fps`
    (gaps closed up). N comes from the release's rule on that video; the N / clip_frames clips are the
    middles of equal intervals over the clips, padded with the last clip. This is what `chat()` would
    do with a recording of the sampled frames; it cannot be what `chat()` does with the original file
    when that file has more frames than the memory kept (windows under `min_frames` seconds): there
    the release samples above 1 fps, and the frames in between were never encoded. `file_frames` and
    `short_of_file` say how far off that is.
    """
    if n_clips < 1:
        raise SamplingError("the window holds no clips")
    if fps <= 0:
        raise SamplingError(f"the memory's sampling rate must be positive, got {fps}")
    rule.check(clip_frames)
    vlen = n_clips * clip_frames
    duration = vlen / fps
    n = release_frame_count(vlen, duration, rule)
    clips = release_frame_indices(n_clips, n // clip_frames)
    # A source file of this duration at a normal frame rate has more frames than any N the rule asks.
    file_frames = release_frame_count(max(vlen, rule.min_frames, rule.max_frames), duration, rule)
    return WindowPlan(clips=clips, frames=n, duration=duration, file_frames=file_frames)
