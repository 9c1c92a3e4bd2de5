"""`flashlive ask-file` as a user runs it, and the offline frame sampling behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import media
import pytest

from flashlive.cli import main
from flashlive.model.video import VideoError, middle_indices, num_sampled_frames, read_video

FLASHLIVE = [sys.executable, "-m", "flashlive"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*FLASHLIVE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "ten_seconds.mp4"
    media.write_video(path, seconds=10.0, fps=10, size=(96, 64))
    return path


def test_dynamic_fps1_sampling_rules() -> None:
    # 1 fps in whole 4-frame clips, at least one clip, within the budget and the frame count.
    assert num_sampled_frames(250, 10.0, clip_frames=4, max_frames=512) == 8
    assert num_sampled_frames(30, 3.0, clip_frames=4, max_frames=512) == 4
    assert num_sampled_frames(36000, 3600.0, clip_frames=4, max_frames=512) == 512
    assert num_sampled_frames(6, 100.0, clip_frames=4, max_frames=512) == 4
    assert num_sampled_frames(3, 100.0, clip_frames=4, max_frames=512) == 0
    # Each of n equal intervals contributes its middle frame.
    assert middle_indices(100, 4) == [12, 37, 62, 87]
    assert middle_indices(8, 8) == list(range(8))


def test_read_video_picks_the_sampled_frames(video: Path) -> None:
    sampled = read_video(video, clip_frames=4, max_frames=512)
    assert sampled.frames.shape == (8, 64, 96, 3)
    assert sampled.indices == middle_indices(100, 8)
    assert sampled.duration == pytest.approx(10.0, abs=0.15)
    # The moving square makes every frame distinct: each sampled frame is the one at its index.
    first, second = sampled.indices[:2]
    assert (sampled.frames[0] != sampled.frames[1]).any()
    assert second > first


def test_ask_file_json_reports_answer_tokens_and_timings(video: Path) -> None:
    proc = run("ask-file", str(video), "What moves in the video?", "--json", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == report["num_frames"] == 8 and len(report["clips"]) == 2
    assert report["visual_tokens"] == 2 * 64
    assert report["visual_kept"] == []
    assert isinstance(report["answer"], str) and 0 < report["new_tokens"] <= 5
    assert report["answer"] == report["answer"].strip()
    assert set(report["timings"]) >= {"decode", "encode", "projector", "prefix", "prefill", "first_token"}
    # clip times come from the sampled frames: they tile the video in order, within its duration
    clips = report["clips"]
    assert clips[0]["start"] < clips[0]["end"] == clips[1]["start"] < clips[1]["end"] <= report["duration"]
    assert report["duration"] == pytest.approx(10.0, abs=0.15)
    # dropout is off: evidence comes from one deep layer's attention, and cites these clips
    assert 1 <= len(report["evidence"]) <= 2
    assert {e["clip_id"] for e in report["evidence"]} <= {c["clip_id"] for c in clips}
    assert sum(e["score"] for e in report["evidence"]) == pytest.approx(1.0)


def test_ask_file_dropout_keeps_the_asked_share(video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--dropout", "uniform0_attention", "--dropout-layers", "1,3", "--dropout-ratios", "1,0.75,0.25"]
    assert main(["ask-file", str(video), "What moves?", "--json", "--max-new-tokens", "2", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["visual_kept"] == [96, 32]
    assert report["evidence"] and report["evidence"][0]["score"] >= report["evidence"][-1]["score"]
    assert report["dropout"]["mode"] == "uniform0_attention"


def test_ask_file_streams_text_without_json(video: Path) -> None:
    proc = run("ask-file", str(video), "Describe it.", "--max-new-tokens", "3", "--max-frames", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and len(proc.stdout.strip()) > 0


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
        ((str(video), "   "), "the question is empty"),
        ((str(video), "q", "--temperature", "-1"), "temperature must be >= 0"),
        ((str(video), "q", "--max-new-tokens", "0"), "max_new_tokens must be at least 1"),
        ((str(video), "why? " * 9000), "does not fit the model's context"),
    ]
    for args, message in cases:
        assert main(["ask-file", *args]) == 2, args[2:]
        err = capsys.readouterr().err
        assert message in err, (args[2:], err)
        assert err.count("\n") == 1 and "Traceback" not in err


def test_video_error_for_too_short_file(tmp_path: Path) -> None:
    short = tmp_path / "short.mp4"
    media.write_video(short, seconds=0.3, fps=10)
    with pytest.raises(VideoError, match="shorter than one 4-frame clip"):
        read_video(short)
