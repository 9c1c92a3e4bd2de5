"""What the harness asks: items (one video, its questions and the truths) built from held-out worlds.

A video is described, not rendered: a `WorldVideo` is a world and a frame count (rendered by whoever
answers, if it needs pixels), a `FileVideo` is a haystack file cut into spans with needle images in
between (NIAH-Video). Items come seed by seed, so an answer source can encode a world's haystack once
and reuse it for every needle placed in it (`haystack_frames` says how much of it the seed will need).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flashlive.model.evaluation.errors import EvalError
from flashlive.model.evaluation.scoring import Truth, is_scored
from flashlive.model.world import (
    CLIP_FRAMES,
    QA,
    NiahItem,
    ScriptError,
    Style,
    World,
    ask,
    heldout_seeds,
    make_niah,
)

FPS = 1.0  # the world samples 1 frame per second, as the release samples long videos
NIAH_DECOYS = 2  # make_niah's default: decoy glyph cards put wrong options on screen


@dataclass(frozen=True)
class Question:
    kind: str
    text: str  # the question as asked
    truth: Truth
    needs_hires: bool = False  # about a small object (the 448 tower's job)

    @classmethod
    def from_qa(cls, qa: QA, fps: float = FPS) -> Question:
        # "when" answers are whole seconds; the event lies within the sampling interval before the first
        # frame that shows it, so one interval either way is the honest tolerance
        tolerance = 1.0 / fps if qa.kind == "when" else 0.0
        return cls(qa.kind, qa.question, Truth(qa.kind, qa.answer, qa.value, tolerance), qa.needs_hires)


@dataclass(frozen=True)
class WorldVideo:
    """`num_frames` frames of `world` sampled at `fps` from its start."""

    world: World
    num_frames: int
    fps: float = FPS
    haystack_frames: int = 0  # frames of this world (without needles) the seed's items need at most

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class Span:
    """Frames [start, stop) of the haystack file, as sampled at ~1 fps."""

    start: int
    stop: int


@dataclass(frozen=True)
class FileVideo:
    """A haystack file's sampled frames cut into spans, with needle images (one clip each) between."""

    haystack: Path
    parts: tuple[Span | Path, ...]
    haystack_frames: int = 0  # frames of the haystack the whole run needs at most

    @property
    def num_frames(self) -> int:
        return sum(p.stop - p.start if isinstance(p, Span) else CLIP_FRAMES for p in self.parts)

    @property
    def seconds(self) -> float:
        return self.num_frames / FPS


Video = WorldVideo | FileVideo


@dataclass(frozen=True)
class Item:
    """One video and the questions asked about it. `cell` places it in a report (a kind's table, a
    grid cell such as {"frames": 1000, "depth": 0.5})."""

    id: str
    video: Video
    questions: tuple[Question, ...]
    cell: dict[str, Any] = field(default_factory=dict)


def min_frames(hops: int) -> int:
    """The shortest haystack a chain of `hops` cards fits in: a clip per card, decoys included (and the
    decoy chain's pointer from 3 hops on)."""
    cards = hops + NIAH_DECOYS + (1 if hops >= 3 else 0) if hops > 1 else 1
    return cards * CLIP_FRAMES


def check_chains_fit(lengths: Sequence[int], hops: Sequence[int]) -> None:
    need = min_frames(max(hops))
    if min(lengths) < need:
        raise EvalError(
            f"{max(hops)}-hop chains need haystacks of at least {need} frames (a clip per card, decoys "
            f"included); the shortest asked for is {min(lengths)}"
        )


WORLD_MIN_FRAMES = min_frames(2)  # each world also gets a 2-hop chain


def world_style(seed: int) -> Style:
    """The camera of an evaluation world: drawn from its seed, as training draws its own."""
    return Style.random(seed)


def _scored(qas: Sequence[QA]) -> list[Question]:
    return [Question.from_qa(q) for q in qas if is_scored(q.kind)]


def world_items(count: int, frames: int, *, offset: int = 0) -> Iterator[Item]:
    """Per held-out world: a plain video with every question kind it can answer, then a video of the same
    world with one needle (the NIAH question and the open needle question) and one with a 2-hop chain."""
    if frames < WORLD_MIN_FRAMES or frames % CLIP_FRAMES:
        raise EvalError(
            f"a world video needs a multiple of {CLIP_FRAMES} frames, at least {WORLD_MIN_FRAMES}"
        )
    for seed in heldout_seeds(count, offset):
        style = world_style(seed)
        world = World(seed, style=style)
        rng = np.random.default_rng([seed, 0xE7A1])
        plain = WorldVideo(world, frames, haystack_frames=frames)
        questions = _scored(ask(world.video(0.0, frames, FPS), rng))
        if questions:
            yield Item(f"world-{seed}", plain, tuple(questions), {"seed": seed, "video": "plain"})
        depth = float(rng.uniform(0.0, 1.0))
        needle = make_niah(seed, frames=frames, depth=depth, style=style)
        open_q = ask(needle.video(), rng, kinds=("needle_open",))
        yield Item(
            f"world-{seed}-needle",
            WorldVideo(needle.world, needle.num_frames, haystack_frames=frames),
            tuple(_scored([needle.question, *open_q])),
            {"seed": seed, "video": "needle"},
        )
        chain = make_niah(seed, frames=frames, depth=depth, hops=2, style=style)
        yield Item(
            f"world-{seed}-multihop",
            WorldVideo(chain.world, chain.num_frames, haystack_frames=frames),
            tuple(_scored([chain.question])),
            {"seed": seed, "video": "multihop"},
        )


def niah_items(
    count: int, lengths: Sequence[int], depths: Sequence[float], *, offset: int = 0
) -> Iterator[Item]:
    """Single-hop NIAH: per held-out world, a card at each depth of each haystack length.

    Every cell uses the same `count` worlds as haystacks (the paper's one haystack, needles placed
    through it), so a cell differs from the next only in length or depth.
    """
    longest = max(lengths)
    for seed in heldout_seeds(count, offset):
        style = world_style(seed)
        for frames in lengths:
            for depth in depths:
                item = _niah(seed, frames=frames, depth=depth, style=style)
                yield Item(
                    f"niah-{seed}-{frames}-{depth:g}",
                    WorldVideo(item.world, item.num_frames, haystack_frames=longest),
                    (Question.from_qa(item.question),),
                    {"seed": seed, "frames": frames, "depth": depth},
                )


def mhniah_items(
    count: int, lengths: Sequence[int], hops: Sequence[int], *, offset: int = 0
) -> Iterator[Item]:
    """Multi-hop NIAH: per held-out world, a chain of each length of `hops` in each haystack length. The
    first card of item j sits at depth j / (count - 1) (the start when count is 1, as in the paper);
    the other cards, decoys included, at random clips."""
    check_chains_fit(lengths, hops)
    longest = max(lengths)
    for j, seed in enumerate(heldout_seeds(count, offset)):
        depth = j / (count - 1) if count > 1 else 0.0
        style = world_style(seed)
        for frames in lengths:
            for n in hops:
                item = _niah(seed, frames=frames, depth=depth, style=style, hops=n)
                yield Item(
                    f"mhniah-{seed}-{frames}-{n}",
                    WorldVideo(item.world, item.num_frames, haystack_frames=longest),
                    (Question.from_qa(item.question),),
                    {"seed": seed, "frames": frames, "hops": n, "depth": depth},
                )


def _niah(seed: int, **kwargs: Any) -> NiahItem:
    try:
        return make_niah(seed, decoys=NIAH_DECOYS, **kwargs)
    except ScriptError as exc:
        raise EvalError(f"cannot build a NIAH item: {exc}") from None


def niah_count(count: int, lengths: Sequence[int], depths: Sequence[float]) -> int:
    return count * len(lengths) * len(depths)


def mhniah_count(count: int, lengths: Sequence[int], hops: Sequence[int]) -> int:
    return count * len(lengths) * len(hops)
