"""A generated demo video, so the quick start needs no camera and no download.

The scene is simple on purpose (a ball crossing a plain background, changing colour every segment,
a counter square) so that later a small trained model can be asked about it and be checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}


def demo_frame(t: float, width: int = 320, height: int = 240, segment_s: float = 15.0) -> np.ndarray:
    """The scene at time t seconds: [H, W, 3] uint8 RGB."""
    img = np.full((height, width, 3), 235, dtype=np.uint8)
    names = list(COLOURS)
    colour = COLOURS[names[int(t // segment_s) % len(names)]]
    radius = height // 8
    # the ball sweeps left to right once per segment and bounces vertically
    phase = (t % segment_s) / segment_s
    cx = int(radius + phase * (width - 2 * radius))
    cy = int(height / 2 + (height / 4) * np.sin(2 * np.pi * t / 3.0))
    yy, xx = np.ogrid[:height, :width]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = colour
    # a dark square per elapsed segment along the bottom edge: something to count
    side = height // 12
    for i in range(int(t // segment_s) % 8 + 1):
        x0 = 4 + i * (side + 4)
        img[height - side - 4 : height - 4, x0 : x0 + side] = 40
    return img


def write_demo_video(
    path: str | Path, *, seconds: float = 60.0, fps: int = 10, size: tuple[int, int] = (320, 240)
) -> int:
    """Encode the demo scene as H.264 (mp4/mkv) and return the number of frames written."""
    import av

    width, height = size
    n = round(seconds * fps)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(demo_frame(i / fps, width, height), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return n
