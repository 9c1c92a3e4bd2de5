"""The quick start's demo video: a scripted scene of the generated world (flashlive.model.world).

A large ball crosses a plain background once per segment (15 s), bouncing up and down, and changes
colour each segment (red, green, blue, yellow, then round again); a row of black squares along the
bottom grows by one each segment. So "What colour is the ball?" has one right answer per segment, and
"How many squares are there?" another: `demo_segments` gives both, and the world gives the full
ground truth of every frame. Drawn by the same renderer (and named by the same language) as the
world the small model is trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashlive.model.world import (
    COLOURS as PALETTE,
)
from flashlive.model.world import (
    Background,
    Motion,
    ObjectScript,
    Scene,
    Span,
    Style,
    World,
    write_mp4,
)

SEGMENT_S = 15.0
BALL_COLOURS = ("red", "green", "blue", "yellow")
COLOURS = {name: PALETTE[name] for name in BALL_COLOURS}
MAX_SQUARES = 8
BACKGROUND = (200, 200, 200)
BALL_RADIUS = 0.125  # of the shorter side
SQUARE_RADIUS = 0.065


@dataclass(frozen=True)
class DemoSegment:
    start: float
    end: float
    ball: str  # the ball's colour
    squares: int  # how many squares are on screen


def demo_segments(seconds: float = 60.0, segment_s: float = SEGMENT_S) -> list[DemoSegment]:
    """The ground truth per segment: segment i shows ball colour i (cycling) and i % 8 + 1 squares."""
    if not seconds > 0 or not segment_s > 0:
        raise ValueError(f"seconds and segment_s must be positive, got {seconds}, {segment_s}")
    n = math.ceil(seconds / segment_s)
    return [
        DemoSegment(
            start=i * segment_s,
            end=min((i + 1) * segment_s, seconds),
            ball=BALL_COLOURS[i % len(BALL_COLOURS)],
            squares=i % MAX_SQUARES + 1,
        )
        for i in range(n)
    ]


def demo_scene(seconds: float = 60.0, segment_s: float = SEGMENT_S) -> Scene:
    segments = demo_segments(seconds, segment_s)
    end = segments[-1].end
    margin = BALL_RADIUS + 0.01
    square_top = 1 - 2 * SQUARE_RADIUS - 0.02
    # across the frame once per segment, bouncing between the top and just above the squares
    box = (margin, margin, 1 - margin, square_top - BALL_RADIUS - 0.02)
    vx = (1 - 2 * margin) / segment_s
    ball_spans = tuple(
        Span(s.start, s.end, s.ball, Motion("bouncing", margin, 0.5, vx, 0.3, t0=s.start, box=box))
        for s in segments
    )
    objects = [ObjectScript(0, "circle", "large", BALL_RADIUS, ball_spans, texture="shaded")]
    y = square_top + SQUARE_RADIUS
    for k in range(MAX_SQUARES):
        x = 0.06 + k * 0.115
        spans = [
            Span(s.start, s.end, "black", Motion("static", x, y, t0=s.start))
            for s in segments
            if s.squares > k
        ]
        if spans:
            objects.append(ObjectScript(1 + k, "square", "medium", SQUARE_RADIUS, _merge(spans)))
    background = Background("solid", BACKGROUND, BACKGROUND)
    return Scene.build(0, 0.0, end, background, tuple(objects))


def _merge(spans: list[Span]) -> tuple[Span, ...]:
    """Join back-to-back spans of a still square, so it does not 'appear' again every segment."""
    out = [spans[0]]
    for s in spans[1:]:
        last = out[-1]
        if abs(last.end - s.start) < 1e-9 and last.colour == s.colour:
            out[-1] = Span(last.start, s.end, last.colour, last.motion)
        else:
            out.append(s)
    return tuple(out)


def demo_world(
    seconds: float = 60.0, width: int = 320, height: int = 240, segment_s: float = SEGMENT_S
) -> World:
    style = Style(width=width, height=height, background=BACKGROUND, textures=True)
    return World(0, style=style, scenes=[demo_scene(seconds, segment_s)])


def demo_frame(t: float, width: int = 320, height: int = 240, segment_s: float = SEGMENT_S) -> np.ndarray:
    """The scene at time t seconds: [H, W, 3] uint8 RGB."""
    return demo_world(max(t + segment_s, segment_s), width, height, segment_s).render(t)


def write_demo_video(
    path: str | Path, *, seconds: float = 60.0, fps: int = 10, size: tuple[int, int] = (320, 240)
) -> int:
    """Encode the demo scene as H.264 (mp4/mkv) and return the number of frames written."""
    width, height = size
    return write_mp4(demo_world(seconds, width, height), path, seconds=seconds, fps=fps)
