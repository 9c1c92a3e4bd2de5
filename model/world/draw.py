"""Rasterising truths into frames: backgrounds, object sprites, glyphs and cards, all numpy.

Speed comes from caching: a background is drawn once per scene, a sprite (anti-aliased alpha mask +
texture, premultiplied) once per (shape, pixel size, rotation, texture, colour), a glyph once per (font,
character, height). A frame is then a copy of the background plus a few small alpha blends.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

from .palette import CARD_INK, CARD_PAPER, COLOURS, second_tone
from .script import Background

K = TypeVar("K")
V = TypeVar("V")
SUPERSAMPLE = 4


class LRU(Generic[K, V]):
    """A small least-recently-used cache (sprites, backgrounds)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        value = make()
        self._d[key] = value
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return value


# --- shapes: inside tests on coordinates in [-1, 1]^2 (y down), every shape inside the unit disc -----
def _polygon(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon, vectorised over the sample grid."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = (x2 - x1) * (v - y1) / (y2 - y1) + x1
        inside ^= crosses & (u < x_at)
    return inside


def _star_points(n: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        r = 1.0 if k % 2 == 0 else inner
        a = -np.pi / 2 + k * np.pi / n
        pts.append((r * float(np.cos(a)), r * float(np.sin(a))))
    return pts


_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)],
    "triangle": [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)],
    "diamond": [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)],
    "cross": [
        (-0.3, -0.95),
        (0.3, -0.95),
        (0.3, -0.3),
        (0.95, -0.3),
        (0.95, 0.3),
        (0.3, 0.3),
        (0.3, 0.95),
        (-0.3, 0.95),
        (-0.3, 0.3),
        (-0.95, 0.3),
        (-0.95, -0.3),
        (-0.3, -0.3),
    ],
    "star": _star_points(),
}


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 0.9
    if shape == "heart":
        # the classic implicit heart, scaled into the unit disc, point down
        x, y = u * 1.25, -(v * 1.25 + 0.15)
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    return _polygon(u, v, _POLYGONS[shape])


@functools.lru_cache(maxsize=512)
def shape_alpha(shape: str, diameter: int, rotation: float = 0.0) -> np.ndarray:
    """Anti-aliased coverage [d, d] float32 in [0, 1] of `shape` in a d-pixel box."""
    d, s = diameter, SUPERSAMPLE
    c = (np.arange(d * s, dtype=np.float32) + 0.5) / (d * s) * 2 - 1
    u, v = np.meshgrid(c, c)
    if rotation:
        a = np.deg2rad(rotation)
        u, v = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
    inside = _inside(shape, u, v).astype(np.float32)
    return inside.reshape(d, s, d, s).mean(axis=(1, 3))


def texture_rgb(texture: str, rgb: tuple[int, int, int], d: int) -> np.ndarray:
    """[d, d, 3] float32 colours of a textured object (the alpha mask cuts the shape out)."""
    base = np.asarray(rgb, dtype=np.float32)
    out = np.broadcast_to(base, (d, d, 3)).copy()
    if texture == "solid" or d < 20:
        return out
    yy, xx = np.mgrid[0:d, 0:d].astype(np.float32)
    cell = max(3.0, d / 5)
    alt = second_tone(base)
    if texture == "stripes":
        mask = ((xx + yy) / cell) % 2 < 1
    elif texture == "checks":
        mask = ((xx // cell) + (yy // cell)) % 2 == 1
    elif texture == "dots":
        cy, cx = (yy % cell) - cell / 2, (xx % cell) - cell / 2
        mask = cy * cy + cx * cx < (cell * 0.28) ** 2
    else:  # shaded: the base colour at a highlight towards the top left, the second tone far from it
        r = np.hypot(xx - d * 0.35, yy - d * 0.35) / d
        w = np.clip(r * 1.3, 0.0, 1.0)[..., None]
        return out + (alt - out) * w
    out[mask] = alt
    return out


@functools.lru_cache(maxsize=2048)
def sprite(
    shape: str, diameter: int, rotation: float, texture: str, rgb: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied colour [d, d, 3], 1 - alpha [d, d, 1]), float32, ready to blend."""
    alpha = shape_alpha(shape, diameter, rotation)[..., None]
    colour = texture_rgb(texture, rgb, diameter)
    return colour * alpha, 1.0 - alpha


def blend(frame: np.ndarray, prem: np.ndarray, inv: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-blend a premultiplied sprite into `frame` with its top-left corner at (x0, y0), clipped."""
    h, w = frame.shape[:2]
    sh, sw = inv.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + sw, w), min(y0 + sh, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sx0, sy0 = fx0 - x0, fy0 - y0
    sl = (slice(sy0, sy0 + fy1 - fy0), slice(sx0, sx0 + fx1 - fx0))
    region = frame[fy0:fy1, fx0:fx1]
    out = region * inv[sl] + prem[sl]
    region[...] = (out + 0.5).astype(np.uint8)


# --- glyphs ---------------------------------------------------------------------------------------
_BITMAP_ROWS = {
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
}


def _bitmap(ch: str) -> np.ndarray:
    rows = _BITMAP_ROWS[ch].split()
    return np.array([[c == "#" for c in r] for r in rows], dtype=np.float32)


def _resample(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Box-filtered nearest resampling of a small mask to h x w (anti-aliased edges)."""
    s = SUPERSAMPLE
    rows = (np.arange(h * s) * mask.shape[0]) // (h * s)
    cols = (np.arange(w * s) * mask.shape[1]) // (w * s)
    big = mask[rows][:, cols]
    return big.reshape(h, s, w, s).mean(axis=(1, 3)).astype(np.float32)


@functools.lru_cache(maxsize=256)
def glyph_alpha(ch: str, height: int, font: str = "bitmap") -> np.ndarray:
    """Coverage [height, width] float32 of one card glyph."""
    if ch not in _BITMAP_ROWS:
        raise KeyError(f"no glyph for {ch!r}")
    if font == "bitmap":
        bits = _bitmap(ch)
        return _resample(bits, height, max(1, round(height * 5 / 7)))
    return _sans_glyph(ch, height)


def _sans_glyph(ch: str, height: int) -> np.ndarray:
    """Pillow's built-in scalable sans font, cropped to the ink and scaled to `height`."""
    from PIL import Image, ImageDraw, ImageFont

    big = 96
    font = ImageFont.load_default(size=big)
    img = Image.new("L", (big * 2, big * 2), 0)
    ImageDraw.Draw(img).text((big // 2, big // 4), ch, fill=255, font=font)
    box = img.getbbox()
    if box is None:  # pragma: no cover - every glyph has ink
        return _resample(_bitmap(ch), height, max(1, round(height * 5 / 7)))
    ink = img.crop(box)
    w = max(1, round(height * ink.width / ink.height))
    ink = ink.resize((w, height), Image.Resampling.BILINEAR)
    return np.asarray(ink, dtype=np.float32) / 255.0


# --- backgrounds -----------------------------------------------------------------------------------
def background_image(bg: Background, width: int, height: int) -> np.ndarray:
    """[H, W, 3] uint8 for one scene's background."""
    c1 = np.asarray(bg.colour, dtype=np.float32)
    c2 = np.asarray(bg.colour2, dtype=np.float32)
    if bg.kind == "solid":
        return np.broadcast_to(c1.astype(np.uint8), (height, width, 3)).copy()
    short = min(width, height)
    a = np.deg2rad(bg.angle)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    proj = xx * np.cos(a) + yy * np.sin(a)
    if bg.kind == "gradient":
        k = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif bg.kind == "stripes":
        k = ((proj / (bg.period * short)) % 1.0 < 0.5).astype(np.float32)
    elif bg.kind == "checks":
        other = -xx * np.sin(a) + yy * np.cos(a)
        p = bg.period * short
        k = ((np.floor(proj / p) + np.floor(other / p)) % 2).astype(np.float32)
    elif bg.kind == "noise":
        k = _value_noise(bg.seed, width, height, cell=bg.period * short)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    img = c1 + (c2 - c1) * k[..., None]
    return (img + 0.5).astype(np.uint8)


def _value_noise(seed: int, width: int, height: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid, bilinearly interpolated."""
    rng = np.random.default_rng(seed)
    gh, gw = int(height / cell) + 2, int(width / cell) + 2
    grid = rng.random((gh, gw)).astype(np.float32)
    ys = np.arange(height, dtype=np.float32) / cell
    xs = np.arange(width, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx


# --- cards -----------------------------------------------------------------------------------------
def draw_card(
    frame: np.ndarray,
    box: tuple[int, int, int, int],
    border: str,
    *,
    glyph: str | None,
    pointer: str | None,
    font: str,
) -> None:
    """A card in pixel box (x0, y0, x1, y1): paper, a thick border, and a glyph or a colour disc."""
    x0, y0, x1, y1 = box
    ch, cw = y1 - y0, x1 - x0
    t = max(2, round(ch * 0.11))
    _fill(frame, x0, y0, x1, y1, COLOURS[border])
    _fill(frame, x0 + t, y0 + t, x1 - t, y1 - t, CARD_PAPER)
    if glyph is not None:
        gh = max(5, round(ch * 0.55))
        mask = glyph_alpha(glyph, gh, font)
        gy, gx = y0 + (ch - mask.shape[0]) // 2, x0 + (cw - mask.shape[1]) // 2
        ink = np.asarray(CARD_INK, dtype=np.float32)
        alpha = mask[..., None]
        blend(frame, ink * alpha, 1.0 - alpha, gx, gy)
    elif pointer is not None:
        d = max(3, round(min(ch, cw) * 0.56))
        prem, inv = sprite("circle", d, 0.0, "solid", COLOURS[pointer])
        blend(frame, prem, inv, x0 + (cw - d) // 2, y0 + (ch - d) // 2)


def _fill(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
    h, w = frame.shape[:2]
    frame[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = rgb
