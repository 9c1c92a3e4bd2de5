"""The world's closed set of concepts: colours, shapes, sizes, textures and card glyphs.

Everything the world draws and every word it says about a drawing comes from these tables, so the
question generator, the renderer and the vocabulary agree by construction. Colours are far apart in
RGB (a jittered, noisy, JPEG'd shade is still nearest its own name) and backgrounds are kept to
low-saturation mid tones that no object colour is near.
"""

from __future__ import annotations

import numpy as np

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (230, 210, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 220),
    "purple": (150, 60, 200),
    "white": (250, 250, 250),
    "black": (25, 25, 25),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
# The second tone of a textured object: towards black (< 0) or white (> 0) by this fraction, chosen
# per colour so that the tone is still nearest its own name by >= 40 RGB units (orange sits between
# red and yellow and can only darken a little).
SECOND_TONE: dict[str, float] = {
    "red": -0.22,
    "orange": -0.15,
    "yellow": 0.22,
    "green": -0.22,
    "blue": -0.22,
    "purple": 0.22,
    "white": -0.15,
    "black": 0.15,
}
SHADE = 12  # max per-channel offset of an object's colour from its palette colour

# Haystack shapes. Needle-only shapes never appear in ordinary scenes, so a star or a heart is
# distinctive by itself (as a needle image is in the paper's haystacks).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
NEEDLE_SHAPES: tuple[str, ...] = ("star", "heart")
ALL_SHAPES: tuple[str, ...] = SHAPES + NEEDLE_SHAPES

# Radius as a fraction of the frame's shorter side. "small" objects are 11-16 px across at 224 (about
# one 16-px patch: colour survives, shape mostly does not) and twice that at 448.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.025, 0.035),
    "medium": (0.065, 0.09),
    "large": (0.12, 0.16),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

TEXTURES: tuple[str, ...] = ("solid", "stripes", "checks", "dots", "shaded")

DIGITS = "0123456789"
# No I or O (they read as 1 and 0), no Q (as O), and no A-D, which name the answer options.
LETTERS = "EFGHJKLMNPRSTUVWXYZ"
GLYPHS = DIGITS + LETTERS

# Card needles: white paper, a thick coloured border, black glyphs. White never borders a card.
CARD_PAPER: RGB = (246, 244, 238)
CARD_INK: RGB = (15, 15, 15)
BORDER_COLOURS: tuple[str, ...] = tuple(c for c in COLOUR_NAMES if c != "white")

# Backgrounds: grey levels in this range, tinted by at most BACKGROUND_TINT per channel.
BACKGROUND_LEVELS = (70, 205)
BACKGROUND_TINT = 14

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)


def nearest_colour(rgb: np.ndarray | tuple[float, float, float]) -> str:
    """The palette name nearest to an RGB value (Euclidean in RGB)."""
    d = ((_PALETTE - np.asarray(rgb, dtype=np.float32)) ** 2).sum(-1)
    return COLOUR_NAMES[int(d.argmin())]


def second_tone(rgb: np.ndarray) -> np.ndarray:
    """The texture tone that goes with `rgb` (float RGB): same name, lighter or darker."""
    k = SECOND_TONE[nearest_colour(rgb)]
    return rgb + (255.0 - rgb) * k if k > 0 else rgb * (1.0 + k)
