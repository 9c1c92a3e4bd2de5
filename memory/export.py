"""Thumbnails -> an MP4 (one frame per clip) or a contact sheet (JPEG or PNG grid), with PyAV only."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
SHEET_SUFFIXES = (".jpg", ".jpeg", ".png")


class ExportError(ValueError):
    """The thumbnails cannot be exported as asked."""


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> [H, W, 3] uint8 RGB."""
    import av

    try:
        frames = av.CodecContext.create("mjpeg", "r").decode(av.Packet(data))
    except av.FFmpegError as exc:
        raise ExportError(f"not a decodable JPEG ({exc})") from None
    if not frames:
        raise ExportError("not a decodable JPEG (no frame)")
    return frames[0].to_ndarray(format="rgb24")


def _even(n: int) -> int:
    return max(2, n - n % 2)


def _fit(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Bring every image to the first one's size (even, for 4:2:0 video)."""
    import av

    h, w = _even(images[0].shape[0]), _even(images[0].shape[1])
    out = []
    for img in images:
        if img.shape[:2] != (h, w):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            img = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
        out.append(img)
    return out


def write_mp4(images: Sequence[np.ndarray], path: Path, fps: float = 4.0) -> int:
    """One video frame per image; returns the number of frames written."""
    import av

    if not images:
        raise ExportError("nothing to export: no thumbnails in that range")
    frames = _fit(images)
    h, w = frames[0].shape[:2]
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in frames:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return len(frames)


def contact_sheet(images: Sequence[np.ndarray], columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile images left to right, top to bottom: [rows*(h+gap)-gap, cols*(w+gap)-gap, 3] uint8."""
    if not images:
        raise ExportError("nothing to export: no thumbnails in that range")
    tiles = _fit(images)
    h, w = tiles[0].shape[:2]
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return sheet


def write_image(image: np.ndarray, path: Path) -> None:
    """Encode one RGB image as JPEG or PNG, by the file's suffix."""
    import av

    png = path.suffix.lower() == ".png"
    img = image if png else image[: _even(image.shape[0]), : _even(image.shape[1])]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    enc = av.CodecContext.create("png" if png else "mjpeg", "w")
    enc.width, enc.height = frame.width, frame.height
    enc.pix_fmt = "rgb24" if png else "yuvj420p"
    enc.time_base = Fraction(1, 1)
    packets = enc.encode(frame if png else frame.reformat(format="yuvj420p"))
    packets += enc.encode(None)
    path.write_bytes(b"".join(bytes(p) for p in packets))


def export_thumbnails(
    thumbnails: Sequence[bytes], path: Path, *, fps: float = 4.0, columns: int = 8
) -> dict[str, object]:
    """Decode the thumbnails and write `path` (.mp4/.mkv/.mov video, or .jpg/.png contact sheet)."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES + SHEET_SUFFIXES:
        raise ExportError(
            f"unknown output type {suffix!r}: use one of {', '.join(VIDEO_SUFFIXES + SHEET_SUFFIXES)}"
        )
    images: list[np.ndarray] = []
    bad = 0
    for data in thumbnails:
        try:
            images.append(decode_jpeg(data))
        except ExportError as exc:
            bad += 1
            log.warning("skipping a thumbnail: %s", exc)
    if suffix in VIDEO_SUFFIXES:
        frames = write_mp4(images, path, fps)
        return {"out": str(path), "format": "video", "frames": frames, "undecodable": bad}
    sheet = contact_sheet(images, columns)
    write_image(sheet, path)
    return {
        "out": str(path),
        "format": "sheet",
        "frames": len(images),
        "width": int(sheet.shape[1]),
        "height": int(sheet.shape[0]),
        "undecodable": bad,
    }
