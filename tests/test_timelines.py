"""Files keep media time: gaps stay gaps, a 0.1 fps file keeps all its frames, variable frame rates keep
their times, and a corrupt middle is reported with its extent while later clips stay where they are.
Real files (PyAV), the real tiny encoder, a real Redis; the stored times are checked against the times
PyAV decodes from the same file."""

from __future__ import annotations

from pathlib import Path

import av
import media
import pytest

from flashlive.memory.store import VideoMemory
from flashlive.memory.types import ClipInfo, StreamState
from flashlive.model.encoder import ClipEncoder, load_clip_encoder
from flashlive.stream.ingest import Ingest
from flashlive.stream.lifecycle import StreamRunner, StreamSpec
from flashlive.stream.settings import IngestSettings, StreamSettings


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return load_clip_encoder()


def media_times(path: Path) -> list[float]:
    """The times of every frame the decoder gives, from the first frame (what a file's timeline is)."""
    times: list[float] = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                times += [f.time for f in packet.decode() if f.time is not None]
            except av.error.InvalidDataError:
                continue  # a corrupt packet: no frame
    return [t - times[0] for t in times]


async def ingest_file(
    encoder: ClipEncoder, memory: VideoMemory, path: Path, name: str, fps: float = 1.0
) -> tuple[StreamRunner, list[ClipInfo]]:
    async with Ingest(encoder, memory) as ingest:
        spec = StreamSpec.from_settings(
            name, StreamSettings(url=str(path), realtime=False, fps=fps), IngestSettings()
        )
        runner = ingest.start_stream(spec)
        await ingest.wait()
    return runner, await memory.list_clips(name)


def assert_on_media_time(clips: list[ClipInfo], frames: list[float], step: float) -> None:
    """Every clip starts on a real frame's media time, ends within one sample of its last frame, and every
    frame lies inside a clip (give or take one sample): nothing moved, nothing squeezed, nothing lost."""
    for c in clips:
        assert any(abs(c.start - f) < 1e-3 for f in frames), f"clip at {c.start} is on no frame's time"
        inside = [f for f in frames if c.start - 1e-3 <= f < c.end]
        assert inside and c.end - inside[-1] <= step + 1e-3, (c.start, c.end, inside[-1:])
    for f in frames:
        assert any(c.start - step - 1e-3 <= f < c.end + step for c in clips), f"frame at {f} s is in no clip"


async def test_a_gap_in_a_file_stays_a_gap(tmp_path: Path, encoder: ClipEncoder, memory: VideoMemory) -> None:
    path = tmp_path / "gap.mp4"
    pts = [i * 100 for i in range(50)] + [15_000 + i * 100 for i in range(50)]  # 0-5 s, then 15-20 s
    media.write_video(path, pts_ms=pts)
    runner, clips = await ingest_file(encoder, memory, path, "gap")
    frames = media_times(path)
    assert_on_media_time(clips, frames, 1.0)
    assert not any(5.0 < c.start < 15.0 for c in clips)  # the 10 s without frames stay empty
    assert clips[-1].end == pytest.approx(20.0, abs=1.0) and runner.ok


async def test_a_tenth_of_a_frame_per_second_keeps_every_frame(
    tmp_path: Path, encoder: ClipEncoder, memory: VideoMemory
) -> None:
    path = tmp_path / "slow.mp4"
    media.write_video(path, pts_ms=[i * 10_000 for i in range(6)])  # 60 s, one frame every 10 s
    _, clips = await ingest_file(encoder, memory, path, "slow")
    assert [c.start for c in clips] == pytest.approx([0, 10, 20, 30, 40, 50], abs=1e-3)
    assert sum(c.frames for c in clips) == 6  # all six frames, none squeezed away
    assert_on_media_time(clips, media_times(path), 1.0)


async def test_a_variable_frame_rate_keeps_its_times(
    tmp_path: Path, encoder: ClipEncoder, memory: VideoMemory
) -> None:
    path = tmp_path / "vfr.mp4"
    pts: list[int] = []
    t = 0
    for _ in range(5):  # 2 s at 30 fps, then 3 s without a frame, five times
        pts += [t + round(i * 1000 / 30) for i in range(60)]
        t += 5_000
    media.write_video(path, pts_ms=pts)
    runner, clips = await ingest_file(encoder, memory, path, "vfr")
    frames = media_times(path)
    assert_on_media_time(clips, frames, 1.0)
    assert clips[-1].start == pytest.approx(21.0, abs=1.0)  # the last burst is at 20-22 s, not earlier
    assert runner.metrics.frames_in == len(frames) == 300


async def test_a_corrupt_middle_is_reported_and_later_clips_keep_their_times(
    tmp_path: Path, encoder: ClipEncoder, memory: VideoMemory
) -> None:
    path = tmp_path / "corrupt.mp4"
    media.write_video(path, seconds=30, fps=10, keyframe_every=10, garbage_s=(12.0, 18.0))
    runner, clips = await ingest_file(encoder, memory, path, "corrupt")
    frames = media_times(path)
    assert not any(12.0 <= f < 18.0 for f in frames)  # the decoder indeed gives nothing there
    assert_on_media_time(clips, frames, 1.0)
    assert not any(12.5 < c.start < 17.5 for c in clips)
    assert any(abs(c.start - 18.0) <= 1.0 for c in clips) and clips[-1].end == pytest.approx(30.0, abs=1.0)
    # the stretch is reported with its extent, in the metrics and in the meta for any process
    ((start, end),) = runner.metrics.corrupt
    assert start == pytest.approx(12.0, abs=1.0) and end == pytest.approx(18.0, abs=1.0)
    status = await memory.status("corrupt")
    assert status.state == StreamState.STOPPED and "could not be decoded" in status.error
    assert (await memory.meta("corrupt"))["corrupt"].startswith(f"{start:.3f}-")
