"""Random scenes, deterministic from (world seed, scene index).

Scenes are planned clip by clip (a clip is `clip_seconds` long: 4 frames at 1 fps), so that what the
model is asked about holds for whole clips:
- events (appear, disappear, change colour) happen only at clip boundaries, at most one per boundary,
  so every state lasts at least one clip and every event lies between two sampled clips;
- motion (static, a direction, bouncing) is chosen per clip; directions are only chosen where the
  object has room to travel the whole clip, so a sampled track is monotonic and stays in frame;
- new objects are placed away from the others, and most colour+shape pairs are kept unique in a scene,
  so objects can be named ("the red circle") without ambiguity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .palette import (
    BACKGROUND_LEVELS,
    BACKGROUND_TINT,
    COLOUR_NAMES,
    SHADE,
    SHAPES,
    SIZES,
    TEXTURES,
)
from .script import Background, Motion, ObjectScript, Scene, ScriptError, Span

DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# How far an object keeps from the frame's edge, beyond its radius (normalised).
EDGE = 0.01


@dataclass(frozen=True)
class WorldConfig:
    """The statistics of random scenes. Ranges are inclusive; rates are per clip boundary."""

    clip_seconds: float = 4.0
    scene_clips: tuple[int, int] = (4, 24)
    objects: tuple[int, int] = (1, 5)
    max_objects: int = 7
    event_rate: float = 0.35
    small_rate: float = 0.2
    # static, one of four directions, bouncing
    motion_weights: tuple[float, float, float] = (0.35, 0.45, 0.2)
    motion_change: float = 0.3
    speed: tuple[float, float] = (0.05, 0.1)  # directional, frame fractions per second
    bounce_speed: tuple[float, float] = (0.15, 0.3)
    unique_rate: float = 0.8  # chance a new object gets a colour+shape pair not yet in the scene
    event_weights: tuple[float, float, float] = (0.35, 0.3, 0.35)  # appear, disappear, recolour

    def __post_init__(self) -> None:
        lo, hi = self.scene_clips
        if not 1 <= lo <= hi:
            raise ScriptError(f"scene_clips must be 1 <= min <= max, got {self.scene_clips}")
        if not 0 <= self.objects[0] <= self.objects[1] <= self.max_objects:
            raise ScriptError(f"objects must be 0 <= min <= max <= max_objects, got {self.objects}")
        if self.clip_seconds <= 0:
            raise ScriptError(f"clip_seconds must be positive, got {self.clip_seconds}")
        for name in ("event_rate", "small_rate", "motion_change", "unique_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ScriptError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        # the fastest directional mover must be able to cross a clip inside the frame
        if self.speed[1] * self.clip_seconds > 0.6 or self.speed[0] <= 0:
            raise ScriptError(f"speed range {self.speed} is outside (0, 0.6 / clip_seconds]")


def scene_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, index, stream])


def scene_length(seed: int, index: int, cfg: WorldConfig) -> int:
    """Clips in scene `index` (drawn on its own, so scene starts can be found without building scenes)."""
    lo, hi = cfg.scene_clips
    return int(scene_rng(seed, index, 0).integers(lo, hi + 1))


def make_background(
    rng: np.random.Generator, kinds: tuple[str, ...], fixed: tuple[int, int, int] | None
) -> Background:
    kind = str(kinds[int(rng.integers(len(kinds)))])
    lo, hi = BACKGROUND_LEVELS
    level = int(rng.integers(lo, hi + 1))
    c1 = _tone(level, rng)
    delta = int(rng.integers(20, 51)) * (1 if level < (lo + hi) // 2 else -1)
    c2 = _tone(level + delta, rng)
    if fixed is not None and kind == "solid":
        c1 = c2 = fixed
    return Background(
        kind=kind,
        colour=c1,
        colour2=c2,
        angle=float(rng.uniform(0, 180)),
        period=float(rng.uniform(0.08, 0.3)),
        seed=int(rng.integers(2**31)),
    )


def _tone(level: int, rng: np.random.Generator) -> tuple[int, int, int]:
    lo, hi = BACKGROUND_LEVELS
    tint = rng.integers(-BACKGROUND_TINT, BACKGROUND_TINT + 1, size=3)
    r, g, b = (int(np.clip(level + d, lo, hi)) for d in tint)
    return (r, g, b)


@dataclass
class _Live:
    """An object while its scene is being planned."""

    script_id: int
    shape: str
    size: str
    radius: float
    texture: str
    rotation: float
    shade: tuple[int, int, int]
    colour: str
    motion: Motion
    since: float
    spans: list[Span] = field(default_factory=list)

    def cut(self, t: float) -> None:
        """Close the current span at t (no-op for an empty one)."""
        if t > self.since:
            self.spans.append(Span(self.since, t, self.colour, self.motion))
        self.since = t

    def bounds(self) -> tuple[float, float]:
        return self.radius + EDGE, 1.0 - self.radius - EDGE

    def script(self) -> ObjectScript:
        return ObjectScript(
            id=self.script_id,
            shape=self.shape,
            size=self.size,
            radius=self.radius,
            spans=tuple(self.spans),
            texture=self.texture,
            rotation=self.rotation,
            shade=self.shade,
        )


class _Planner:
    def __init__(self, rng: np.random.Generator, cfg: WorldConfig, first_id: int) -> None:
        self.rng, self.cfg = rng, cfg
        self.next_id = first_id
        self.live: list[_Live] = []
        self.done: list[_Live] = []
        self.pairs_seen: set[tuple[str, str]] = set()

    # --- objects -------------------------------------------------------------------------------
    def add(self, t: float, shape: str | None = None) -> _Live:
        rng, cfg = self.rng, self.cfg
        size = "small" if rng.random() < cfg.small_rate else str(rng.choice(["medium", "large"]))
        lo, hi = SIZES[size]
        radius = float(rng.uniform(lo, hi))
        colour, shape = self._pick_pair(shape)
        x, y = self._place(radius)
        # whole degrees (sprites are cached per rotation), small: a square never reads as a diamond
        rotation = 0.0 if shape == "circle" else float(rng.integers(-10, 11))
        shade = tuple(int(v) for v in rng.integers(-SHADE, SHADE + 1, size=3))
        obj = _Live(
            script_id=self.next_id,
            shape=shape,
            size=size,
            radius=radius,
            texture=str(TEXTURES[int(rng.integers(len(TEXTURES)))]),
            rotation=rotation,
            shade=(shade[0], shade[1], shade[2]),
            colour=colour,
            motion=Motion("static", x, y, t0=t),
            since=t,
        )
        self.next_id += 1
        self.live.append(obj)
        self.pairs_seen.add((colour, shape))
        return obj

    def _pick_pair(self, shape: str | None) -> tuple[str, str]:
        rng = self.rng
        unique = rng.random() < self.cfg.unique_rate
        for _ in range(40):
            c = str(COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))])
            s = shape or str(SHAPES[int(rng.integers(len(SHAPES)))])
            if not unique or (c, s) not in self.pairs_seen:
                return c, s
        return c, s

    def _place(self, radius: float) -> tuple[float, float]:
        lo, hi = radius + EDGE, 1.0 - radius - EDGE
        best, best_gap = (0.5, 0.5), -1.0
        for _ in range(30):
            x, y = (float(v) for v in self.rng.uniform(lo, hi, size=2))
            gap = min(
                (
                    float(np.hypot(x - ox, y - oy)) - radius - o.radius
                    for o in self.live
                    for ox, oy in [o.motion.at(o.since)]
                ),
                default=1.0,
            )
            if gap > 0.03:
                return x, y
            if gap > best_gap:
                best, best_gap = (x, y), gap
        return best

    # --- events --------------------------------------------------------------------------------
    def event(self, t: float) -> None:
        rng, cfg = self.rng, self.cfg
        kinds, weights = [], []
        if len(self.live) < cfg.max_objects:
            kinds.append("appear")
            weights.append(cfg.event_weights[0])
        if len(self.live) > 1:
            kinds.append("disappear")
            weights.append(cfg.event_weights[1])
        if self.live:
            kinds.append("recolour")
            weights.append(cfg.event_weights[2])
        if not kinds:
            return
        p = np.asarray(weights) / sum(weights)
        kind = str(rng.choice(kinds, p=p))
        if kind == "appear":
            # a count change half the time: another object of a shape already on screen
            shape = (
                self.live[int(rng.integers(len(self.live)))].shape
                if self.live and rng.random() < 0.5
                else None
            )
            self.add(t, shape)
        elif kind == "disappear":
            obj = self.live.pop(int(rng.integers(len(self.live))))
            obj.cut(t)
            self.done.append(obj)
        else:
            obj = self.live[int(rng.integers(len(self.live)))]
            choices = [c for c in COLOUR_NAMES if c != obj.colour and (c, obj.shape) not in self.pairs_seen]
            choices = choices or [c for c in COLOUR_NAMES if c != obj.colour]
            obj.cut(t)
            obj.colour = str(choices[int(rng.integers(len(choices)))])
            self.pairs_seen.add((obj.colour, obj.shape))

    # --- motion --------------------------------------------------------------------------------
    def move(self, obj: _Live, t: float, t_end: float) -> None:
        """Choose obj's motion for [t, t_end): keep the current one or start a new one at t."""
        rng, cfg = self.rng, self.cfg
        if obj.since < t and rng.random() >= cfg.motion_change and self._fits(obj, obj.motion, t_end):
            return
        x, y = obj.motion.at(t)
        lo, hi = obj.bounds()
        x, y = float(np.clip(x, lo, hi)), float(np.clip(y, lo, hi))
        w = np.asarray(cfg.motion_weights, dtype=float)
        family = int(rng.choice(3, p=w / w.sum()))
        motion = Motion("static", x, y, t0=t)
        if family == 1:
            speed = float(rng.uniform(*cfg.speed))
            span = t_end - t
            room = {"left": x - lo, "right": hi - x, "up": y - lo, "down": hi - y}
            options = [d for d, r in room.items() if r >= speed * span]
            if options:
                d = options[int(rng.integers(len(options)))]
                dx, dy = DIRECTIONS[d]
                motion = Motion(d, x, y, dx * speed, dy * speed, t0=t)
        elif family == 2:
            vx, vy = (float(v) for v in rng.uniform(*cfg.bounce_speed, size=2) * rng.choice([-1, 1], size=2))
            motion = Motion("bouncing", x, y, vx, vy, t0=t, margin=lo)
        if motion != obj.motion:
            obj.cut(t)
            obj.motion = motion

    @staticmethod
    def _fits(obj: _Live, motion: Motion, t_end: float) -> bool:
        if motion.kind in ("static", "bouncing"):
            return True
        lo, hi = obj.bounds()
        x, y = motion.at(t_end)
        return lo <= x <= hi and lo <= y <= hi


def make_scene(
    seed: int,
    index: int,
    start: float,
    clips: int,
    cfg: WorldConfig,
    *,
    backgrounds: tuple[str, ...],
    fixed_background: tuple[int, int, int] | None,
) -> Scene:
    """Scene `index` of world `seed`, `clips` clips long from `start` (seconds)."""
    rng = scene_rng(seed, index, 1)
    # its own stream, so a different style never changes a scene's objects
    background = make_background(scene_rng(seed, index, 2), backgrounds, fixed_background)
    planner = _Planner(rng, cfg, first_id=index * 1000)
    n0 = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    for _ in range(n0):
        planner.add(start)
    T = cfg.clip_seconds
    end = start + clips * T
    for c in range(clips):
        t = start + c * T
        if c > 0 and rng.random() < cfg.event_rate:
            planner.event(t)
        for obj in planner.live:
            planner.move(obj, t, t + T)
    for obj in planner.live:
        obj.cut(end)
    objects = sorted(planner.done + planner.live, key=lambda o: o.script_id)
    return Scene.build(index, start, end, background, tuple(o.script() for o in objects if o.spans))
