"""The release's frame sampling (get_frame_indices, dynamic_fps1), pinned to values worked out from its code.

Each expected number below was computed by hand from `video_utils.py::get_frame_indices` with the
arguments `mm_utils.py::load_video` passes (min_num_frames=64, max_num_frames=512, local_num_frames=8),
or the training scripts' (step 4). The "ours before" column is what FlashLive did before issue 12
(4 * floor(D / 4), no minimum, no padding), kept to show what changed.
"""

from __future__ import annotations

import pytest

from flashlive.model.sampling import (
    CHAT_SAMPLING,
    TRAINING_SAMPLING,
    FrameSampling,
    SamplingError,
    middle_indices,
    release_frame_count,
    release_frame_indices,
    release_window_clips,
    sample_frames,
)

# (what, frames in the file, average fps, release N with chat()'s rule, ours before)
FRAME_COUNT_TABLE = [
    ("10 s at 25 fps: the minimum of 64 wins", 250, 25.0, 64, 8),
    ("30 s at 30 fps", 900, 30.0, 64, 28),
    ("40 s at 0.5 fps: 20 frames padded to 40", 20, 0.5, 40, 20),
    ("64 s at 25 fps", 1600, 25.0, 64, 64),
    ("100 s at 30 fps: whole steps of 8", 3000, 30.0, 96, 100),
    ("65 s at 1 fps", 65, 1.0, 64, 64),
    ("1 h at 30 fps: the maximum", 108_000, 30.0, 512, 512),
    ("3 s at 10 fps: fewer frames than the minimum, which drops to 24", 30, 10.0, 24, 0),
    ("0.3 s at 10 fps: 3 frames padded to one step", 3, 10.0, 8, 0),
]


@pytest.mark.parametrize(("what", "vlen", "fps", "release", "before"), FRAME_COUNT_TABLE)
def test_frame_count_table(what: str, vlen: int, fps: float, release: int, before: int) -> None:
    duration = vlen / fps  # the release's D: frame count / average frame rate
    assert release_frame_count(vlen, duration, CHAT_SAMPLING) == release, (what, "ours before:", before)


def test_training_step_is_four() -> None:
    # Stage 3/4 scripts: frames_lowbound 64, frames_upbound 512, local_num_frames 4.
    assert release_frame_count(3060, 102.0, TRAINING_SAMPLING) == 100  # 4 * 25
    assert release_frame_count(3060, 102.0, CHAT_SAMPLING) == 96  # 8 * 12
    assert release_frame_count(250, 10.0, TRAINING_SAMPLING) == 64


def test_the_minimum_wins_over_the_maximum() -> None:
    rule = FrameSampling(min_frames=64, max_frames=16, step=8)
    assert release_frame_count(108_000, 3600.0, rule) == 64
    assert release_frame_count(40, 4.0, rule) == 40  # the minimum drops to whole steps of 40 frames


def test_indices_are_interval_middles_padded_with_the_last() -> None:
    assert middle_indices(100, 4) == [12, 37, 62, 87]
    assert middle_indices(8, 8) == list(range(8))
    # 250 frames, 64 intervals of 3.9 frames: edges 0, 3, 7, 11, ...
    assert sample_frames(250, 10.0)[:6] == [1, 4, 8, 12, 16, 20]
    assert len(sample_frames(250, 10.0)) == 64
    # 3 s at 10 fps: 24 intervals over 30 frames (edges 0, 1, 2, 3, 5, 6, ...).
    assert sample_frames(30, 3.0)[:12] == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13]
    assert sample_frames(30, 3.0)[12:] == [15, 16, 17, 18, 20, 21, 22, 23, 25, 26, 27, 28]
    # 40 s at 0.5 fps: every frame once, then frame 19 twenty more times.
    assert sample_frames(20, 40.0) == list(range(20)) + [19] * 20
    assert sample_frames(3, 0.3) == [0, 1, 2, 2, 2, 2, 2, 2]
    assert release_frame_indices(5, 2) == [0, 3]  # edges 0, 2, 5: middles (0+1)//2, (2+4)//2


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (FrameSampling(64, 512, 6), "frame step must be a positive multiple of the 4-frame clip, got 6"),
        (FrameSampling(64, 510, 8), "max_frames must be a multiple of the 4-frame clip, got 510"),
        (FrameSampling(30, 512, 8), "min_frames must be a multiple of the 4-frame clip, got 30"),
        (FrameSampling(0, 512, 8), "min_frames must be at least 1, got 0"),
    ],
)
def test_rules_that_cannot_give_whole_clips_are_refused(rule: FrameSampling, message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        rule.check(4)


def test_live_window_uses_the_rule_on_the_one_fps_video_the_memory_holds() -> None:
    # 5 clips = 20 s at 1 fps: 16 frames (whole steps of 20), the middle 4 of 5 clips; chat() would take
    # 64 frames from a 20 s file: 48 it had in between the 1 fps samples, which the memory never kept.
    plan = release_window_clips(5)
    assert (plan.clips, plan.frames, plan.duration) == ([0, 1, 2, 3], 16, 20.0)
    assert (plan.file_frames, plan.short_of_file) == (64, 48)
    # One clip: the release pads to one step (8 frames); here the last clip repeats.
    assert release_window_clips(1).clips == [0, 0]
    # 30 clips = 120 s: every clip, the same count as chat() on the original file.
    plan = release_window_clips(30)
    assert plan.clips == list(range(30)) and plan.frames == 120 and plan.short_of_file == 0
    # 1 h (900 clips): 128 clips (512 frames) at the middles of 128 equal intervals.
    plan = release_window_clips(900)
    assert plan.frames == 512 and len(plan.clips) == 128 and plan.short_of_file == 0
    assert plan.clips[:4] == [3, 10, 17, 24] and plan.clips[-1] == 895
    with pytest.raises(SamplingError, match="no clips"):
        release_window_clips(0)
