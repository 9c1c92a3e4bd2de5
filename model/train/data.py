"""Training items from the generated world, deterministic from (seed, stage, step).

Everything here runs in data worker processes: it draws worlds, renders and resizes their frames
(uint8, so little crosses between processes), asks questions and tokenizes them. Step s of a stage
is built from its own random stream, so a resumed run sees exactly the data an uninterrupted one
would, whichever worker builds it. World seeds of training are drawn below HELD_OUT_SEEDS; held-out
items (the periodic accuracy check here, and every evaluation) use seeds from it on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from flashlive.model.preprocess import resize_frames_pil
from flashlive.model.world import (
    CLIP_FRAMES,
    KINDS,
    QA,
    World,
    WorldConfig,
    ask,
    make_niah,
)
from flashlive.model.world.questions import caption
from flashlive.model.world.style import Style

from .settings import HELD_OUT_SEEDS, LongStage, VideoStage
from .tokens import Prompter

log = logging.getLogger(__name__)

FPS = 1.0  # the model samples about one frame a second; the world plans clips for it
CLIP_SECONDS = CLIP_FRAMES / FPS
# Per stage, a tag that keeps its random streams apart (and held-out ones apart from training's).
TAGS = {"tower": 1, "text": 2, "align": 3, "short": 4, "long": 5, "hires": 6, "pool": 7}
HELD_OUT_TAG = 1000
START_CLIPS = 40  # short videos start at a random clip among the first ones of their world
# The multiple-choice needle questions come with a needle video (make_niah); the other kinds are asked
# of any video. TEMPORAL_KINDS are asked of long streams.
NIAH_KINDS = ("needle", "multihop")
TEMPORAL_KINDS = ("count", "first", "after", "before", "before_after", "when", "just", "now", "colour")
QUESTION_KINDS = tuple(k for k in KINDS if k != "caption")  # every kind the world asks, captions apart


def step_rng(seed: int, stage: str, step: int, *, held_out: bool = False) -> np.random.Generator:
    return np.random.default_rng([seed, TAGS[stage] + (HELD_OUT_TAG if held_out else 0), step])


def world_seed(rng: np.random.Generator, *, held_out: bool) -> int:
    """A world seed: below HELD_OUT_SEEDS for training, from it on (below 2**32, where world seeds
    wrap) for held-out items."""
    if held_out:
        return int(rng.integers(HELD_OUT_SEEDS, 2**32))
    return int(rng.integers(0, HELD_OUT_SEEDS))


def train_style(seed: int, *, h264: bool, short_side: int | None = None) -> Style:
    """Style.random(seed), with JPEG for H.264 when PyAV is not wanted, and optionally resized so
    that its shorter side is `short_side` (high-resolution training needs frames at least that big)."""
    style = Style.random(seed)
    if style.codec == "h264" and not h264:
        # CRF 20..32 is about as lossy as JPEG quality 90..30
        style = replace(style, codec="jpeg", quality=int(np.interp(style.quality, [20, 32], [90, 30])))
    if short_side is not None and style.short_side < short_side:
        k = short_side / style.short_side
        style = replace(style, width=_even(style.width * k), height=_even(style.height * k))
    return style


def _even(x: float) -> int:
    return max(32, round(x / 2) * 2)


def render_clips(world: World, first_clip: int, clips: int, size: int) -> np.ndarray:
    """`clips` clips of the world from clip `first_clip`, resized for the tower: uint8 [n, T, S, S, 3]."""
    frames = [f.image for f in world.frames(FPS, start=first_clip * CLIP_SECONDS, count=clips * CLIP_FRAMES)]
    stacked = np.stack([f for f in frames if f is not None])
    resized = resize_frames_pil(stacked, size)
    return resized.reshape(clips, CLIP_FRAMES, size, size, 3)


# ------------------------------------------------------------------------------------------ batches


@dataclass
class Video:
    """What the tower reads for one video: clips to encode now, and maybe cached clips around them.

    With `pool` = (world, n) the video is the first n clips of that pool world, whose tokens are
    cached, with the clips at positions `at` replaced by `clips` (needles drawn over them).
    """

    clips: np.ndarray  # uint8 [m, T, S, S, 3]
    pool: tuple[int, int] | None = None
    at: tuple[int, ...] = ()

    @property
    def num_clips(self) -> int:
        return self.pool[1] if self.pool is not None else len(self.clips)


@dataclass
class Row:
    """One sequence for the LLM: prompt rows, the video's tokens, then `text` (question and answer)."""

    prefix: list[int]
    video: int  # index into Batch.videos; -1: no video (text only)
    text: list[int]
    loss_from: int  # text[loss_from:] are the targets
    answer_from: int  # text[answer_from:] is the answer (exact match counts these)
    kind: str
    hires: bool = False


@dataclass
class Batch:
    videos: list[Video] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    @property
    def clips(self) -> int:
        return sum(len(v.clips) for v in self.videos)


def qa_row(p: Prompter, qa: QA, video: int, num_frames: int) -> Row:
    question = p.question(qa.question, num_frames, FPS)
    answer = p.answer(qa.answer)
    return Row(
        p.prefix,
        video,
        question + answer,
        len(question),
        len(question),
        qa.kind,
        qa.needs_hires,
    )


# ------------------------------------------------------------------------------------- questions


def pick_questions(
    rng: np.random.Generator, qas: Sequence[QA], count: int, *, prefer_hires: float = 0.0
) -> list[QA]:
    """Up to `count` questions of different kinds, each kind equally likely (so rare kinds are seen
    as often as common ones); with `prefer_hires`, that share of picks goes to small-object ones."""
    pool = list(qas)
    out: list[QA] = []
    while pool and len(out) < count:
        hires = [q for q in pool if q.needs_hires]
        source = hires if hires and rng.random() < prefer_hires else pool
        kinds = sorted({q.kind for q in source})
        kind = kinds[int(rng.integers(len(kinds)))]
        choice = next(q for q in source if q.kind == kind)
        out.append(choice)
        pool = [q for q in pool if q.kind != choice.kind]
    return out


def chain_decoys(clips: int, hops: int, most: int = 2) -> int:
    """Decoy cards that fit beside a chain of `hops` cards in `clips` clips (one card per clip; from
    3 hops on a decoy chain needs one more)."""
    if hops == 1:
        return most
    extra = 1 if hops >= 3 else 0
    return max(0, min(most, clips - hops - extra))


def random_needle_video(
    rng: np.random.Generator, seed: int, clips: int, style: Style, config: WorldConfig | None = None
) -> tuple[World, list[QA]]:
    """A world of `clips` clips with one needle or a short chain of cards, and its needle question."""
    hops = 2 if clips >= 2 and rng.random() < 0.35 else 1
    kind = "card" if rng.random() < 0.75 else "object"
    item = make_niah(
        seed,
        frames=clips * CLIP_FRAMES,
        depth=float(rng.random()),
        hops=hops,
        kind=kind,
        decoys=chain_decoys(clips, hops),
        config=config,
        style=style,
        fmt="niah" if rng.random() < 0.8 else "llava",
        needle_seed=int(rng.integers(2**32)),
    )
    return item.world, [item.question]


# ---------------------------------------------------------------------------------- video stages


def short_batch(
    p: Prompter,
    settings: VideoStage,
    rng: np.random.Generator,
    *,
    size: int,
    h264: bool,
    held_out: bool,
    kinds: Sequence[str] = QUESTION_KINDS,
    short_side: int | None = None,
    config: WorldConfig | None = None,
    prefer_hires: float = 0.0,
) -> Batch:
    """`settings.batch` short videos, each with up to `settings.questions` questions."""
    batch = Batch()
    for _ in range(settings.batch):
        seed = world_seed(rng, held_out=held_out)
        style = train_style(seed, h264=h264, short_side=short_side)
        clips = int(rng.integers(settings.clips[0], settings.clips[1] + 1))
        frames = clips * CLIP_FRAMES
        needle: list[QA] = []
        if rng.random() < settings.needle_share:
            world, needle = random_needle_video(rng, seed, clips, style, config)
            first = 0
        else:
            world = World(seed, config=config, style=style)
            first = int(rng.integers(0, START_CLIPS))
        video = world.video(first * CLIP_SECONDS, frames, FPS)
        needle = [q for q in needle if q.kind in kinds]  # alignment captions needle videos instead
        qas = ask(video, rng, [k for k in kinds if k not in NIAH_KINDS])
        chosen = pick_questions(rng, needle + qas, settings.questions, prefer_hires=prefer_hires)
        if not chosen:
            continue
        index = len(batch.videos)
        batch.videos.append(Video(render_clips(world, first, clips, size)))
        batch.rows.extend(qa_row(p, qa, index, frames) for qa in chosen)
    return batch


def pool_seed(seed: int, world: int) -> int:
    """The seed of world `world` of the long stage's pool (training seeds only)."""
    return world_seed(np.random.default_rng([seed, TAGS["pool"], world]), held_out=False)


def pool_clips(seed: int, world: int, first: int, clips: int, size: int, *, h264: bool) -> np.ndarray:
    """Clips of a pool world, as the long stage caches their tokens."""
    s = pool_seed(seed, world)
    return render_clips(World(s, style=train_style(s, h264=h264)), first, clips, size)


def long_batch(
    p: Prompter,
    settings: LongStage,
    rng: np.random.Generator,
    *,
    seed: int,
    size: int,
    h264: bool,
) -> Batch:
    """`settings.long_batch` long streams from the pool of worlds, each with one needle or temporal
    question. Only the needle clips are rendered: the rest are the pool's cached tokens."""
    batch = Batch()
    clips = int(rng.choice(settings.long_clips))
    for _ in range(settings.long_batch):
        k = int(rng.integers(settings.worlds))
        s = pool_seed(seed, k)
        qa, world = long_question(rng, s, clips, train_style(s, h264=h264), settings)
        at = sorted({int(n.start // CLIP_SECONDS) for n in world.needles})
        rendered = [render_clips(world, c, 1, size) for c in at]
        empty = np.zeros((0, CLIP_FRAMES, size, size, 3), np.uint8)
        video = Video(np.concatenate(rendered) if rendered else empty, (k, clips), tuple(at))
        batch.rows.append(qa_row(p, qa, len(batch.videos), clips * CLIP_FRAMES))
        batch.videos.append(video)
    return batch


def held_out_long_batch(
    p: Prompter, settings: LongStage, rng: np.random.Generator, *, size: int, h264: bool
) -> Batch:
    """Long streams of held-out worlds, every clip rendered (for the periodic check)."""
    batch = Batch()
    clips = int(rng.choice(settings.long_clips))
    for _ in range(settings.long_batch):
        s = world_seed(rng, held_out=True)
        qa, world = long_question(rng, s, clips, train_style(s, h264=h264), settings)
        batch.rows.append(qa_row(p, qa, len(batch.videos), clips * CLIP_FRAMES))
        batch.videos.append(Video(render_clips(world, 0, clips, size)))
    return batch


def long_question(
    rng: np.random.Generator, seed: int, clips: int, style: Style, settings: LongStage
) -> tuple[QA, World]:
    """A temporal question on world `seed`'s first clips, or (by default, and when none can be
    asked) a needle question on the same world with needles added."""
    if rng.random() < settings.temporal_share:
        world = World(seed, style=style)
        picked = pick_questions(rng, ask(world.video(0.0, clips * CLIP_FRAMES, FPS), rng, TEMPORAL_KINDS), 1)
        if picked:
            return picked[0], world
    hops = 1
    if rng.random() < settings.multihop_share:
        hops = 2 if rng.random() < 0.6 or clips < 8 else 3
    item = make_niah(
        seed,
        frames=clips * CLIP_FRAMES,
        depth=float(rng.random()),
        hops=hops,
        kind="card" if rng.random() < 0.75 else "object",
        decoys=chain_decoys(clips, hops),
        style=style,
        fmt="niah" if rng.random() < 0.8 else "llava",
        needle_seed=int(rng.integers(2**32)),
    )
    qa = item.question
    if hops == 1 and rng.random() < 0.2:
        open_ = ask(item.video(), rng, ["needle_open"])
        qa = open_[0] if open_ else qa
    return qa, item.world


# ------------------------------------------------------------------------------------ text stage


def text_batch(p: Prompter, batch: int, rng: np.random.Generator, *, held_out: bool) -> Batch:
    """Text-only sequences: a short video's caption in place of its tokens, then one of its questions
    and the answer. The loss covers the caption, the question and the answer."""
    out = Batch()
    while len(out.rows) < batch:
        seed = world_seed(rng, held_out=held_out)
        clips = int(rng.integers(1, 5))
        world = World(seed, style=Style.random(seed))  # truth only: the style gives the backgrounds
        if rng.random() < 0.25:
            world, needle = random_needle_video(rng, seed, clips, world.style)
            video = world.video(0.0, clips * CLIP_FRAMES, FPS)
        else:
            needle = []
            video = world.video(int(rng.integers(0, START_CLIPS)) * CLIP_SECONDS, clips * CLIP_FRAMES, FPS)
        text = caption(video, rng)
        others = [k for k in QUESTION_KINDS if k not in NIAH_KINDS]
        qas = pick_questions(rng, needle + ask(video, rng, others), 1)
        if not text or not qas:
            continue
        described = p.ids(text)
        question = p.question(qas[0].question, clips * CLIP_FRAMES, FPS)
        answer = p.answer(qas[0].answer)
        body = described + question + answer
        out.rows.append(Row(p.prefix, -1, body, 0, len(described) + len(question), qas[0].kind))
    return out
