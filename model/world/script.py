"""What happens in a scene, as plain data: objects, their colours and motion over time, needles.

A scene is a script in continuous time (seconds), so it can be rendered at any frame rate and sampled
at any rate. Random scenes come from `generate.py`; hand-written ones (the quick-start demo) use the
same types. Positions are normalised: x in [0, 1] across the width, y in [0, 1] down the height; an
object's radius is a fraction of the frame's shorter side, so a circle stays round at any aspect.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .palette import ALL_SHAPES, BORDER_COLOURS, COLOURS, GLYPHS, SIZES, TEXTURES

MOTIONS: tuple[str, ...] = ("static", "left", "right", "up", "down", "bouncing")


class ScriptError(ValueError):
    """A scene or needle that the world cannot draw or answer about."""


def reflect(p: float, lo: float, hi: float) -> float:
    """Position on a segment [lo, hi] of a point that moved freely to p and bounced off the ends."""
    span = hi - lo
    if span <= 0:
        return lo
    u = (p - lo) % (2 * span)
    return lo + (2 * span - u if u > span else u)


@dataclass(frozen=True)
class Motion:
    """Linear motion from (x0, y0) at time t0. `bouncing` reflects off the walls of `box` (x0, y0,
    x1, y1), by default [margin, 1 - margin] on both axes."""

    kind: str
    x0: float
    y0: float
    vx: float = 0.0
    vy: float = 0.0
    t0: float = 0.0
    margin: float = 0.0
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in MOTIONS:
            raise ScriptError(f"unknown motion {self.kind!r}; expected one of {MOTIONS}")

    def walls(self) -> tuple[float, float, float, float]:
        if self.box is not None:
            return self.box
        return self.margin, self.margin, 1.0 - self.margin, 1.0 - self.margin

    def at(self, t: float) -> tuple[float, float]:
        dt = t - self.t0
        x, y = self.x0 + self.vx * dt, self.y0 + self.vy * dt
        if self.kind == "bouncing":
            x0, y0, x1, y1 = self.walls()
            x, y = reflect(x, x0, x1), reflect(y, y0, y1)
        return x, y

    def velocity_at(self, t: float) -> tuple[float, float]:
        """Velocity (normalised units per second), with the sign flips of any bounces so far."""
        if self.kind != "bouncing":
            return self.vx, self.vy
        x0, y0, x1, y1 = self.walls()
        dt = t - self.t0
        return (
            _bounced_velocity(self.x0 + self.vx * dt, self.vx, x0, x1),
            _bounced_velocity(self.y0 + self.vy * dt, self.vy, y0, y1),
        )


def _bounced_velocity(p: float, v: float, lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return 0.0
    u = (p - lo) % (2 * span)
    return -v if u > span else v


@dataclass(frozen=True)
class Span:
    """A stretch [start, end) of an object's life with one colour and one motion."""

    start: float
    end: float
    colour: str
    motion: Motion

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise ScriptError(f"a span must end after it starts: [{self.start}, {self.end})")
        if self.colour not in COLOURS:
            raise ScriptError(f"unknown colour {self.colour!r}")


@dataclass(frozen=True)
class ObjectScript:
    """One object of a scene. Gaps between spans are times when it is absent."""

    id: int
    shape: str
    size: str
    radius: float
    spans: tuple[Span, ...]
    texture: str = "solid"
    rotation: float = 0.0  # degrees, small: a square never turns into a diamond
    shade: tuple[int, int, int] = (0, 0, 0)  # per-object offset from the palette colour
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.shape not in ALL_SHAPES:
            raise ScriptError(f"unknown shape {self.shape!r}")
        if self.size not in SIZES:
            raise ScriptError(f"unknown size {self.size!r}")
        if self.texture not in TEXTURES:
            raise ScriptError(f"unknown texture {self.texture!r}")
        if not self.spans:
            raise ScriptError(f"object {self.id} has no spans")
        for a, b in zip(self.spans, self.spans[1:], strict=False):
            if b.start < a.end:
                raise ScriptError(f"object {self.id}: spans overlap or are out of order")
        object.__setattr__(self, "_starts", tuple(s.start for s in self.spans))

    def span_at(self, t: float) -> Span | None:
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self.spans[i].end:
            return self.spans[i]
        return None


# how captions name each background kind
BACKGROUND_WORDS = {
    "solid": "plain",
    "gradient": "gradient",
    "noise": "mottled",
    "stripes": "striped",
    "checks": "checked",
}


@dataclass(frozen=True)
class Background:
    """kind: solid | gradient | noise | stripes | checks; two tones; angle (degrees) and period
    (fraction of the shorter side) for gradients, stripes and checks; seed for noise."""

    kind: str
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]
    angle: float = 0.0
    period: float = 0.2
    seed: int = 0

    def describe(self) -> str:
        return BACKGROUND_WORDS[self.kind]


@dataclass(frozen=True)
class Event:
    """Something that happens at time t: an object appears, disappears or changes colour."""

    t: float
    kind: str  # appear | disappear | recolour
    object_id: int
    shape: str
    size: str
    colour: str  # the colour before the event (appear: the colour it appears in)
    new_colour: str | None = None


@dataclass(frozen=True)
class Scene:
    index: int
    start: float
    end: float
    background: Background
    objects: tuple[ObjectScript, ...]
    events: tuple[Event, ...] = ()

    @classmethod
    def build(
        cls, index: int, start: float, end: float, background: Background, objects: tuple[ObjectScript, ...]
    ) -> Scene:
        """A scene with its events derived from the objects' spans."""
        return cls(index, start, end, background, objects, derive_events(objects, start, end))


def derive_events(objects: tuple[ObjectScript, ...], start: float, end: float) -> tuple[Event, ...]:
    """Appearances, disappearances and colour changes strictly inside (start, end), in time order."""
    events: list[Event] = []
    eps = 1e-9
    for obj in objects:
        prev: Span | None = None
        for span in obj.spans:
            joined = prev is not None and abs(prev.end - span.start) < eps
            if span.start > start + eps and not joined:
                events.append(Event(span.start, "appear", obj.id, obj.shape, obj.size, span.colour))
            elif joined and prev is not None and prev.colour != span.colour:
                events.append(
                    Event(span.start, "recolour", obj.id, obj.shape, obj.size, prev.colour, span.colour)
                )
            if prev is not None and not joined and prev.end < end - eps:
                events.append(Event(prev.end, "disappear", obj.id, obj.shape, obj.size, prev.colour))
            prev = span
        if prev is not None and prev.end < end - eps:
            events.append(Event(prev.end, "disappear", obj.id, obj.shape, obj.size, prev.colour))
    events.sort(key=lambda e: (e.t, e.object_id))
    return tuple(events)


@dataclass(frozen=True)
class Needle:
    """A needle held up for [start, end): a card (glyph or colour pointer) or a distinctive object.

    Cards: `border` names the card's border colour; it shows either `glyph` (a digit or letter) or a
    disc of colour `pointer`, which means "now find the card whose border is this colour" (multi-hop
    chains). Objects: a large `shape` (star or heart) of `colour`. x, y: centre; size: the card's
    height (or the object's radius) as a fraction of the frame's shorter side.
    """

    start: float
    end: float
    kind: str  # card | object
    x: float = 0.5
    y: float = 0.5
    size: float = 0.6
    border: str | None = None
    glyph: str | None = None
    pointer: str | None = None
    shape: str | None = None
    colour: str | None = None

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise ScriptError(f"a needle must end after it starts: [{self.start}, {self.end})")
        if self.kind == "card":
            if self.border not in BORDER_COLOURS:
                raise ScriptError(f"a card needs a border colour from {BORDER_COLOURS}, got {self.border!r}")
            if (self.glyph is None) == (self.pointer is None):
                raise ScriptError("a card shows exactly one of a glyph or a pointer colour")
            if self.glyph is not None and self.glyph not in GLYPHS:
                raise ScriptError(f"unknown card glyph {self.glyph!r}")
            if self.pointer is not None and self.pointer not in BORDER_COLOURS:
                raise ScriptError(f"a pointer must name a border colour, got {self.pointer!r}")
        elif self.kind == "object":
            if self.shape not in ALL_SHAPES or self.colour not in COLOURS:
                raise ScriptError(f"a needle object needs a known shape and colour, got {self!r}")
        else:
            raise ScriptError(f"unknown needle kind {self.kind!r}")

    def active(self, t: float) -> bool:
        return self.start <= t < self.end
