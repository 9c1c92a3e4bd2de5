"""A generated video world: scenes with ground truth, rendered frames, questions and answers.

Used by training, evaluation (needle in a haystack), the quick-start demo and tests. See docs/world.md.

    from flashlive.model.world import World, Style, ask
    world = World(seed=7, style=Style.random(7))
    frames = [f.image for f in world.frames(fps=1.0, count=16)]       # [H, W, 3] uint8 each
    qas = ask(world.video(0, 16), np.random.default_rng(0))
"""

from .generate import WorldConfig
from .language import vocabulary_texts
from .media import write_mp4
from .needles import NiahItem, make_niah
from .palette import ALL_SHAPES, COLOURS, GLYPHS, NEEDLE_SHAPES, SHAPES, SIZES, nearest_colour
from .questions import KINDS, QA, Facts, ask, caption
from .script import Background, Event, Motion, Needle, ObjectScript, Scene, ScriptError, Span
from .splits import HELDOUT_START, heldout_seeds, is_heldout, train_seed
from .style import Style
from .vocab import vocabulary_token_ids
from .world import CLIP_FRAMES, Frame, FrameTruth, NeedleTruth, ObjectTruth, VideoTruth, World

__all__ = [
    "ALL_SHAPES",
    "CLIP_FRAMES",
    "COLOURS",
    "GLYPHS",
    "HELDOUT_START",
    "KINDS",
    "NEEDLE_SHAPES",
    "QA",
    "SHAPES",
    "SIZES",
    "Background",
    "Event",
    "Facts",
    "Frame",
    "FrameTruth",
    "Motion",
    "Needle",
    "NeedleTruth",
    "NiahItem",
    "ObjectScript",
    "ObjectTruth",
    "Scene",
    "ScriptError",
    "Span",
    "Style",
    "VideoTruth",
    "World",
    "WorldConfig",
    "ask",
    "caption",
    "heldout_seeds",
    "is_heldout",
    "make_niah",
    "nearest_colour",
    "train_seed",
    "vocabulary_texts",
    "vocabulary_token_ids",
    "write_mp4",
]
