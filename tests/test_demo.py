"""The generated demo video behind the quick start."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flashlive.cli import main
from flashlive.model.video import read_video
from flashlive.stream.demo import COLOURS, demo_frame


def _has_colour(frame: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(frame.astype(int) - rgb).sum(-1) < 60).sum() > 100)


def test_scene_changes_colour_each_segment() -> None:
    names = list(COLOURS)
    for segment, name in enumerate(names):
        frame = demo_frame(segment * 15.0 + 7.0)
        assert _has_colour(frame, COLOURS[name]), name
        others = [COLOURS[n] for n in names if n != name]
        assert not any(_has_colour(frame, c) for c in others), name


def test_demo_video_command_writes_a_decodable_file(tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    assert main(["demo-video", str(out), "--seconds", "8", "--fps", "5"]) == 0
    video = read_video(out)
    # 40 frames, fewer than chat()'s minimum of 64, which drops to whole steps of them: all 40.
    assert video.frames.shape[0] == 40 and abs(video.duration - 8.0) < 0.3
    assert _has_colour(video.frames[0], COLOURS["red"])
    assert main(["demo-video", str(out), "--seconds", "0"]) == 2
