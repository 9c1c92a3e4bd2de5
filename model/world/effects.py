"""Camera and codec effects on rendered frames: sensor noise, lens blur, JPEG and H.264 round trips.

All deterministic: noise comes from one shared field per (frame size, noise level), read at an offset
drawn from (world seed, frame time), so a frame always gets the same grain and costs one add, not a
fresh draw of H x W x 3 normals (a new world per short training video would pay that every time).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from .style import Style

NOISE_MARGIN = 64  # the noise field is this much larger than a frame; offsets move within it
NOISE_SIDE = 832  # covers every Style.random size (long side <= 712) with one field per noise level


class Effects:
    """The post-render pipeline of one style. `apply` per frame; `h264` per run of frames."""

    def __init__(self, style: Style, seed: int) -> None:
        self.style = style
        self._seed = seed

    def apply(self, frame: np.ndarray, key: int, *, codec: bool = True) -> np.ndarray:
        """Noise, blur and (for the "jpeg" codec, with `codec`) a JPEG round trip; `key` picks the
        noise offset."""
        s = self.style
        if s.noise > 0:
            frame = self._add_noise(frame, key)
        if s.blur:
            frame = blur121(frame)
        if codec and s.codec == "jpeg":
            frame = jpeg_roundtrip(frame, s.quality)
        return frame

    def _add_noise(self, frame: np.ndarray, key: int) -> np.ndarray:
        h, w = frame.shape[:2]
        field = noise_field(max(h, w, NOISE_SIDE), self.style.noise)
        mix = ((key ^ (self._seed * 0x9E3779B1)) * 2654435761) & 0xFFFFFFFF
        dy, dx = mix % NOISE_MARGIN, (mix >> 8) % NOISE_MARGIN
        out = frame.astype(np.int16)
        out += field[dy : dy + h, dx : dx + w]
        return np.clip(out, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def noise_field(side: int, std: float) -> np.ndarray:
    """Gaussian grain (int16), NOISE_MARGIN larger than `side` each way; shared, never written."""
    rng = np.random.default_rng(0x0153)
    field = rng.normal(0.0, std, size=(side + NOISE_MARGIN, side + NOISE_MARGIN, 3))
    out = np.round(field).astype(np.int16)
    out.flags.writeable = False
    return out


def blur121(frame: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    f = np.pad(frame, ((1, 1), (1, 1), (0, 0)), mode="edge").astype(np.uint16)
    f = f[:-2] + 2 * f[1:-1] + f[2:]
    f = f[:, :-2] + 2 * f[:, 1:-1] + f[:, 2:]
    return ((f + 8) >> 4).astype(np.uint8)


def jpeg_roundtrip(frame: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG (4:2:0) and decode again: blocking, ringing and chroma bleed."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))


def h264_roundtrip(frames: Sequence[np.ndarray], crf: int) -> list[np.ndarray]:
    """Encode a run of frames with x264 (one GOP, yuv420p) and decode them again."""
    import av

    h, w = frames[0].shape[:2]
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"crf": str(crf), "preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        vf.pts = i
        packets.extend(enc.encode(vf))
    packets.extend(enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    out: list[np.ndarray] = []
    for p in packets:
        out.extend(fr.to_ndarray(format="rgb24") for fr in dec.decode(p))
    out.extend(fr.to_ndarray(format="rgb24") for fr in dec.decode(None))
    if len(out) != len(frames):
        raise RuntimeError(f"x264 round trip returned {len(out)} frames for {len(frames)}")
    return out
