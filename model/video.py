"""Offline video reading for `ask-file`: the frames the release's `chat()` would feed the model.

Live streams sample online in flashlive.stream; this module is for whole files, where the frame
count is known up front. Which frames: `model/sampling.py` (the release's rule). The duration in the
prompt's time message is the release's too: frame count / average frame rate (decord's
`len(vr) / vr.get_avg_fps()` in `video_utils.py::read_frames_decord`), except for `.avi` files, which
the release reads with PyAV (`read_frames_av`) and times by the stream's duration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashlive.model.errors import VideoError
from flashlive.model.sampling import CHAT_SAMPLING, FrameSampling, SamplingError, sample_frames

log = logging.getLogger(__name__)


@dataclass
class SampledVideo:
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB, N a multiple of the clip length
    indices: list[int]  # decoded-frame index of each sampled frame (the last repeats when padded)
    duration: float  # seconds, as the time message states it
    fps: float  # frames per second the duration was derived with
    vlen: int  # frames in the file


@dataclass(frozen=True)
class _Probe:
    vlen: int  # frames, counted from the packets
    average_rate: float  # the stream's average frame rate, 0 when the container has none
    pts_span: float  # first to last presentation time plus one frame, seconds
    stream_duration: float | None  # the stream's own duration field, seconds


def _open(path: Path):  # type: ignore[no-untyped-def]
    import av

    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({exc.strerror or exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream")
    return container


def _probe(path: Path) -> _Probe:
    """Frame count and timing from the packets alone (no decoding)."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        count, first, last = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                count += 1
                t = float(packet.pts * packet.time_base)
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: corrupt video data ({exc.strerror or exc})") from exc
        if count == 0 or first is None or last is None:
            raise VideoError(f"{path}: the video stream holds no frames")
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        span = (last - first) + (1.0 / rate if rate > 0 else 0.0)
        stream_duration = None
        if stream.duration and stream.time_base:
            stream_duration = float((stream.duration - (stream.start_time or 0)) * stream.time_base)
        return _Probe(count, rate, span, stream_duration)


def release_timing(probe: _Probe, suffix: str) -> tuple[float, float]:
    """(duration, fps) as the release derives them for this file."""
    if suffix.lower() == ".avi" and probe.stream_duration:
        return probe.stream_duration, probe.vlen / probe.stream_duration
    if probe.average_rate > 0:
        return probe.vlen / probe.average_rate, probe.average_rate
    # No average rate in the container (rare): time it by its timestamps instead.
    log.warning("no average frame rate in the stream; timing the video by its timestamps")
    duration = probe.pts_span if probe.pts_span > 0 else float(probe.vlen)
    return duration, probe.vlen / duration


def read_video(
    path: str | Path, *, clip_frames: int = 4, sampling: FrameSampling = CHAT_SAMPLING
) -> SampledVideo:
    """Decode `path` and take the frames the release's rule picks (see model/sampling.py)."""
    import av

    path = Path(path)
    try:
        sampling.check(clip_frames)
    except SamplingError as exc:
        raise VideoError(str(exc)) from None
    probe = _probe(path)
    duration, fps = release_timing(probe, path.suffix)
    indices = sample_frames(probe.vlen, duration, sampling)
    wanted = set(indices)  # the middles are distinct; padding only repeats the last
    decoded: dict[int, np.ndarray] = {}
    with _open(path) as container:
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    decoded[i] = frame.to_ndarray(format="rgb24")
                    if len(decoded) == len(wanted):
                        break
        except av.error.FFmpegError as exc:
            if not decoded:
                raise VideoError(f"{path}: corrupt video data ({exc.strerror or exc})") from exc
            log.warning("%s: decoding stopped early: %s", path, exc)
    if not decoded:
        raise VideoError(f"{path}: no frame could be decoded")
    frames: list[np.ndarray] = []
    for i in indices:  # fewer decodable frames than packets: stand in the last one decoded
        frames.append(decoded[i] if i in decoded else frames[-1] if frames else decoded[min(decoded)])
    return SampledVideo(np.stack(frames), indices, duration, fps, probe.vlen)
