"""`flashlive ask-file` as a user runs it, and the offline frame sampling behind it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import media
import pytest

from flashlive.cli import main
from flashlive.model.sampling import sample_frames
from flashlive.model.video import read_video

FLASHLIVE = [sys.executable, "-m", "flashlive"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*FLASHLIVE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "ten_seconds.mp4"
    media.write_video(path, seconds=10.0, fps=10, size=(96, 64))
    return path


def test_read_video_picks_the_release_frames(video: Path) -> None:
    # 10 s at 10 fps: 100 frames, D = 100 / 10; chat() takes 64 (its minimum), middles of 64 intervals.
    sampled = read_video(video, clip_frames=4)
    assert sampled.frames.shape == (64, 64, 96, 3)
    assert sampled.indices == sample_frames(100, 10.0)
    assert sampled.indices[:6] == [0, 1, 3, 4, 6, 7]  # edges 0, 1, 3, 4, 6, 7, 9: middles (lo + hi - 1) // 2
    assert (sampled.vlen, sampled.duration, sampled.fps) == (100, 10.0, 10.0)
    # The moving square makes every frame distinct: each sampled frame is the one at its index.
    assert all(
        (sampled.frames[k] == sampled.frames[k + 1]).all() == (sampled.indices[k] == sampled.indices[k + 1])
        for k in range(63)
    )


def test_low_frame_rate_video_is_padded_with_its_last_frame(tmp_path: Path) -> None:
    # The example: 40 s at 0.5 fps = 20 frames. N = 8 * floor(40 / 8) = 40 (the minimum drops to
    # 16, whole steps of 20 frames): every frame once, then the last one 20 more times.
    path = tmp_path / "slow.mp4"
    media.write_video(path, seconds=40.0, fps=Fraction(1, 2), size=(64, 48))
    sampled = read_video(path)
    assert sampled.indices == list(range(20)) + [19] * 20
    assert (sampled.vlen, sampled.duration) == (20, 40.0)
    assert all((sampled.frames[k] == sampled.frames[19]).all() for k in range(20, 40))
    assert not (sampled.frames[18] == sampled.frames[19]).all()


def test_very_short_video_pads_to_one_step(tmp_path: Path) -> None:
    short = tmp_path / "short.mp4"
    media.write_video(short, seconds=0.3, fps=10)
    sampled = read_video(short)
    assert sampled.indices == [0, 1, 2, 2, 2, 2, 2, 2]
    assert sampled.frames.shape[0] == 8 and sampled.duration == pytest.approx(0.3)


def test_avi_is_timed_by_its_stream_duration(tmp_path: Path) -> None:
    # The release reads .avi with PyAV (read_frames_av): duration = the stream's duration field.
    path = tmp_path / "clip.avi"
    media.write_video(path, seconds=2.5, fps=10, codec="mpeg4")
    sampled = read_video(path)
    assert (sampled.vlen, sampled.duration, sampled.fps) == (25, 2.5, 10.0)
    assert len(sampled.indices) == 24  # the minimum drops to whole steps of 25 frames


@pytest.mark.slow
def test_ask_file_json_reports_answer_tokens_and_timings(video: Path) -> None:
    proc = run("ask-file", str(video), "What moves in the video?", "--json", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == report["num_frames"] == 64 and len(report["clips"]) == 16
    assert report["duration"] == 10.0
    assert report["sampling"] == {"min_frames": 64, "max_frames": 64, "step": 8}  # tiny's budget is 64
    assert report["visual_tokens"] == 16 * 64
    assert report["visual_kept"] == []
    assert isinstance(report["answer"], str) and 0 < report["new_tokens"] <= 5
    assert report["answer"] == report["answer"].strip()
    assert set(report["timings"]) >= {"decode", "encode", "projector", "prefix", "prefill", "first_token"}
    # clip times come from the sampled frames: they tile the video in order, within its duration
    clips = report["clips"]
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(clips))
    assert 0 <= clips[0]["start"] < clips[0]["end"] and clips[-1]["end"] <= report["duration"]
    # dropout is off: evidence comes from one deep layer's attention, and cites these clips
    assert len(report["evidence"]) == 3
    assert {e["clip_id"] for e in report["evidence"]} <= {c["clip_id"] for c in clips}
    assert 0 < sum(e["score"] for e in report["evidence"]) <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("layers", [["--dropout-layers", "1,3"], []])  # none: [4, 18] of 28 -> [1, 3] of 4
def test_ask_file_dropout_keeps_the_asked_share(
    video: Path, capsys: pytest.CaptureFixture[str], layers: list[str]
) -> None:
    args = ["--dropout", "uniform0_attention", *layers, "--dropout-ratios", "1,0.75,0.25"]
    assert main(["ask-file", str(video), "What moves?", "--json", "--max-new-tokens", "2", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["visual_kept"] == [768, 256]  # of 1024
    assert report["evidence"] and report["evidence"][0]["score"] >= report["evidence"][-1]["score"]
    assert report["dropout"]["mode"] == "uniform0_attention" and report["dropout"]["layers"] == [1, 3]


@pytest.mark.slow
def test_ask_file_streams_text_without_json(video: Path) -> None:
    args = ["--max-frames", "4", "--min-frames", "4", "--frame-step", "4"]
    proc = run("ask-file", str(video), "Describe it.", "--max-new-tokens", "3", *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and len(proc.stdout.strip()) > 0


@pytest.mark.slow
def test_bad_inputs_give_one_clear_line(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio = tmp_path / "audio.mp4"
    media.write_audio_only(audio)
    garbage = tmp_path / "garbage.mp4"
    media.write_garbage(garbage)
    cases = [
        ((str(empty), "q"), "the file is empty"),
        ((str(audio), "q"), "has no video stream"),
        ((str(garbage), "q"), "not a readable video"),
        ((str(tmp_path / "missing.mp4"), "q"), "no such file"),
        ((str(video), "q", "--model", "huge"), "unknown model 'huge': not a preset (tiny"),
        ((str(video), "q", "--dropout", "sideways"), "unknown dropout mode 'sideways'"),
        (
            (str(video), "q", "--dropout", "uniform", "--dropout-layers", "1,9"),
            "dropout layer 9 does not exist",
        ),
        ((str(video), "q", "--max-frames", "30"), "max_frames must be a multiple of the 4-frame clip"),
        ((str(video), "q", "--frame-step", "6"), "frame step must be a positive multiple of the 4-frame"),
        ((str(video), "   "), "the question is empty"),
        # the command line's numbers are checked before anything loads (flashlive/commands/validate.py)
        (
            (str(video), "q", "--temperature", "-1"),
            "--temperature: Input should be greater than or equal to 0",
        ),
        (
            (str(video), "q", "--max-new-tokens", "0"),
            "--max-new-tokens: Input should be greater than or equal to 1",
        ),
        ((str(video), "why? " * 9000), "does not fit the model's context"),
    ]
    for args, message in cases:
        assert main(["ask-file", *args]) == 2, args[2:]
        err = capsys.readouterr().err
        assert message in err, (args[2:], err)
        assert err.count("\n") == 1 and "Traceback" not in err


def test_the_minimum_wins_over_a_smaller_budget(video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["ask-file", str(video), "q", "--json", "--max-new-tokens", "1", "--max-frames", "16"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 64
    assert main([*args, "--min-frames", "8"]) == 0  # now 8 * floor(10 / 8) = 8, under the budget of 16
    assert json.loads(capsys.readouterr().out)["frames"] == 8
