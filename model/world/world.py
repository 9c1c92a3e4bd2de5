"""A world: an endless stream of random scenes (or a scripted one), with needles, its ground truth and
its frames.

    world = World(seed=7, style=Style.random(7))
    for frame in world.frames(fps=1.0, count=3000):   # lazy: one frame in memory at a time
        frame.image, frame.truth                      # [H, W, 3] uint8, what is in it

Sample i of `frames(fps, start)` is taken at start + (i + offset) / fps (offset 0.5: the middle of each
interval, as dynamic_fps1 samples a file). Scenes are built on demand from (seed, scene index) and
only a few are cached, so a 3,000-frame haystack never sits in memory.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .draw import LRU, background_image, blend, draw_card, sprite
from .effects import Effects, h264_roundtrip
from .generate import WorldConfig, make_scene, scene_length
from .palette import COLOURS
from .script import Event, Needle, Scene, ScriptError
from .style import Style

log = logging.getLogger(__name__)

CLIP_FRAMES = 4  # frames per clip the model encodes together (UMT-L's tubelet window)
H264_RUN = 8  # frames per x264 round trip for the "h264" codec style
CARD_ASPECT = 0.78  # card width / height


@dataclass(frozen=True)
class ObjectTruth:
    """One object as drawn in one frame. Positions normalised (x across, y down)."""

    id: int
    shape: str
    colour: str
    size: str
    radius: float  # fraction of the frame's shorter side
    x: float
    y: float
    rx: float  # half extent as a fraction of the width
    ry: float  # half extent as a fraction of the height
    vx: float  # normalised units per second
    vy: float
    motion: str  # the script's motion for this span: static, left, right, up, down, bouncing
    texture: str
    rotation: float
    rgb: tuple[int, int, int]  # the base colour drawn (palette colour plus the object's shade)
    occlusion: float = 0.0  # fraction of its box under things drawn on top (objects, needles)

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1), x1/y1 exclusive, as drawn in a width x height frame."""
        d = sprite_diameter(self.radius, width, height)
        x0, y0 = round(self.x * width - d / 2), round(self.y * height - d / 2)
        return x0, y0, x0 + d, y0 + d

    def centre(self, width: int, height: int) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box(width, height)
        return (x0 + x1) // 2, (y0 + y1) // 2


@dataclass(frozen=True)
class NeedleTruth:
    """A needle as drawn in one frame; `index` is its position in the world's needle list."""

    index: int
    needle: Needle
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1

    def pixel_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.box
        return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)


@dataclass(frozen=True)
class FrameTruth:
    t: float  # seconds on the world's timeline
    clip: int  # world clip index: floor(t / clip_seconds)
    scene: int
    background: str  # background kind
    objects: tuple[ObjectTruth, ...]  # in drawing order
    needles: tuple[NeedleTruth, ...] = ()

    def object(self, object_id: int) -> ObjectTruth | None:
        return next((o for o in self.objects if o.id == object_id), None)


@dataclass(frozen=True)
class Frame:
    index: int  # sample number within this call of `frames`
    t: float
    truth: FrameTruth
    image: np.ndarray | None  # [H, W, 3] uint8 RGB, None when not rendered


@dataclass(frozen=True)
class VideoTruth:
    """Ground truth of the frames a model is shown: what the question generator works from."""

    frames: tuple[FrameTruth, ...]
    fps: float
    start: float  # world time where the video starts (its 0 s)
    events: tuple[Event, ...]  # script events between the first and the last sampled frame
    cuts: tuple[float, ...]  # scene changes between the first and the last sampled frame
    clip_frames: int = CLIP_FRAMES

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps

    def clips(self) -> list[tuple[FrameTruth, ...]]:
        n = self.clip_frames
        return [self.frames[i : i + n] for i in range(0, len(self.frames) - n + 1, n)]


def sprite_diameter(radius: float, width: int, height: int) -> int:
    return max(3, round(2 * radius * min(width, height)))


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


class World:
    """Scenes, needles and a style; deterministic from `seed`.

    Without `scenes`, scenes are random (see generate.py) and the stream never ends. With `scenes`
    (a scripted world, like the demo) the stream is those scenes; after the last one ends, frames show
    its background with nothing on it.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        config: WorldConfig | None = None,
        style: Style | None = None,
        needles: Sequence[Needle] = (),
        scenes: Sequence[Scene] | None = None,
    ) -> None:
        self.seed = int(seed)
        self.config = config or WorldConfig()
        self.style = style or Style()
        self.needles = tuple(sorted(needles, key=lambda n: n.start))
        for a, b in zip(self.needles, self.needles[1:], strict=False):
            if b.start < a.end:
                raise ScriptError(f"needles overlap in time: {a} and {b}")
        self._scripted = tuple(scenes) if scenes is not None else None
        if self._scripted is not None:
            if not self._scripted:
                raise ScriptError("a scripted world needs at least one scene")
            self._ends = [s.end for s in self._scripted]
        else:
            self._ends = []
        self._scenes: LRU[int, Scene] = LRU(8)
        self._backgrounds: LRU[int, np.ndarray] = LRU(4)
        self._effects = Effects(self.style, self.seed)

    # --- time -------------------------------------------------------------------------------------
    @property
    def clip_seconds(self) -> float:
        return self.config.clip_seconds

    @property
    def duration(self) -> float | None:
        """Length of a scripted world in seconds; None for an endless one."""
        return self._ends[-1] if self._scripted is not None else None

    def scene_index_at(self, t: float) -> int:
        if t < 0 or not math.isfinite(t):
            raise ValueError(f"world time must be a finite number >= 0, got {t}")
        if self._scripted is None:
            while not self._ends or self._ends[-1] <= t:
                clips = scene_length(self.seed, len(self._ends), self.config)
                self._ends.append((self._ends[-1] if self._ends else 0.0) + clips * self.clip_seconds)
        return min(bisect.bisect_right(self._ends, t), len(self._ends) - 1)

    def scene(self, index: int) -> Scene:
        if self._scripted is not None:
            return self._scripted[index]
        if index >= len(self._ends):
            self.scene_index_at(self._ends[-1] if self._ends else 0.0)
            while len(self._ends) <= index:
                self.scene_index_at(self._ends[-1])
        return self._scenes.get(index, lambda: self._make_scene(index))

    def _make_scene(self, index: int) -> Scene:
        start = self._ends[index - 1] if index else 0.0
        clips = round((self._ends[index] - start) / self.clip_seconds)
        return make_scene(
            self.seed,
            index,
            start,
            clips,
            self.config,
            backgrounds=self.style.backgrounds,
            fixed_background=self.style.background,
        )

    def events(self, t0: float, t1: float) -> list[Event]:
        """Script events with t0 < t <= t1."""
        out: list[Event] = []
        for i in range(self.scene_index_at(max(t0, 0.0)), self.scene_index_at(t1) + 1):
            out.extend(e for e in self.scene(i).events if t0 < e.t <= t1)
        return out

    def cuts(self, t0: float, t1: float) -> list[float]:
        """Scene changes with t0 < t <= t1."""
        last = self.scene_index_at(t1)
        return [end for end in self._ends[:last] if t0 < end <= t1]

    # --- truth ------------------------------------------------------------------------------------
    def truth(self, t: float) -> FrameTruth:
        idx = self.scene_index_at(t)
        scene = self.scene(idx)
        w, h = self.style.width, self.style.height
        short = min(w, h)
        objs: list[ObjectTruth] = []
        for o in scene.objects:
            span = o.span_at(t)
            if span is None:
                continue
            x, y = span.motion.at(t)
            vx, vy = span.motion.velocity_at(t)
            objs.append(
                ObjectTruth(
                    id=o.id,
                    shape=o.shape,
                    colour=span.colour,
                    size=o.size,
                    radius=o.radius,
                    x=x,
                    y=y,
                    rx=o.radius * short / w,
                    ry=o.radius * short / h,
                    vx=vx,
                    vy=vy,
                    motion=span.motion.kind,
                    texture=o.texture,
                    rotation=o.rotation,
                    rgb=self._rgb(span.colour, o.shade),
                )
            )
        needles = tuple(self._needle_truth(i, n, t) for i, n in enumerate(self.needles) if n.active(t))
        objs = _with_occlusion(objs, needles)
        return FrameTruth(
            t=t,
            clip=int(t // self.clip_seconds),
            scene=idx,
            background=scene.background.kind,
            objects=tuple(objs),
            needles=needles,
        )

    def _rgb(self, colour: str, shade: tuple[int, int, int]) -> tuple[int, int, int]:
        base = COLOURS[colour]
        if not self.style.shade:
            return base
        r, g, b = (int(np.clip(c + d, 0, 255)) for c, d in zip(base, shade, strict=True))
        return (r, g, b)

    def _needle_truth(self, index: int, n: Needle, t: float) -> NeedleTruth:
        w, h = self.style.width, self.style.height
        short = min(w, h)
        # a card is held by hand: it shakes a little
        x = n.x + 0.006 * math.sin(2.1 * t + 3 * index)
        y = n.y + 0.006 * math.cos(1.7 * t + index)
        if n.kind == "card":
            half_h = n.size * short / 2 / h
            half_w = n.size * CARD_ASPECT * short / 2 / w
        else:
            half_w, half_h = n.size * short / w, n.size * short / h
        return NeedleTruth(index, n, (x - half_w, y - half_h, x + half_w, y + half_h))

    # --- pixels -----------------------------------------------------------------------------------
    def render(self, what: float | FrameTruth) -> np.ndarray:
        """The clean frame (no noise, blur or codec) at time t or for a truth: [H, W, 3] uint8."""
        truth = what if isinstance(what, FrameTruth) else self.truth(what)
        w, h = self.style.width, self.style.height
        bg = self._backgrounds.get(
            truth.scene, lambda: background_image(self.scene(truth.scene).background, w, h)
        )
        frame = bg.copy()
        for o in truth.objects:
            d = sprite_diameter(o.radius, w, h)
            texture = o.texture if self.style.textures else "solid"
            prem, inv = sprite(o.shape, d, o.rotation, texture, o.rgb)
            x0, y0, _, _ = o.box(w, h)
            blend(frame, prem, inv, x0, y0)
        for nt in truth.needles:
            self._draw_needle(frame, nt)
        return frame

    def _draw_needle(self, frame: np.ndarray, nt: NeedleTruth) -> None:
        w, h = self.style.width, self.style.height
        n = nt.needle
        box = nt.pixel_box(w, h)
        if n.kind == "card":
            assert n.border is not None
            draw_card(frame, box, n.border, glyph=n.glyph, pointer=n.pointer, font=self.style.font)
            return
        assert n.shape is not None and n.colour is not None
        d = sprite_diameter(n.size, w, h)
        texture = "shaded" if self.style.textures else "solid"
        prem, inv = sprite(n.shape, d, 0.0, texture, COLOURS[n.colour])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        blend(frame, prem, inv, round(cx - d / 2), round(cy - d / 2))

    def frames(
        self,
        fps: float = 1.0,
        start: float = 0.0,
        count: int | None = None,
        *,
        offset: float = 0.5,
        render: bool = True,
        effects: bool = True,
        codec: bool = True,
    ) -> Iterator[Frame]:
        """Frames sampled at `fps` from `start`, lazily; `count` None streams forever.

        With `effects`, the style's noise and blur are applied, and with `codec` too its codec round
        trip (the "h264" codec encodes runs of H264_RUN frames, so it holds that many at a time).
        """
        if not fps > 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps}")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        h264 = render and effects and codec and self.style.codec == "h264"
        pending: list[Frame] = []
        i = 0
        while count is None or i < count:
            t = start + (i + offset) / fps
            truth = self.truth(t)
            image = None
            if render:
                image = self.render(truth)
                if effects:
                    image = self._effects.apply(image, key=round(t * 1000), codec=codec)
            frame = Frame(i, t, truth, image)
            i += 1
            if not h264:
                yield frame
                continue
            pending.append(frame)
            if len(pending) == H264_RUN:
                yield from self._h264(pending)
                pending = []
        if pending:
            yield from self._h264(pending)

    def _h264(self, frames: list[Frame]) -> list[Frame]:
        images = h264_roundtrip([f.image for f in frames if f.image is not None], self.style.quality)
        return [Frame(f.index, f.t, f.truth, img) for f, img in zip(frames, images, strict=True)]

    def video(self, start: float = 0.0, num_frames: int = 16, fps: float = 1.0) -> VideoTruth:
        """Ground truth of `num_frames` frames sampled at `fps` from `start` (no pixels)."""
        if num_frames < 1:
            raise ValueError(f"a video needs at least one frame, got {num_frames}")
        truths = tuple(f.truth for f in self.frames(fps, start, num_frames, render=False))
        t0, t1 = truths[0].t, truths[-1].t
        return VideoTruth(
            frames=truths,
            fps=fps,
            start=start,
            events=tuple(self.events(t0, t1)),
            cuts=tuple(self.cuts(t0, t1)),
        )


def _with_occlusion(objs: list[ObjectTruth], needles: tuple[NeedleTruth, ...]) -> list[ObjectTruth]:
    """Set each object's occlusion: the share of its box covered by later objects and by needles."""
    boxes = [(o.x - o.rx, o.y - o.ry, o.x + o.rx, o.y + o.ry) for o in objs]
    boxes += [n.box for n in needles]
    out = []
    for i, o in enumerate(objs):
        area = 4 * o.rx * o.ry
        covered = sum(_overlap(boxes[i], b) for b in boxes[i + 1 :]) / area if area > 0 else 0.0
        if covered:
            o = ObjectTruth(**{**o.__dict__, "occlusion": min(1.0, covered)})
        out.append(o)
    return out
