"""The generated demo video behind the quick start."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pixels import components

from flashlive.cli import main
from flashlive.model.video import read_video
from flashlive.model.world import ask, nearest_colour
from flashlive.stream.demo import COLOURS, demo_frame, demo_segments, demo_world


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


def test_each_segment_has_one_ball_colour_and_square_count() -> None:
    world = demo_world(60.0)
    segments = demo_segments(60.0)
    assert [s.ball for s in segments] == ["red", "green", "blue", "yellow"]
    assert [s.squares for s in segments] == [1, 2, 3, 4]
    for seg in segments:
        for frame in world.frames(1.0, seg.start, round(seg.end - seg.start)):
            assert frame.image is not None
            ball = frame.truth.object(0)
            assert ball is not None and ball.colour == seg.ball and ball.occlusion == 0
            x, y = ball.centre(320, 240)
            assert nearest_colour(frame.image[y, x]) == seg.ball
            dark = frame.image.sum(-1) < 150
            found = len({k for k in np.unique(components(dark)) if k})
            assert found == seg.squares == sum(o.shape == "square" for o in frame.truth.objects)


def test_the_world_asks_about_the_ball_and_answers_per_segment() -> None:
    world = demo_world(60.0)
    for seg in demo_segments(60.0):
        video = world.video(seg.start, 12)  # three clips inside the segment
        answers = set()
        for seed in range(40):
            for qa in ask(video, np.random.default_rng(seed), ["colour"]):
                if re.search(r"\b(ball|circle)\b", qa.question):
                    answers.add(qa.answer)
        assert answers == {seg.ball.capitalize()}
