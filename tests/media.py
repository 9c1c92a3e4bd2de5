"""Small generated test media (PyAV): moving patterns in mp4/mkv/webm, VFR, HLS, and broken inputs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx", ".ts": "libx264"}


def pattern(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """An RGB frame like ffmpeg's testsrc: colour bars plus a white square moving with `index`."""
    # img: [H, W, 3] uint8
    img = np.zeros((height, width, 3), dtype=np.uint8)
    bars = np.array(
        [[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 0, 0], [0, 0, 255]],
        dtype=np.uint8,
    )
    cols = (np.arange(width) * len(bars)) // width
    img[:] = bars[cols][None, :, :]
    side = max(4, height // 4)
    x = (index * 3) % max(1, width - side)
    y = (index * 2) % max(1, height - side)
    img[y : y + side, x : x + side] = 255 - img[y : y + side, x : x + side]
    return img


def write_video(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int | Fraction = 10,
    size: tuple[int, int] = (64, 48),
    codec: str | None = None,
    pts_ms: list[int] | None = None,
    colour: tuple[int, int, int] | None = None,
    keyframe_every: int | None = None,
    garbage_s: tuple[float, float] | None = None,
) -> int:
    """Write a test video and return its frame count.

    With `pts_ms` the frames get exactly those presentation times (milliseconds): a variable frame rate.
    `colour`: every frame that solid colour (tells two videos apart in their thumbnails).
    `garbage_s=(a, b)`: the bytes of the frames shown from a to b seconds are overwritten with random
    bytes in the file (a corrupt middle: the demuxer still finds the packets, the decoder fails on
    them); `keyframe_every` frames the decoder can start again from.
    """
    codec = codec or CODECS.get(path.suffix, "libx264")
    width, height = size
    n = len(pts_ms) if pts_ms is not None else round(seconds * fps)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency"}
            if keyframe_every:
                stream.codec_context.options |= {"g": str(keyframe_every), "keyint_min": str(keyframe_every)}
        for i in range(n):
            if colour is not None:
                rgb = np.empty((height, width, 3), np.uint8)
                rgb[:] = colour
            else:
                rgb = pattern(i, width, height)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts_ms is not None:
                frame.pts = pts_ms[i]
                frame.time_base = Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    if garbage_s is not None:
        overwrite_frames(path, *garbage_s)
    return n


def overwrite_frames(path: Path, start: float, end: float) -> None:
    """Overwrite, in the file, the bytes of every packet shown from `start` to `end` seconds."""
    with av.open(str(path)) as container:
        spans = [
            (packet.pos, packet.size)
            for packet in container.demux(video=0)
            if packet.pts is not None and packet.time_base is not None and packet.pos is not None
            and start <= float(packet.pts * packet.time_base) < end
        ]  # fmt: skip
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(5)
    for pos, size in spans:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def write_audio_only(path: Path, seconds: float = 1.0) -> None:
    """An mp4 with one AAC audio stream and no video."""
    rate = 48000
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = int(seconds * rate)
        step = 1024
        t = np.arange(samples, dtype=np.float32) / rate
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, samples, step):
            chunk = wave[None, start : start + step]  # [channels=1, S]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_corrupt(path: Path, good: Path) -> None:
    """A file that starts like an mp4 but has its middle overwritten and its index (moov) cut off."""
    data = bytearray(good.read_bytes())
    cut = data[: max(64, len(data) // 2)]
    for i in range(32, len(cut), 7):
        cut[i] = (cut[i] * 31 + 17) % 256
    path.write_bytes(bytes(cut))


def write_garbage(path: Path, size: int = 4096) -> None:
    """Bytes that are no media format at all."""
    rng = np.random.default_rng(7)
    path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def write_hls(
    folder: Path, *, seconds: float = 3.0, fps: int = 10, segment_s: float = 1.0
) -> tuple[Path, int]:
    """An HLS VOD playlist with MPEG-TS segments in `folder`; returns (playlist path, frame count)."""
    folder.mkdir(parents=True, exist_ok=True)
    playlist = folder / "index.m3u8"
    n = round(seconds * fps)
    options = {
        "hls_time": str(segment_s),
        "hls_playlist_type": "vod",
        "hls_segment_filename": str(folder / "seg%03d.ts"),
    }
    with av.open(str(playlist), mode="w", format="hls", options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p"
        # A keyframe per second so segments can be cut at segment_s.
        stream.codec_context.options = {"preset": "ultrafast", "g": str(fps), "keyint_min": str(fps)}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(pattern(i), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return playlist, n
