"""Offline video reading for `ask-file`: the release's "dynamic_fps1" frame sampling.

Live streams sample online in flashlive.stream; this module is for whole files, where the frame
count is known up front and frames are picked the way the model was evaluated.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashlive.model.errors import VideoError

log = logging.getLogger(__name__)


@dataclass
class SampledVideo:
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB, F a multiple of clip_frames
    indices: list[int]  # decoded-frame index of each sampled frame
    duration: float  # seconds
    fps: float  # average decoded frames per second


def num_sampled_frames(
    vlen: int, duration: float, *, clip_frames: int, max_frames: int, fps: float = 1.0
) -> int:
    """How many frames dynamic_fps1 takes: ~`fps` per second in whole clips, within the budget."""
    segments = int(fps * duration // clip_frames)
    n = clip_frames * max(segments, 1)
    n = min(n, max_frames)
    if n > vlen:
        n = (vlen // clip_frames) * clip_frames
    return n


def middle_indices(vlen: int, n: int) -> list[int]:
    """Split [0, vlen) into n equal intervals (integer edges) and take each interval's middle."""
    edges = np.linspace(0, vlen, n + 1).astype(int)
    return [int((lo + hi - 1) // 2) for lo, hi in itertools.pairwise(edges)]


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


def _count_frames(path: Path) -> tuple[int, float]:
    """Frame count and duration from the packets alone (no decoding)."""
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
        frame_span = 1.0 / rate if rate > 0 else 0.0
        duration = (last - first) + frame_span
        if stream.duration and stream.time_base:
            duration = max(duration, float(stream.duration * stream.time_base))
        return count, duration


def read_video(
    path: str | Path, *, clip_frames: int = 4, max_frames: int = 512, fps: float = 1.0
) -> SampledVideo:
    """Decode `path` and sample about `fps` frames a second in whole clips (at most `max_frames`)."""
    import av

    path = Path(path)
    if max_frames < clip_frames:
        raise VideoError(f"max_frames must be at least one clip ({clip_frames} frames), got {max_frames}")
    vlen, duration = _count_frames(path)
    n = num_sampled_frames(vlen, duration, clip_frames=clip_frames, max_frames=max_frames, fps=fps)
    if n == 0:
        raise VideoError(f"{path}: {vlen} frames is shorter than one {clip_frames}-frame clip")
    wanted = middle_indices(vlen, n)
    wanted_set = set(wanted)  # distinct: every interval is at least one frame wide
    frames: list[np.ndarray] = []
    with _open(path) as container:
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted_set:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) == n:
                        break
        except av.error.FFmpegError as exc:
            if not frames:
                raise VideoError(f"{path}: corrupt video data ({exc.strerror or exc})") from exc
            log.warning("%s: decoding stopped early: %s", path, exc)
    if len(frames) < n:  # fewer decodable frames than packets: pad with the last, as the release does
        if not frames:
            raise VideoError(f"{path}: no frame could be decoded")
        frames.extend([frames[-1]] * (n - len(frames)))
    return SampledVideo(np.stack(frames), wanted, duration, vlen / duration if duration > 0 else 0.0)
