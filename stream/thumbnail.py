"""A small JPEG of one frame per clip, for the memory timeline. PyAV's MJPEG encoder, no Pillow."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def thumbnail_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """Fit inside `max_width` keeping the aspect; even sizes because the JPEG is 4:2:0."""
    scale = min(1.0, max_width / width)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def jpeg_thumbnail(rgb: np.ndarray, max_width: int) -> bytes:
    """rgb: [H, W, 3] uint8 -> JPEG bytes (a few kB at 160 px wide, `IngestSettings.thumbnail_width`)."""
    import av

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 frame, got {rgb.dtype} {list(rgb.shape)}")
    w, h = thumbnail_size(rgb.shape[1], rgb.shape[0], max_width)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    small = frame.reformat(width=w, height=h, format="yuvj420p", interpolation="AREA")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuvj420p"
    codec.time_base = Fraction(1, 1)
    packets = codec.encode(small) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)
