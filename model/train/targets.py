"""What stage 0 teaches the tower: attributes read from its patch tokens, from the world's truth.

Two kinds of targets per clip, both cheap to compute from the ground truth:
- per patch token: the colour and shape of what covers that patch (an object, a card, or the
  background) and a card's glyph, taken from the shapes' exact pixel masks; so every token learns to
  carry the identity of the object it belongs to, which is what survives the HiCo merge;
- per instance (an object, a needle, a whole frame): its tokens pooled, then colour, shape, size,
  motion over the clip's four frames, a card's glyph, border and pointer, the frame's background and
  how many objects it shows.
The heads that read them are small and dropped after stage 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flashlive.model.preprocess import resize_frames_pil
from flashlive.model.world import CLIP_FRAMES, Frame, FrameTruth, Style, World, WorldConfig
from flashlive.model.world.draw import shape_alpha
from flashlive.model.world.palette import (
    ALL_SHAPES,
    BORDER_COLOURS,
    COLOUR_NAMES,
    GLYPHS,
    NEEDLE_SHAPES,
    SIZE_NAMES,
)
from flashlive.model.world.script import MOTIONS, Needle
from flashlive.model.world.style import BACKGROUND_KINDS
from flashlive.model.world.world import sprite_diameter

from .data import CLIP_SECONDS, FPS, START_CLIPS, train_style, world_seed

SEEN = 0.25  # an object more covered than this in a frame is not a target there
PATCH = 16
# Per-patch heads: (name, classes). Colour: 8 colours or background; shape: 7 shapes, a card, or
# background; glyph: a card's glyph or its pointer disc.
PATCH_HEADS: tuple[tuple[str, int], ...] = (
    ("colour", len(COLOUR_NAMES) + 1),
    ("shape", len(ALL_SHAPES) + 2),
    ("glyph", len(GLYPHS) + 1),
)
BACKGROUND_COLOUR = len(COLOUR_NAMES)
CARD_SHAPE, BACKGROUND_SHAPE = len(ALL_SHAPES), len(ALL_SHAPES) + 1
POINTER = len(GLYPHS)  # the glyph class of a pointer card
# Per-instance heads.
HEADS: tuple[tuple[str, int], ...] = (
    ("colour", len(COLOUR_NAMES)),
    ("shape", len(ALL_SHAPES)),
    ("size", len(SIZE_NAMES)),
    ("motion", len(MOTIONS)),
    ("glyph", len(GLYPHS) + 1),
    ("border", len(COLOUR_NAMES)),
    ("pointer", len(COLOUR_NAMES)),
    ("background", len(BACKGROUND_KINDS)),
    ("count", 8),
)
HEAD_INDEX = {name: i for i, (name, _) in enumerate(HEADS)}
MAX_INSTANCES = 16  # objects (<= 7), needles and the clip's four frames
OWNED = 0.4  # a patch is an object's when the object covers this share of it
EMPTY = 0.1  # ... and background when objects and needles cover less than this


@dataclass
class TowerBatch:
    """Clips with their targets. Instance k of clip b pools the clip's patch tokens with pool[b, k]."""

    clips: np.ndarray  # uint8 [B, T, S, S, 3]
    patch_labels: np.ndarray  # int64 [B, T*g*g, len(PATCH_HEADS)], -1: no target
    pool: np.ndarray  # float32 [B, K, T*g*g], rows sum to 1 (0 for padding)
    labels: np.ndarray  # int64 [B, K, len(HEADS)], -1: no target


def tower_batch(
    batch: int,
    rng: np.random.Generator,
    *,
    size: int,
    h264: bool,
    held_out: bool,
    needle_share: float,
    plain_share: float = 0.0,
    mix_share: float = 0.0,
    objects: tuple[int, int] = (1, 5),
) -> TowerBatch:
    """`batch` clips of random worlds and their targets.

    Some clips hold a needle; some are drawn plainly (a flat grey background, no textures, noise or
    codec: crisp shapes, learnt first); some (`mix_share`) are collages of four frames from four
    worlds: four times the objects for what one clip costs (motion is not asked there). Crowded
    scenes (`objects`) give more objects per frame."""
    config = WorldConfig(objects=objects)
    grid = size // PATCH
    per_frame = grid * grid
    clips = np.zeros((batch, CLIP_FRAMES, size, size, 3), np.uint8)
    patch_labels = np.full((batch, CLIP_FRAMES * per_frame, len(PATCH_HEADS)), -1, np.int64)
    pool = np.zeros((batch, MAX_INSTANCES, CLIP_FRAMES * per_frame), np.float32)
    labels = np.full((batch, MAX_INSTANCES, len(HEADS)), -1, np.int64)
    for b in range(batch):
        mixed = rng.random() < mix_share
        pieces = [
            _frames(rng, 1 if mixed else CLIP_FRAMES, config, held_out, needle_share, plain_share, h264)
            for _ in range(CLIP_FRAMES if mixed else 1)
        ]
        found: list[tuple[np.ndarray, np.ndarray]] = []
        f = 0
        for world, frames in pieces:
            images = np.stack([x.image for x in frames if x.image is not None])
            truths = [x.truth for x in frames]
            w, h = world.style.width, world.style.height
            span = slice(f * per_frame, (f + len(frames)) * per_frame)
            clips[b, f : f + len(frames)] = resize_frames_pil(images, size)
            patch_labels[b, span] = np.concatenate([patch_targets(t, w, h, grid) for t in truths])
            for weights, label in instances(truths, grid):
                placed = np.zeros(CLIP_FRAMES * per_frame, np.float32)
                placed[span] = weights
                if mixed:
                    label[HEAD_INDEX["motion"]] = -1  # one frame shows no motion
                found.append((placed, label))
            f += len(frames)
        # objects and needles first, then the frames: a crowded collage drops frame targets first
        found.sort(key=lambda x: x[1][HEAD_INDEX["background"]] >= 0)
        for k, (weights, label) in enumerate(found[:MAX_INSTANCES]):
            pool[b, k] = weights / weights.sum()
            labels[b, k] = label
    return TowerBatch(clips, patch_labels, pool, labels)


def _frames(
    rng: np.random.Generator,
    count: int,
    config: WorldConfig,
    held_out: bool,
    needle_share: float,
    plain_share: float,
    h264: bool,
) -> tuple[World, list[Frame]]:
    """`count` consecutive frames of a random world from a random clip, maybe with a needle."""
    seed = world_seed(rng, held_out=held_out)
    first = int(rng.integers(0, START_CLIPS))
    needles = []
    if rng.random() < needle_share:
        needles = [random_needle(rng, first * CLIP_SECONDS, (first + 1) * CLIP_SECONDS)]
    style = Style() if rng.random() < plain_share else train_style(seed, h264=h264)
    world = World(seed, config=config, style=style, needles=needles)
    start = first * CLIP_SECONDS + int(rng.integers(0, CLIP_FRAMES - count + 1)) / FPS
    return world, list(world.frames(FPS, start=start, count=count))


def random_needle(rng: np.random.Generator, start: float, end: float) -> Needle:
    """One needle held over [start, end): a glyph card, a pointer card or a star/heart."""
    u = rng.random()
    if u < 0.75:
        size = float(rng.uniform(0.5, 0.75))
        hw, hh = size * 0.78 / 2 + 0.02, size / 2 + 0.02  # a card is 0.78 as wide as high
        x, y = float(rng.uniform(hw, 1 - hw)), float(rng.uniform(hh, 1 - hh))
        border = str(BORDER_COLOURS[int(rng.integers(len(BORDER_COLOURS)))])
        if u < 0.55:
            glyph = str(GLYPHS[int(rng.integers(len(GLYPHS)))])
            return Needle(start, end, "card", x=x, y=y, size=size, border=border, glyph=glyph)
        pointer = str(BORDER_COLOURS[int(rng.integers(len(BORDER_COLOURS)))])
        return Needle(start, end, "card", x=x, y=y, size=size, border=border, pointer=pointer)
    size = float(rng.uniform(0.15, 0.2))
    x, y = (float(v) for v in rng.uniform(size + 0.02, 1 - size - 0.02, size=2))
    shape = str(NEEDLE_SHAPES[int(rng.integers(len(NEEDLE_SHAPES)))])
    colour = str(COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))])
    return Needle(start, end, "object", x=x, y=y, size=size, shape=shape, colour=colour)


# ------------------------------------------------------------------------------------ per patch


@functools.lru_cache(maxsize=512)
def _mask(shape: str, diameter: int, rotation: float) -> np.ndarray:
    return shape_alpha(shape, diameter, rotation) >= 0.5


def owner_map(truth: FrameTruth, width: int, height: int) -> np.ndarray:
    """[H, W] int16: which drawn thing covers each pixel, as the renderer stacks them (later on top):
    -1 background, i < len(objects) object i, len(objects) + j needle j."""
    owner = np.full((height, width), -1, np.int16)
    for i, o in enumerate(truth.objects):
        d = sprite_diameter(o.radius, width, height)
        x0, y0, _, _ = o.box(width, height)
        _stamp(owner, _mask(o.shape, d, o.rotation), x0, y0, i)
    for j, nt in enumerate(truth.needles):
        value = len(truth.objects) + j
        x0, y0, x1, y1 = nt.pixel_box(width, height)
        if nt.needle.kind == "card":
            owner[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = value
        else:
            d = sprite_diameter(nt.needle.size, width, height)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            assert nt.needle.shape is not None
            _stamp(owner, _mask(nt.needle.shape, d, 0.0), round(cx - d / 2), round(cy - d / 2), value)
    return owner


def _stamp(owner: np.ndarray, mask: np.ndarray, x0: int, y0: int, value: int) -> None:
    h, w = owner.shape
    sh, sw = mask.shape
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + sw, w), min(y0 + sh, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    region = owner[fy0:fy1, fx0:fx1]
    region[mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]] = value


def patch_targets(truth: FrameTruth, width: int, height: int, grid: int) -> np.ndarray:
    """[g*g, len(PATCH_HEADS)] labels of one frame's patches (the frame is squashed to a square)."""
    owner = owner_map(truth, width, height)
    things = len(truth.objects) + len(truth.needles)
    rows = (np.arange(height) * grid) // height
    cols = (np.arange(width) * grid) // width
    cell = (rows[:, None] * grid + cols[None, :]).ravel()
    counts = np.bincount(cell * (things + 1) + (owner.ravel() + 1), minlength=grid * grid * (things + 1))
    share = counts.reshape(grid * grid, things + 1).astype(np.float32)
    share /= share.sum(axis=1, keepdims=True)
    out = np.full((grid * grid, len(PATCH_HEADS)), -1, np.int64)
    covered = 1.0 - share[:, 0]
    empty = covered < EMPTY
    out[empty, 0], out[empty, 1] = BACKGROUND_COLOUR, BACKGROUND_SHAPE
    if things == 0:
        return out
    best = share[:, 1:].argmax(axis=1)
    owned = (share[:, 1:].max(axis=1) >= OWNED) & ~empty
    for p in np.flatnonzero(owned):
        out[p] = _thing_labels(truth, int(best[p]))
    return out


def _thing_labels(truth: FrameTruth, index: int) -> tuple[int, int, int]:
    """(colour, shape, glyph) patch labels of object or needle `index` of a frame."""
    if index < len(truth.objects):
        o = truth.objects[index]
        return COLOUR_NAMES.index(o.colour), ALL_SHAPES.index(o.shape), -1
    n = truth.needles[index - len(truth.objects)].needle
    if n.kind == "card":
        return -1, CARD_SHAPE, GLYPHS.index(n.glyph) if n.glyph is not None else POINTER
    assert n.colour is not None and n.shape is not None
    return COLOUR_NAMES.index(n.colour), ALL_SHAPES.index(n.shape), -1


# --------------------------------------------------------------------------------- per instance


def box_weights(box: tuple[float, float, float, float], grid: int) -> np.ndarray:
    """Share of each patch of a grid x grid frame that a normalised box covers: [grid, grid]."""
    x0, y0, x1, y1 = box
    edges = np.arange(grid + 1) / grid
    wx = np.clip(np.minimum(x1, edges[1:]) - np.maximum(x0, edges[:-1]), 0, None) * grid
    wy = np.clip(np.minimum(y1, edges[1:]) - np.maximum(y0, edges[:-1]), 0, None) * grid
    return np.outer(wy, wx)


def instances(truths: Sequence[FrameTruth], grid: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(patch weights [T*g*g], labels [len(HEADS)]) of every object, needle and frame of a clip."""
    per_frame = grid * grid
    size = len(truths) * per_frame
    objects: dict[int, np.ndarray] = {}
    described: dict[int, np.ndarray] = {}
    needles: dict[int, tuple[np.ndarray, Needle]] = {}
    for f, truth in enumerate(truths):
        span = slice(f * per_frame, (f + 1) * per_frame)
        for o in truth.objects:
            if o.occlusion > SEEN:
                continue
            weights = objects.setdefault(o.id, np.zeros(size, np.float32))
            weights[span] += box_weights((o.x - o.rx, o.y - o.ry, o.x + o.rx, o.y + o.ry), grid).ravel()
            described[o.id] = _labels(
                colour=COLOUR_NAMES.index(o.colour),
                shape=ALL_SHAPES.index(o.shape),
                size=SIZE_NAMES.index(o.size),
                motion=MOTIONS.index(o.motion),
            )
        for nt in truth.needles:
            weights, _ = needles.setdefault(nt.index, (np.zeros(size, np.float32), nt.needle))
            weights[span] += box_weights(nt.box, grid).ravel()
    out = [(objects[i], described[i]) for i in objects]
    out += [(weights, _needle_labels(n)) for weights, n in needles.values()]
    for f, truth in enumerate(truths):
        weights = np.zeros(size, np.float32)
        weights[f * per_frame : (f + 1) * per_frame] = 1.0
        seen = sum(o.occlusion <= SEEN for o in truth.objects)
        out.append(
            (weights, _labels(background=BACKGROUND_KINDS.index(truth.background), count=min(seen, 7)))
        )
    return [(w, label) for w, label in out if w.sum() > 0]


def _labels(**values: int) -> np.ndarray:
    label = np.full(len(HEADS), -1, np.int64)
    for name, value in values.items():
        label[HEAD_INDEX[name]] = value
    return label


def _needle_labels(n: Needle) -> np.ndarray:
    if n.kind == "card":
        assert n.border is not None
        if n.glyph is not None:
            return _labels(border=COLOUR_NAMES.index(n.border), glyph=GLYPHS.index(n.glyph))
        assert n.pointer is not None
        return _labels(
            border=COLOUR_NAMES.index(n.border), glyph=POINTER, pointer=COLOUR_NAMES.index(n.pointer)
        )
    assert n.colour is not None and n.shape is not None
    return _labels(colour=COLOUR_NAMES.index(n.colour), shape=ALL_SHAPES.index(n.shape))
