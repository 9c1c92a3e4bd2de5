"""Writing a world to a video file (H.264 through PyAV)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .world import World

log = logging.getLogger(__name__)


def write_mp4(
    world: World,
    path: str | Path,
    *,
    seconds: float,
    fps: int | None = None,
    start: float = 0.0,
    crf: int = 23,
) -> int:
    """Encode `seconds` of the world from `start` at `fps` (default: the style's) as H.264 in an MP4
    (or any container PyAV infers from the suffix, e.g. .mkv). Frame k shows world time start + k/fps.
    Noise and blur of the style are applied; its codec round trip is not (the file's encoder is the
    codec). Returns the number of frames written."""
    import av

    fps = fps or world.style.video_fps
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a positive number, got {seconds}")
    if fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps}")
    n = max(1, round(seconds * fps))
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = world.style.width, world.style.height, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": str(crf)}
        for frame in world.frames(fps, start, n, offset=0.0, codec=False):
            assert frame.image is not None
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.image, format="rgb24")))
        out.mux(stream.encode())
    log.info("wrote %s: %d frames at %d fps", path, n, fps)
    return n
