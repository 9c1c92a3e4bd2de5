"""How a world is drawn: frame size, backgrounds, textures, noise, blur, codec artefacts, glyph font.

The scene script says *what* is there; the style says how the camera and the encoder see it. Tests use
`Style()` (plain: one grey, no noise, no artefacts); training draws `Style.random(seed)` per video so
that a model learns colours and shapes rather than one renderer's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .script import ScriptError

BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "noise", "stripes", "checks")
CODECS: tuple[str, ...] = ("none", "jpeg", "h264")
FONTS: tuple[str, ...] = ("bitmap", "sans")
# (width, height) ratios drawn by Style.random: landscape, square and portrait cameras.
ASPECTS: tuple[tuple[int, int], ...] = ((4, 3), (16, 9), (1, 1), (3, 2), (3, 4), (9, 16))


@dataclass(frozen=True)
class Style:
    width: int = 224
    height: int = 224
    video_fps: int = 10  # frame rate of MP4 files written from the world
    backgrounds: tuple[str, ...] = ("solid",)
    background: tuple[int, int, int] | None = (128, 128, 128)  # solid colour; None: drawn per scene
    textures: bool = False  # draw objects' stripes/checks/dots/shading (else flat colour)
    shade: bool = False  # apply each object's small colour offset
    noise: float = 0.0  # std of per-pixel Gaussian noise, in uint8 levels
    blur: bool = False  # a [1, 2, 1] blur, like a soft lens
    codec: str = "none"
    quality: int = 75  # JPEG quality (codec "jpeg") or x264 CRF (codec "h264")
    font: str = "bitmap"

    def __post_init__(self) -> None:
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise ScriptError(f"frame size must be even and at least 32x32, got {self.width}x{self.height}")
        if self.video_fps < 1:
            raise ScriptError(f"video_fps must be positive, got {self.video_fps}")
        if not self.backgrounds or any(b not in BACKGROUND_KINDS for b in self.backgrounds):
            raise ScriptError(f"backgrounds must be a non-empty subset of {BACKGROUND_KINDS}")
        if not 0 <= self.noise <= 40:
            raise ScriptError(f"noise must be in [0, 40], got {self.noise}")
        if self.codec not in CODECS:
            raise ScriptError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if self.codec == "jpeg" and not 5 <= self.quality <= 95:
            raise ScriptError(f"JPEG quality must be in [5, 95], got {self.quality}")
        if self.codec == "h264" and not 0 <= self.quality <= 51:
            raise ScriptError(f"x264 CRF must be in [0, 51], got {self.quality}")
        if self.font not in FONTS:
            raise ScriptError(f"font must be one of {FONTS}, got {self.font!r}")

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    @classmethod
    def random(cls, seed: int | np.random.Generator) -> Style:
        """A random camera: size and aspect, background family, textures, noise, blur, codec, font."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng([seed, 0x57])
        aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
        short = int(rng.integers(160, 401))
        scale = short / min(aw, ah)
        width, height = (round(aw * scale / 2) * 2, round(ah * scale / 2) * 2)
        n_bg = int(rng.integers(1, len(BACKGROUND_KINDS) + 1))
        backgrounds = tuple(str(b) for b in rng.choice(BACKGROUND_KINDS, size=n_bg, replace=False))
        codec = str(rng.choice(CODECS, p=[0.4, 0.4, 0.2]))
        quality = int(rng.integers(30, 91)) if codec == "jpeg" else int(rng.integers(20, 33))
        return cls(
            width=width,
            height=height,
            video_fps=int(rng.choice([5, 10, 15, 24, 25, 30])),
            backgrounds=backgrounds,
            background=None,
            textures=bool(rng.random() < 0.7),
            shade=True,
            noise=float(rng.choice([0.0, 2.0, 4.0, 6.0])),
            blur=bool(rng.random() < 0.25),
            codec=codec,
            quality=quality,
            font=str(rng.choice(FONTS)),
        )
