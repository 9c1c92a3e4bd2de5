"""Sampler, clip assembly and thumbnails: presentation-time sampling on synthetic frame sequences."""

from __future__ import annotations

import itertools

import av
import numpy as np
import pytest

from flashlive.stream.clips import ClipAssembler
from flashlive.stream.sampler import SampledFrame, Sampler
from flashlive.stream.thumbnail import jpeg_thumbnail
from flashlive.stream.types import SourceFrame

_FRAMES: dict[tuple[int, int], av.VideoFrame] = {}


def frame(pts: float, wall: float, size: tuple[int, int] = (32, 24), value: int | None = None) -> SourceFrame:
    """A yuv420p frame (as decoders give them); `value` paints it so tests can tell frames apart."""
    if value is not None:
        rgb = np.full((size[1], size[0], 3), value % 256, np.uint8)
        vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    else:
        if size not in _FRAMES:
            rgb = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            _FRAMES[size] = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        vf = _FRAMES[size]
    return SourceFrame(vf, pts, wall)


def run(sampler: Sampler, frames: list[SourceFrame]) -> list[SampledFrame]:
    return [s for f in frames if (s := sampler.push(f)) is not None]


def assert_monotonic(times: list[float]) -> None:
    assert all(b > a for a, b in itertools.pairwise(times)), times


def test_constant_rate_file_keeps_one_frame_a_second_on_media_time() -> None:
    s = Sampler(1.0, live=False)
    kept = run(s, [frame(i / 30, 1000.0 + i / 300) for i in range(300)])  # 10 s of video decoded in 1 s
    times = [k.time for k in kept]
    assert len(kept) == 10
    assert times == pytest.approx([float(i) for i in range(10)], abs=1 / 30 + 1e-9)
    assert s.frames_in == 300 and s.frames_kept == 10
    assert kept[0].rgb.shape == (24, 32, 3) and kept[0].rgb.dtype == np.uint8


def test_other_rates_and_fps_change_midway() -> None:
    s = Sampler(2.0, live=False)
    kept = run(s, [frame(i / 25, 0.0) for i in range(250)])  # 10 s at 25 fps
    assert len(kept) == 20
    s.fps = 0.5
    kept2 = run(s, [frame(10 + i / 25, 0.0) for i in range(250)])  # 10 more seconds
    assert len(kept2) == 5
    gaps = np.diff([k.time for k in kept2])
    assert gaps == pytest.approx(2.0, abs=0.05)


def test_variable_frame_rate_stays_near_one_per_second() -> None:
    rng = np.random.default_rng(1)
    pts = np.cumsum(rng.uniform(0.01, 0.2, 400))  # 10-100 fps bursts
    s = Sampler(1.0, live=False)
    kept = run(s, [frame(float(p), 0.0) for p in pts])
    duration = pts[-1] - pts[0]
    assert abs(len(kept) - duration) <= 1
    # each kept frame is the first at or after its 1 s slot: no drift, jitter below one frame interval
    late = np.array([k.time for k in kept]) - kept[0].time - np.arange(len(kept))
    assert late.min() >= 0 and late.max() < 0.2


def test_live_timeline_anchors_to_wall_clock() -> None:
    s = Sampler(1.0, live=True)
    t0 = 1_700_000_000.0
    kept = run(s, [frame(50.0 + i / 10, t0 + i / 10) for i in range(50)])  # camera pts start at 50
    assert kept[0].time == pytest.approx(t0)
    assert [k.time - t0 for k in kept] == pytest.approx([0, 1, 2, 3, 4], abs=0.11)
    assert [k.wall for k in kept] == pytest.approx([k.time for k in kept], abs=0.11)


def test_camera_restart_pts_at_zero_keeps_timeline_monotonic() -> None:
    s = Sampler(1.0, live=True)
    t0 = 1_700_000_000.0
    first = [frame(100 + i / 10, t0 + i / 10) for i in range(50)]  # 5 s
    # reconnect after a 2 s outage: pts start again at 0
    second = [frame(i / 10, t0 + 7 + i / 10) for i in range(50)]
    kept = run(s, first + second)
    times = [k.time for k in kept]
    assert_monotonic(times)
    assert s.discontinuities == 1
    # re-anchored to the wall clock: the outage shows as a gap, not as overlapping time
    assert times[5] == pytest.approx(t0 + 7, abs=0.11)
    assert len(kept) == 10


def test_backward_jump_in_a_file_continues_after_last_frame() -> None:
    s = Sampler(1.0, live=False)
    frames = [frame(i / 10, 0.0) for i in range(50)] + [frame(2 + i / 10, 0.0) for i in range(50)]
    kept = run(s, frames)
    times = [k.time for k in kept]
    assert_monotonic(times)
    assert len(kept) == 10  # 10 s of frames -> 10 samples, the jump neither loses nor repeats time
    assert times[-1] == pytest.approx(9.0, abs=0.15)


def test_forward_jump_in_a_file_is_a_gap_on_media_time() -> None:
    s = Sampler(1.0, live=False)
    frames = [frame(i / 10, 0.0) for i in range(50)] + [frame(1000 + i / 10, 0.0) for i in range(50)]
    times = [k.time for k in run(s, frames)]
    assert times == pytest.approx([0, 1, 2, 3, 4, 1000, 1001, 1002, 1003, 1004], abs=1e-6)
    assert s.discontinuities == 0


def test_a_file_continuing_a_stream_starts_at_its_origin() -> None:
    s = Sampler(1.0, live=False, origin=120.5)
    times = [k.time for k in run(s, [frame(3 + i / 10, 0.0) for i in range(30)])]  # pts start at 3 s
    assert times == pytest.approx([120.5, 121.5, 122.5], abs=1e-6)


def test_live_stall_leaves_a_gap_without_a_burst() -> None:
    s = Sampler(1.0, live=True)
    t0 = 1000.0
    before = [frame(i / 10, t0 + i / 10) for i in range(30)]  # 3 s
    # 10 s with no frames (pts and wall both advance: a real stall, not a jump)
    after = [frame(13 + i / 10, t0 + 13 + i / 10) for i in range(30)]
    kept = run(s, before + after)
    times = [k.time - t0 for k in kept]
    assert s.discontinuities == 0
    assert times == pytest.approx([0, 1, 2, 13, 14, 15], abs=0.11)


def test_live_pts_running_far_ahead_of_wall_is_a_jump() -> None:
    s = Sampler(1.0, live=True)
    frames = [frame(i / 10, 500 + i / 10) for i in range(20)] + [
        frame(3600 + i / 10, 502 + i / 10) for i in range(20)
    ]
    times = [k.time for k in run(s, frames)]
    assert_monotonic(times)
    assert times[-1] - times[0] < 5  # not an hour


def test_only_large_frames_are_shrunk() -> None:
    s = Sampler(1.0, live=False, max_side=960)
    big = s.push(frame(0.0, 0.0, size=(1920, 1080)))
    assert big is not None and big.rgb.shape == (540, 960, 3)
    s2 = Sampler(1.0, live=False, max_side=None)
    full = s2.push(frame(0.0, 0.0, size=(1920, 1080)))
    assert full is not None and full.rgb.shape == (1080, 1920, 3)


def test_rejects_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        Sampler(0)


def sampled(t: float, value: int = 0, shape: tuple[int, int] = (8, 8)) -> SampledFrame:
    return SampledFrame(np.full((*shape, 3), value, np.uint8), t, 100.0 + t)


def test_clip_assembly_cuts_four_frame_clips_and_pads_the_tail() -> None:
    a = ClipAssembler("cam", 4)
    clips = [c for i in range(10) for c in a.push(sampled(float(i), i), 1.0)]
    assert [c.start for c in clips] == [0.0, 4.0]
    assert [c.end for c in clips] == [4.0, 8.0]
    assert all(c.frames.shape == (4, 8, 8, 3) and c.real_frames == 4 for c in clips)
    assert clips[1].frames[:, 0, 0, 0].tolist() == [4, 5, 6, 7]
    assert clips[1].wall_start == 104.0
    tail = a.flush(1.0)
    assert len(tail) == 1 and tail[0].real_frames == 2
    assert tail[0].start == 8.0 and tail[0].end == 10.0
    assert tail[0].frames[:, 0, 0, 0].tolist() == [8, 9, 9, 9]  # padded with the last real frame
    assert a.flush(1.0) == []


def test_clip_never_spans_a_gap_or_a_size_change() -> None:
    a = ClipAssembler("cam", 4)
    out = [c for t in (0.0, 1.0, 20.0, 21.0, 22.0, 23.0) for c in a.push(sampled(t), 1.0)]
    assert [(c.start, c.end, c.real_frames) for c in out] == [(0.0, 2.0, 2), (20.0, 24.0, 4)]
    b = ClipAssembler("cam", 4)
    out = [c for c in b.push(sampled(0.0), 1.0) + b.push(sampled(1.0, shape=(4, 6)), 1.0)]
    assert len(out) == 1 and out[0].frames.shape == (4, 8, 8, 3)


def test_thumbnail_is_a_small_decodable_jpeg() -> None:
    rgb = np.zeros((360, 640, 3), np.uint8)
    rgb[:, :320] = (255, 0, 0)
    data = jpeg_thumbnail(rgb, max_width=160)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    assert len(data) < 20_000
    codec = av.CodecContext.create("mjpeg", "r")
    (decoded,) = codec.decode(av.Packet(data))
    back = decoded.to_ndarray(format="rgb24")
    assert back.shape == (90, 160, 3)
    assert back[45, 20, 0] > 200 and back[45, 20, 2] < 60  # left half red
    assert back[45, 140].max() < 60  # right half black
    with pytest.raises(ValueError, match="uint8"):
        jpeg_thumbnail(np.zeros((4, 4), np.float32), max_width=160)


def test_live_burst_at_connect_never_runs_ahead_of_the_wall_clock() -> None:
    # an RTSP server opens with ~1.5 s of buffered frames decoded at once, then real time
    t0 = 5000.0
    burst = [frame(i / 15, t0 + i * 0.0001) for i in range(24)]
    steady = [frame(2 + i / 15, t0 + 0.2 + i / 15) for i in range(90)]
    s = Sampler(2.0, live=True)
    kept = run(s, burst + steady)
    assert all(k.time <= k.wall + 1e-6 for k in kept)
    assert_monotonic([k.time for k in kept])
    # after the burst the timeline follows the clock (capture = decode - the smallest latency seen)
    late = [k for k in kept if k.wall > t0 + 1]
    assert late and all(abs(k.time - k.wall) < 0.05 for k in late)


def test_clips_from_a_fine_frame_grid_never_overlap() -> None:
    s, a = Sampler(2.0, live=False), ClipAssembler("cam", 4)
    clips = []
    for i in range(15 * 12):  # 12 s at 15 fps: kept frames fall up to 1/15 s after their slot
        k = s.push(frame(i / 15, 0.0))
        if k is not None:
            clips.extend(a.push(k, s.step))
    assert len(clips) == 6
    for c, d in itertools.pairwise(clips):
        assert c.end <= d.start + 1e-9
        assert c.times[-1] < c.end
    assert clips[-1].end == pytest.approx(12.0)
