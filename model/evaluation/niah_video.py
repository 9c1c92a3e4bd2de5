"""The paper's NIAH-Video benchmark from a local folder (`OpenGVLab/NIAH-Video`, as its eval reads it).

The layout, as VideoChat-Flash's `xtuner-eval_niah` uses it:

    DATA/
      video_haystack.mkv              the haystack video (or the one video file found under DATA)
      niah-coco-singlehop_20.json     single-hop: [{"question", "answer", "image", "id"}, ...]
      niah-coco-multihop-100.json     multi-hop: [{"images": [...], "question1", "answer1",
                                                   "question2", "answer2"}, ...]
      single/COCO_val2014_*.jpg       needle images, at the paths the JSON names
      multi/niah_*_COCO_val2014_*.jpg

The annotation files may sit anywhere under DATA (the release keeps them in vision_niah/data/...); image
paths are resolved against the first folder (DATA, the JSON's folder, or one or two levels below DATA)
that holds them. Questions are in the paper's format ("Find the frame of ... Options: (A) ...\n...
Only give the best option. Best option: (") and answers are option letters.

How the paper builds a test, and how we do (docs/evaluation.md): the haystack is sampled at one frame
per second (every round(fps)-th frame), frames and needle images padded to a square with the
preprocessor's mean colour (LLaVA's "pad"), and a needle image is encoded as a clip of four copies of
itself. Single-hop: the needle clip goes in at frame int(depth x frames) — here rounded down to a clip
boundary, since our windows hold whole clips. Multi-hop: the chain's images in the JSON's order, the
first at the start and the others after equal stretches of haystack; each chain is asked its caption
question and its QA question.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flashlive.model.evaluation.errors import DatasetError
from flashlive.model.evaluation.items import FileVideo, Item, Question, Span
from flashlive.model.evaluation.scoring import Truth
from flashlive.model.world import CLIP_FRAMES
from flashlive.model.world.language import OPTION_LETTERS

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mkv", ".mp4", ".webm", ".avi", ".mov")
HAYSTACK_NAME = "video_haystack"
SINGLE_GLOB, MULTI_GLOB = "*singlehop*.json", "*multihop*.json"
PAD_MEAN = (0.485, 0.456, 0.406)  # the preprocessor's mean (model/preprocess.py), as LLaVA's pad uses it
PAPER_LENGTHS = tuple(range(1000, 10001, 1000))  # flash_eval_xtuner_single.sh: 1,000 to 10,000 frames
PAPER_DEPTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # --depth_interval 0.2


@dataclass(frozen=True)
class SingleNeedle:
    id: int
    image: Path
    question: str
    answer: str  # an option letter


@dataclass(frozen=True)
class Chain:
    id: int
    images: tuple[Path, ...]  # in the order they are placed
    questions: tuple[tuple[str, str, str], ...]  # (kind, question, answer letter)


@dataclass(frozen=True)
class NiahVideoData:
    root: Path
    haystack: Path
    single: tuple[SingleNeedle, ...]
    multi: tuple[Chain, ...]


# --- the folder ------------------------------------------------------------------------------------------
def load(root: str | Path) -> NiahVideoData:
    """Read a NIAH-Video folder; DatasetError naming what is missing or malformed."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (give the NIAH-Video data folder)")
    single_file = _one(root, SINGLE_GLOB, required=True)
    multi_file = _one(root, MULTI_GLOB, required=False)
    assert single_file is not None
    single = tuple(_single(single_file, root))
    multi = tuple(_multi(multi_file, root)) if multi_file is not None else ()
    return NiahVideoData(root, find_haystack(root), single, multi)


def _one(root: Path, pattern: str, *, required: bool) -> Path | None:
    found = sorted(root.rglob(pattern))
    if len(found) > 1:
        raise DatasetError(f"{root}: more than one {pattern} file: {', '.join(str(p) for p in found)}")
    if not found and required:
        raise DatasetError(f"{root}: no annotation file matching {pattern} (niah-coco-singlehop_20.json)")
    return found[0] if found else None


def find_haystack(root: Path) -> Path:
    named = sorted(p for p in root.rglob(HAYSTACK_NAME + ".*") if p.suffix.lower() in VIDEO_SUFFIXES)
    videos = named or sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if len(videos) != 1:
        what = "no video file" if not videos else f"{len(videos)} video files and none named {HAYSTACK_NAME}"
        raise DatasetError(f"{root}: {what}; put the haystack there as {HAYSTACK_NAME}.mkv")
    return videos[0]


def _read_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise DatasetError(f"{path}: expected a JSON list of objects")
    if not data:
        raise DatasetError(f"{path}: the list is empty")
    return data


def _text(path: Path, i: int, entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{path}: entry {i} has no text field {key!r}")
    return value


def _letter(path: Path, i: int, entry: dict[str, Any], key: str) -> str:
    value = _text(path, i, entry, key).strip().strip("()").upper()
    if value not in OPTION_LETTERS:
        raise DatasetError(f"{path}: entry {i}: {key} must be an option letter A-D, got {entry[key]!r}")
    return value


def _image_root(root: Path, annotations: Path, relative: str) -> Path:
    candidates = [root, annotations.parent, *sorted(p for p in root.glob("*/") if p.is_dir())]
    candidates += sorted(p for p in root.glob("*/*/") if p.is_dir())
    for c in candidates:
        if (c / relative).is_file():
            return c
    raise DatasetError(
        f"{annotations}: image {relative!r} is not under {root} (looked in the folder, next to the JSON and "
        "one or two levels down)"
    )


def _image(base: Path, path: Path, i: int, relative: object) -> Path:
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{path}: entry {i}: an image path must be text")
    image = base / relative
    if not image.is_file():
        raise DatasetError(f"{path}: entry {i}: no image file {image}")
    return image


def _single(path: Path, root: Path) -> Iterator[SingleNeedle]:
    entries = _read_list(path)
    base = _image_root(root, path, _text(path, 0, entries[0], "image"))
    for i, e in enumerate(entries):
        ident = e.get("id", i)
        yield SingleNeedle(
            int(ident) if isinstance(ident, int) else i,
            _image(base, path, i, e.get("image")),
            _text(path, i, e, "question"),
            _letter(path, i, e, "answer"),
        )


def _multi(path: Path, root: Path) -> Iterator[Chain]:
    entries = _read_list(path)
    first = entries[0].get("images")
    if not isinstance(first, list) or not first:
        raise DatasetError(f"{path}: entry 0 has no list of images")
    base = _image_root(root, path, str(first[0]))
    for i, e in enumerate(entries):
        images = e.get("images")
        if not isinstance(images, list) or len(images) < 2:
            raise DatasetError(f"{path}: entry {i}: a chain needs a list of at least two images")
        questions = (
            ("niah_video_caption", _text(path, i, e, "question1"), _letter(path, i, e, "answer1")),
            ("niah_video_qa", _text(path, i, e, "question2"), _letter(path, i, e, "answer2")),
        )
        yield Chain(i, tuple(_image(base, path, i, im) for im in images), questions)


# --- pixels ----------------------------------------------------------------------------------------------
def pad_square(image: np.ndarray) -> np.ndarray:
    """Pad [H, W, 3] to a square, centred, with the preprocessor's mean colour (LLaVA's "pad")."""
    h, w = image.shape[:2]
    if h == w:
        return image
    side = max(h, w)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = [int(m * 255) for m in PAD_MEAN]
    y, x = (side - h) // 2, (side - w) // 2
    out[y : y + h, x : x + w] = image
    return out


def needle_clip(path: Path, clip_frames: int = CLIP_FRAMES) -> np.ndarray:
    """A needle image as a clip: [clip_frames, S, S, 3] uint8 copies of the padded image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return np.repeat(pad_square(rgb)[None], clip_frames, axis=0)


def _stride(stream: Any) -> int:
    rate = float(stream.average_rate) if stream.average_rate else 1.0
    return max(1, round(rate))


def haystack_length(path: Path) -> int:
    """Frames the haystack gives at one per second (every round(fps)-th frame), counted from packets."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            packets = sum(1 for p in container.demux(stream) if p.size)
            return -(-packets // _stride(stream))
    except (av.error.FFmpegError, IndexError) as exc:
        raise DatasetError(f"{path}: not a readable video ({exc})") from None


def haystack_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    """The first `count` 1-fps frames of the haystack, padded square, decoded as they are needed."""
    import av

    given = 0
    try:
        with av.open(str(path)) as container:
            stride = _stride(container.streams.video[0])
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride:
                    continue
                yield pad_square(frame.to_ndarray(format="rgb24"))
                given += 1
                if given == count:
                    return
    except (av.error.FFmpegError, IndexError) as exc:
        raise DatasetError(f"{path}: decoding failed after {given} frames ({exc})") from None
    raise DatasetError(f"{path}: the haystack gives {given} frames at 1 fps; {count} are needed")


# --- items -----------------------------------------------------------------------------------------------
def _clip_floor(frames: float) -> int:
    return int(frames) // CLIP_FRAMES * CLIP_FRAMES


def single_items(
    data: NiahVideoData, lengths: Sequence[int], depths: Sequence[float], count: int | None = None
) -> Iterator[Item]:
    longest = max(lengths)
    for frames in lengths:
        for depth in depths:
            for n in data.single[:count]:
                at = _clip_floor(depth * frames)
                parts = _nonempty((Span(0, at), n.image, Span(at, frames)))
                video = FileVideo(data.haystack, parts, longest)
                q = Question("niah_video", n.question, Truth("niah_video", n.answer))
                yield Item(
                    f"niah-video-{n.id}-{frames}-{depth:g}", video, (q,), {"frames": frames, "depth": depth}
                )


def chain_video(data: NiahVideoData, chain: Chain, frames: int, longest: int) -> FileVideo:
    """The chain's images with equal stretches of haystack between them: the first at the start, the
    last at the end (the paper's placement, stretches rounded down to whole clips)."""
    gap = frames / (len(chain.images) - 1)
    parts: list[Span | Path] = [chain.images[0]]
    for k in range(1, len(chain.images)):
        parts += [Span(_clip_floor((k - 1) * gap), _clip_floor(k * gap)), chain.images[k]]
    return FileVideo(data.haystack, _nonempty(parts), longest)


def _nonempty(parts: Sequence[Span | Path]) -> tuple[Span | Path, ...]:
    return tuple(p for p in parts if not isinstance(p, Span) or p.stop > p.start)


def multi_items(data: NiahVideoData, lengths: Sequence[int], count: int | None = None) -> Iterator[Item]:
    longest = max(lengths)
    for frames in lengths:
        for chain in data.multi[:count]:
            questions = tuple(Question(k, q, Truth(k, a)) for k, q, a in chain.questions)
            yield Item(
                f"niah-video-chain-{chain.id}-{frames}",
                chain_video(data, chain, frames, longest),
                questions,
                {"frames": frames, "chain": chain.id, "needles": len(chain.images)},
            )
