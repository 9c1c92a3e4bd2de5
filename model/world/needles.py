"""Needle-in-a-video-haystack items, single- and multi-hop, on a world stream.

A needle is held up for exactly one clip (4 sampled frames), as the paper's needle images are repeated
four times in a 1 fps haystack. Single-hop: one card with a digit or letter, or one big star/heart.
Multi-hop (`hops` >= 2 cards): the question names the first card by its border colour; each card but
the last shows a coloured disc, meaning "go to the card with a border of this colour"; the last shows a
glyph. Decoy glyph cards (other borders) put wrong answers on screen, so only following the chain
answers the question; from 3 hops on, a decoy chain starts elsewhere too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .generate import WorldConfig
from .palette import BORDER_COLOURS, COLOUR_NAMES, DIGITS, LETTERS, NEEDLE_SHAPES
from .questions import QA, Facts, ask_multihop, ask_needle
from .script import Needle, ScriptError
from .style import Style
from .world import CARD_ASPECT, CLIP_FRAMES, VideoTruth, World


@dataclass(frozen=True)
class NiahItem:
    world: World
    num_frames: int
    fps: float
    question: QA
    needle_clips: tuple[int, ...]  # clip index in the video of each chain card, in chain order

    def video(self) -> VideoTruth:
        return self.world.video(0.0, self.num_frames, self.fps)


def _card_box(rng: np.random.Generator) -> tuple[float, float, float]:
    """Size and centre (size, x, y) of a card that stays inside the frame at any aspect ratio."""
    size = float(rng.uniform(0.5, 0.75))
    half_w, half_h = size * CARD_ASPECT / 2 + 0.02, size / 2 + 0.02
    return size, float(rng.uniform(half_w, 1 - half_w)), float(rng.uniform(half_h, 1 - half_h))


def needle_clips(rng: np.random.Generator, clips: int, depth: float, count: int) -> list[int]:
    """`count` distinct clip indices: the first at `depth` (0 = first clip, 1 = last), others random."""
    if not 0.0 <= depth <= 1.0:
        raise ScriptError(f"needle depth must be in [0, 1], got {depth}")
    if count > clips:
        raise ScriptError(f"{count} needles do not fit in {clips} clips")
    first = round(depth * (clips - 1))
    others = [c for c in range(clips) if c != first]
    rest = [int(c) for c in rng.choice(others, size=count - 1, replace=False)] if count > 1 else []
    return [first, *rest]


def make_niah(
    seed: int,
    *,
    frames: int = 1000,
    depth: float = 0.5,
    hops: int = 1,
    kind: str = "card",
    decoys: int = 2,
    fps: float = 1.0,
    config: WorldConfig | None = None,
    style: Style | None = None,
    fmt: str = "niah",
    needle_seed: int | None = None,
) -> NiahItem:
    """A haystack of `frames` sampled frames from world `seed` with needles, and its question.

    hops = 1: one needle (`kind` "card" or "object"); hops >= 2: a chain of that many cards plus
    `decoys` decoy glyph cards. `fmt` is the multiple-choice format of single-hop questions.
    `needle_seed` (default: `seed`) draws the needles and the question, so one haystack world can hold
    many different needles (training reuses a few encoded worlds).
    """
    if frames < CLIP_FRAMES:
        raise ScriptError(f"a haystack needs at least {CLIP_FRAMES} frames, got {frames}")
    if hops < 1:
        raise ScriptError(f"hops must be >= 1, got {hops}")
    key = seed if needle_seed is None else needle_seed
    rng = np.random.default_rng([key & 0xFFFFFFFF, 0x4E1D, hops])
    clips = frames // CLIP_FRAMES
    clip_s = CLIP_FRAMES / fps

    def at(clip: int, **fields: Any) -> Needle:
        """A needle held through clip `clip`, with a random card size and place."""
        size, x, y = _card_box(rng)
        return Needle(clip * clip_s, (clip + 1) * clip_s, x=x, y=y, size=size, **fields)

    if hops == 1:
        (c,) = needle_clips(rng, clips, depth, 1)
        if kind == "card":
            pool = DIGITS if rng.random() < 0.5 else LETTERS
            glyph = str(pool[int(rng.integers(len(pool)))])
            border = str(BORDER_COLOURS[int(rng.integers(len(BORDER_COLOURS)))])
            needles = [at(c, kind="card", border=border, glyph=glyph)]
        elif kind == "object":
            shape = str(NEEDLE_SHAPES[int(rng.integers(len(NEEDLE_SHAPES)))])
            colour = str(COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))])
            size = float(rng.uniform(0.15, 0.2))
            x, y = (float(v) for v in rng.uniform(size + 0.02, 1 - size - 0.02, size=2))
            needles = [
                Needle(
                    c * clip_s, (c + 1) * clip_s, "object", x=x, y=y, size=size, shape=shape, colour=colour
                )
            ]
        else:
            raise ScriptError(f"needle kind must be 'card' or 'object', got {kind!r}")
        chain_clips = [c]
    else:
        needles, chain_clips = _chain(rng, clips, depth, hops, decoys, at)
    world = World(seed, config=config, style=style, needles=needles)
    video = world.video(0.0, clips * CLIP_FRAMES, fps)
    facts = Facts(video)
    qrng = np.random.default_rng([key & 0xFFFFFFFF, 0x0A5C, hops])
    if hops == 1:
        qa = ask_needle(facts, qrng, fmt=fmt)
    else:
        first = needles_by_clip(needles, chain_clips[0], clip_s)
        qa = ask_multihop(facts, qrng, start=first.border)
    if qa is None:  # pragma: no cover - the construction above always leaves one answerable needle
        raise ScriptError(f"no answerable needle question for seed {seed}")
    return NiahItem(world, clips * CLIP_FRAMES, fps, qa, tuple(chain_clips))


def needles_by_clip(needles: list[Needle], clip: int, clip_s: float) -> Needle:
    return next(n for n in needles if abs(n.start - clip * clip_s) < 1e-9)


def _chain(
    rng: np.random.Generator, clips: int, depth: float, hops: int, decoys: int, make: Callable[..., Needle]
) -> tuple[list[Needle], list[int]]:
    extra_pointer = 1 if hops >= 3 and decoys >= 1 else 0
    n_cards = hops + decoys + extra_pointer
    if n_cards > len(BORDER_COLOURS):
        raise ScriptError(
            f"{n_cards} cards need more border colours than the {len(BORDER_COLOURS)} there are"
        )
    borders = [str(b) for b in rng.permutation(BORDER_COLOURS)[:n_cards]]
    positions = needle_clips(rng, clips, depth, n_cards)
    pool = DIGITS if rng.random() < 0.5 else LETTERS
    glyphs = [str(g) for g in rng.choice(list(pool), size=1 + decoys, replace=False)]
    needles: list[Needle] = []
    chain = borders[:hops]
    for k in range(hops):
        if k < hops - 1:
            needles.append(make(positions[k], kind="card", border=chain[k], pointer=chain[k + 1]))
        else:
            needles.append(make(positions[k], kind="card", border=chain[k], glyph=glyphs[0]))
    decoy_borders = borders[hops : hops + decoys]
    for j, b in enumerate(decoy_borders):
        needles.append(make(positions[hops + j], kind="card", border=b, glyph=glyphs[1 + j]))
    if extra_pointer:
        needles.append(make(positions[-1], kind="card", border=borders[-1], pointer=decoy_borders[0]))
    return needles, positions[:hops]
