"""Clip tokens of evaluation videos, computed once and reused.

A NIAH haystack is the same world whatever needle is placed in it, so `WorldTokens` encodes a world
without its needles once (as far as the seed's longest item needs) and, for each item, encodes again
only the clips a needle changes: the clips holding needle frames, and with the "h264" codec style the
whole x264 runs holding them (a run is coded as one group of pictures, so a needle changes its
neighbours' pixels too). Rendering is deterministic per frame time, so the result equals encoding the
item's video from scratch (tests/test_eval_harness.py checks it).

`FileTokens` does the same for NIAH-Video: the haystack file's 1-fps frames once, each needle image
once (as a clip of four copies, as the paper encodes it).

Memory: haystack tokens, [clips, 64, C] float16 (3,000 frames of a 1,024-wide tower: 96 MB; of mini's
192-wide one: 18 MB), up to CACHE_BYTES of recent worlds, one file's; plus the item being answered.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from flashlive.model.evaluation.errors import EvalError
from flashlive.model.evaluation.items import FileVideo, Span, WorldVideo
from flashlive.model.world import CLIP_FRAMES, World
from flashlive.model.world.world import H264_RUN

log = logging.getLogger(__name__)

BATCH_CLIPS = 8  # clips per encoder call: bounds the frames held in memory
CACHE_BYTES = 1 << 30  # haystack tokens kept across items and parts


class ClipEncoder(Protocol):
    """What encodes clips: `flashlive.model.pipeline.TowerEncoder`."""

    clip_frames: int
    encoder_id: str

    def encode(self, clips: np.ndarray) -> np.ndarray: ...


def encode_frames(
    encoder: ClipEncoder, frames: Iterable[np.ndarray], batch_clips: int = BATCH_CLIPS
) -> np.ndarray:
    """Tokens [clips, T, C] of a stream of frames, `batch_clips` clips at a time. The frame count must be
    a multiple of the clip length."""
    n = encoder.clip_frames
    out: list[np.ndarray] = []
    buf: list[np.ndarray] = []
    for frame in frames:
        buf.append(frame)
        if len(buf) == n * batch_clips:
            out.append(encoder.encode(np.stack(buf).reshape(batch_clips, n, *buf[0].shape)))
            buf = []
    if len(buf) % n:
        raise EvalError(f"{len(buf)} frames left over: frames come in clips of {n}")
    if buf:
        out.append(encoder.encode(np.stack(buf).reshape(len(buf) // n, n, *buf[0].shape)))
    if not out:
        raise EvalError("no frames to encode")
    return np.concatenate(out)


def _images(world: World, fps: float, first: int, count: int) -> Iterator[np.ndarray]:
    # sample i of frames(fps, start) is at start + (i + 0.5) / fps: starting at first / fps gives the
    # frames first.. of a pass from 0 (exactly so at 1 fps, the harness's rate)
    for f in world.frames(fps, first / fps, count):
        assert f.image is not None
        yield f.image


class WorldTokens:
    """Tokens of world videos, the haystacks of recent worlds cached (see the module's doc).

    Haystacks are kept per world, least recently used dropped first once they hold more than
    `cache_bytes` (the one in use always stays), so the parts of one run (`eval all`: world, niah,
    mhniah and dropout ask about the same held-out worlds) encode each haystack once.
    """

    def __init__(
        self, encoder: ClipEncoder, batch_clips: int = BATCH_CLIPS, cache_bytes: int = CACHE_BYTES
    ) -> None:
        if encoder.clip_frames != CLIP_FRAMES:
            raise EvalError(
                f"the world is planned in clips of {CLIP_FRAMES} frames; this model's clips hold "
                f"{encoder.clip_frames}"
            )
        self.encoder = encoder
        self.batch_clips = batch_clips
        self.cache_bytes = cache_bytes
        self._bases: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()
        self.encoded_clips = 0  # clips sent to the encoder so far (how much the cache saved shows here)

    def tokens(self, video: WorldVideo) -> np.ndarray:
        w = video.world
        clips = video.num_frames // CLIP_FRAMES
        base = self._base(w, video.fps, max(video.num_frames, video.haystack_frames))
        if not w.needles:
            return base[:clips]
        out = base[:clips].copy()
        for a, b in _spans(self._touched_clips(video)):
            out[a:b] = self._encode(_images(w, video.fps, a * CLIP_FRAMES, (b - a) * CLIP_FRAMES))
        return out

    def _base(self, world: World, fps: float, frames: int) -> np.ndarray:
        """The world's haystack (no needles) for at least `frames` frames, encoded as far as needed."""
        key = (world.seed, world.config, world.style, fps)
        have = self._bases.pop(key, None)
        done = 0 if have is None else len(have) * CLIP_FRAMES
        if done < frames:
            # carry on from the last whole x264 run (a run is coded as one unit), so the frames match a
            # single pass from the start
            start = done - done % H264_RUN
            need = -(-frames // CLIP_FRAMES) * CLIP_FRAMES
            log.debug("encoding the haystack of world %d: frames %d to %d", world.seed, start, need)
            empty = World(world.seed, config=world.config, style=world.style)
            more = self._encode(_images(empty, fps, start, need - start))
            have = more if have is None else np.concatenate([have[: start // CLIP_FRAMES], more])
        assert have is not None
        self._bases[key] = have
        while sum(t.nbytes for t in self._bases.values()) > self.cache_bytes and len(self._bases) > 1:
            self._bases.popitem(last=False)
        return have

    def _encode(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        tokens = encode_frames(self.encoder, frames, self.batch_clips)
        self.encoded_clips += len(tokens)
        return tokens

    def _touched_clips(self, video: WorldVideo) -> set[int]:
        """Clips whose pixels a needle changes."""
        fps, n = video.fps, video.num_frames
        frames: set[int] = set()
        for needle in video.world.needles:
            lo, hi = max(0, int(needle.start * fps) - 1), min(n, int(needle.end * fps) + 2)
            frames.update(i for i in range(lo, hi) if needle.active((i + 0.5) / fps))
        if video.world.style.codec == "h264":
            frames = {r + k for i in frames for r in [i - i % H264_RUN] for k in range(H264_RUN) if r + k < n}
        return {i // CLIP_FRAMES for i in frames}


def _spans(clips: set[int]) -> list[tuple[int, int]]:
    """Runs of consecutive clip indices as [start, stop) pairs."""
    out: list[tuple[int, int]] = []
    for c in sorted(clips):
        if out and out[-1][1] == c:
            out[-1] = (out[-1][0], c + 1)
        else:
            out.append((c, c + 1))
    return out


class FileTokens:
    """Tokens of NIAH-Video items: the haystack file's sampled frames and the needle images, each
    encoded once (the haystack as far as the run needs, needle images kept while the run lasts)."""

    def __init__(self, encoder: ClipEncoder, batch_clips: int = BATCH_CLIPS) -> None:
        self.encoder = encoder
        self.batch_clips = batch_clips
        self._haystack: tuple[Path, np.ndarray] | None = None
        self._needles: dict[Path, np.ndarray] = {}

    def tokens(self, video: FileVideo) -> np.ndarray:
        from flashlive.model.evaluation.niah_video import haystack_frames, needle_clip

        n = self.encoder.clip_frames
        need = max(
            video.haystack_frames, max((p.stop for p in video.parts if isinstance(p, Span)), default=0)
        )
        if self._haystack is None or self._haystack[0] != video.haystack or len(self._haystack[1]) * n < need:
            self._haystack = None
            frames = haystack_frames(video.haystack, -(-need // n) * n)
            self._haystack = (video.haystack, encode_frames(self.encoder, frames, self.batch_clips))
        haystack = self._haystack[1]
        parts = []
        for p in video.parts:
            if isinstance(p, Span):
                if p.start % n or p.stop % n:
                    raise EvalError(f"haystack spans must start and stop on clip boundaries, got {p}")
                parts.append(haystack[p.start // n : p.stop // n])
            else:
                if p not in self._needles:
                    self._needles[p] = self.encoder.encode(needle_clip(p, n)[None])
                parts.append(self._needles[p])
        return np.concatenate(parts)
