"""Questions and answers generated from the ground truth of the frames a model is shown.

Everything here works on a `VideoTruth` (the sampled frames' truths), never on the script, so an
answer can only rest on what the sampled frames show. The rules that keep answers unambiguous:
- an object counts as *seen* in a frame when at most SEEN of it is covered; a fact about a clip needs
  the object in all of the clip's frames and seen in at least MIN_SEEN of them;
- a referring expression ("the red circle", "the small square") must match no other object anywhere in
  the question's frames, and an attribute used to name an object must not change in those frames;
- motion is the script's motion *and* visible in the samples: a direction moves at least MOVE per
  sample along its axis and at most DRIFT across it; "standing still" moves less than STILL; "bouncing"
  shows a reversal;
- an event is asked about only when the two sampled frames on each side of it show the change, and its
  phrase names exactly one event of the video;
- "what is happening now" is asked only when the last clip has exactly one thing happening;
- needle questions list four distinct options, none of which is shown on another card.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from . import language as L
from .palette import ALL_SHAPES, COLOUR_NAMES, DIGITS, LETTERS, SHAPES
from .script import BACKGROUND_WORDS, Event, Needle
from .world import ObjectTruth, VideoTruth

SEEN = 0.25  # max share covered for an object to count as seen
MIN_SEEN = 2  # frames of a clip in which an object must be seen
MOVE = 0.03  # min travel per sample of a moving object (normalised)
DRIFT = 0.01  # max travel per sample across a direction's axis
STILL = 0.002  # max travel per sample of a still object
EVENT_MARGIN = 2  # sampled frames needed on each side of an event

KINDS: tuple[str, ...] = (
    "caption",
    "colour",
    "shape",
    "count",
    "motion",
    "presence",
    "now",
    "just",
    "first",
    "after",
    "before",
    "before_after",
    "when",
    "needle",
    "multihop",
    "needle_open",
)


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str
    evidence: tuple[int, int]  # first and last frame index (in the video) the answer rests on
    needs_hires: bool = False  # about a small object: meant to need the 448 tower
    options: tuple[str, ...] = ()  # multiple choice: the texts of options A-D
    value: float | None = None  # a count, seconds (for "when"), or the hop count (multi-hop)


@dataclass(frozen=True)
class _Seen:
    """An observable event: the script event, the first frame after it, and its phrases."""

    event: Event
    frame: int
    ref: str


class Facts:
    """Per-object tracks and clip structure of a video, and the checks built on them.

    Spans of frames are `range`s of frame indices. Objects live in one stretch of frames (from their
    scene's start or their appearance to their disappearance), so a track is stored from its first to
    its last frame, and span queries cost O(objects), not O(objects x frames).
    """

    def __init__(self, video: VideoTruth) -> None:
        self.video = video
        self.frames = video.frames
        self.n = len(video.frames)
        self.all = range(self.n)
        step = video.clip_frames
        self.clips = [range(i, i + step) for i in range(0, self.n - step + 1, step)]
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self._objs: dict[int, dict[int, ObjectTruth]] = {}
        for i, f in enumerate(video.frames):
            for o in f.objects:
                self._objs.setdefault(o.id, {})[i] = o
                self.first.setdefault(o.id, i)
                self.last[o.id] = i
        self.times = [f.t for f in video.frames]
        self._colours: dict[tuple[int, int, int], frozenset[str]] = {}
        self._observable: list[tuple[Event, int]] | None = None

    # --- objects in frames ----------------------------------------------------------------------
    def at(self, oid: int, k: int) -> ObjectTruth | None:
        return self._objs.get(oid, {}).get(k)

    def ids_in(self, r: range) -> list[int]:
        return [i for i in self.first if self.first[i] < r.stop and self.last[i] >= r.start]

    def solid(self, oid: int, r: range) -> bool:
        """Present in every frame of r and seen in enough of them."""
        objs = [self.at(oid, k) for k in r]
        if any(o is None for o in objs):
            return False
        return sum(o.occlusion <= SEEN for o in objs if o is not None) >= min(MIN_SEEN, len(r))

    def absent(self, oid: int, r: range) -> bool:
        return all(self.at(oid, k) is None for k in r)

    def colours(self, oid: int, r: range) -> frozenset[str]:
        key = (oid, r.start, r.stop)
        if key not in self._colours:
            lo, hi = max(r.start, self.first[oid]), min(r.stop, self.last[oid] + 1)
            self._colours[key] = frozenset(
                o.colour for k in range(lo, hi) if (o := self.at(oid, k)) is not None
            )
        return self._colours[key]

    def some(self, oid: int) -> ObjectTruth:
        o = self.at(oid, self.first[oid])
        assert o is not None
        return o

    def has_needle(self, r: range) -> bool:
        return any(self.frames[k].needles for k in r)

    # --- naming ---------------------------------------------------------------------------------
    def refer(
        self,
        oid: int,
        r: range,
        forms: Sequence[tuple[str, ...]],
        rng: np.random.Generator,
        *,
        colour: str | None = None,
    ) -> str | None:
        """A phrase that names `oid` and nothing else in frames r, in one of `forms` (attribute sets).

        The first valid form is the plain one; a longer one is used now and then, so that a model
        meets sizes in names and learns to resolve them.
        """
        target = self.some(oid)
        if colour is None:
            cs = self.colours(oid, r)
            colour = next(iter(cs)) if len(cs) == 1 else None
        others = [(self.some(i), self.colours(i, r)) for i in self.ids_in(r) if i != oid]
        needles = self.has_needle(r)
        valid = []
        for form in forms:
            if "colour" in form and colour is None:
                continue
            if "shape" not in form and needles:
                continue  # "the red object" could be a card or a needle object
            if any(_matches(form, target, colour, o, ocs) for o, ocs in others):
                continue
            valid.append(form)
        if not valid:
            return None
        form = valid[0] if rng.random() < 0.6 else valid[_pick(rng, valid)]
        return L.the_obj(
            colour=colour if "colour" in form else None,
            shape=L.noun(target.shape, rng) if "shape" in form else None,
            size=target.size if "size" in form else None,
        )

    # --- motion ---------------------------------------------------------------------------------
    def motion(self, oid: int, r: range) -> str | None:
        """The motion of `oid` over frames r if the script's motion is one and the samples show it."""
        objs = [self.at(oid, k) for k in r]
        present = [o for o in objs if o is not None]
        if len(present) < 2 or len(present) != len(objs):
            return None
        kinds = {o.motion for o in present}
        if len(kinds) != 1:
            return None
        kind = kinds.pop()
        xs = np.array([o.x for o in present])
        ys = np.array([o.y for o in present])
        dx, dy = np.diff(xs), np.diff(ys)
        if kind == "static":
            return kind if np.all(np.hypot(dx, dy) < STILL) else None
        if kind == "bouncing":
            turns = np.any(np.sign(dx[1:]) != np.sign(dx[:-1])) or np.any(np.sign(dy[1:]) != np.sign(dy[:-1]))
            return kind if turns and float(np.hypot(dx, dy).mean()) >= MOVE else None
        along, across, sign = {
            "left": (dx, dy, -1),
            "right": (dx, dy, 1),
            "up": (dy, dx, -1),
            "down": (dy, dx, 1),
        }[kind]
        return kind if np.all(along * sign >= MOVE) and np.all(np.abs(across) <= DRIFT) else None

    # --- counting -------------------------------------------------------------------------------
    def count(self, r: range, colour: str | None, shape: str | None) -> frozenset[int] | None:
        """The ids of objects of this colour/shape in frames r, if every one is clearly there throughout."""
        ids = set()
        for oid in self.ids_in(r):
            o = self.some(oid)
            cs = self.colours(oid, r)
            if shape is not None and o.shape != shape:
                continue
            if colour is not None and colour not in cs:
                continue
            if (colour is not None and len(cs) > 1) or not self.solid(oid, r):
                return None
            ids.add(oid)
        return frozenset(ids)

    # --- events ---------------------------------------------------------------------------------
    def observable(self) -> list[tuple[Event, int]]:
        """Events the samples show, each with the index of the first frame after it."""
        if self._observable is None:
            self._observable = []
            for e in self.video.events:
                i = bisect.bisect_right(self.times, e.t)
                before, after = range(i - EVENT_MARGIN, i), range(i, i + EVENT_MARGIN)
                if before.start >= 0 and after.stop <= self.n and self._shows(e, before, after):
                    self._observable.append((e, i))
        return self._observable

    def observed(self, rng: np.random.Generator) -> list[_Seen]:
        """Observable events, each with a phrase naming it and no other event of the video."""
        out = []
        for e, i in self.observable():
            ref = self.refer(e.object_id, self.all, EVENT_REFS, rng, colour=e.colour)
            if ref is not None:
                out.append(_Seen(e, i, ref))
        phrases = [event_text(L.EVENT_PAST, s) for s in out]
        return [s for s, p in zip(out, phrases, strict=True) if phrases.count(p) == 1]

    def _shows(self, e: Event, before: range, after: range) -> bool:
        oid = e.object_id
        if oid not in self.first:
            return False
        if e.kind == "appear":
            return self.absent(oid, before) and self.solid(oid, after)
        if e.kind == "disappear":
            return self.solid(oid, before) and self.absent(oid, after)
        return (
            self.solid(oid, before)
            and self.solid(oid, after)
            and self.colours(oid, before) == {e.colour}
            and self.colours(oid, after) == {e.new_colour}
        )

    def happenings(self) -> list[float]:
        """Times of everything that happens in the video: events, scene cuts, needles coming and going."""
        times = [e.t for e in self.video.events] + list(self.video.cuts)
        for f, g in itertools.pairwise(self.frames):
            if {n.index for n in f.needles} != {n.index for n in g.needles}:
                times.append((f.t + g.t) / 2)
        return sorted(times)


def _matches(
    form: tuple[str, ...],
    target: ObjectTruth,
    colour: str | None,
    other: ObjectTruth,
    other_colours: frozenset[str],
) -> bool:
    if "shape" in form and other.shape != target.shape:
        return False
    if "size" in form and other.size != target.size:
        return False
    return not ("colour" in form and colour not in other_colours)


def event_text(table: dict[str, str], s: _Seen) -> str:
    return L.event_phrase(table, s.event.kind, s.ref, s.event.new_colour)


def _pick(rng: np.random.Generator, items: Sequence[object]) -> int:
    return int(rng.integers(len(items)))


def _span(r: range) -> tuple[int, int]:
    return (r.start, r.stop - 1)


# --- generators: each returns one QA or None when the video offers nothing answerable ---------------
REF_NO_COLOUR = [("shape",), ("shape", "size")]
REF_NO_SHAPE = [("colour",), ("colour", "size")]
REF_ANY = [("colour", "shape"), ("shape",), ("colour", "shape", "size")]
EVENT_REFS = [("colour", "shape"), ("colour", "shape", "size")]


def _time_spans(f: Facts) -> list[tuple[str, range]]:
    """The spans a state question can be about: the whole video, its start and its end."""
    if not f.clips:
        return []
    spans: list[tuple[str, range]] = [("", range(f.clips[0].start, f.clips[-1].stop))]
    if len(f.clips) > 1:
        spans += [("_now", f.clips[-1]), ("_start", f.clips[0])]
    return spans


def ask_colour(f: Facts, rng: np.random.Generator) -> QA | None:
    spans = _time_spans(f)
    for _ in range(8):
        if not spans:
            return None
        suffix, frames = spans[_pick(rng, spans)]
        ids = [i for i in f.ids_in(frames) if f.solid(i, frames) and len(f.colours(i, frames)) == 1]
        if not ids:
            continue
        oid = ids[_pick(rng, ids)]
        if suffix == "" and len(f.colours(oid, f.all)) > 1:
            continue
        # name it across the whole video, so "now"/"start" compare the same object
        ref = f.refer(oid, f.all if suffix else frames, REF_NO_COLOUR, rng)
        if ref is None:
            continue
        colour = next(iter(f.colours(oid, frames)))
        o = f.some(oid)
        return QA(
            "colour",
            L.say("colour" + suffix, rng, the_obj=ref),
            L.capitalise(colour),
            _span(frames),
            o.size == "small",
        )
    return None


def ask_shape(f: Facts, rng: np.random.Generator) -> QA | None:
    spans = _time_spans(f)
    for _ in range(8):
        if not spans:
            return None
        _, frames = spans[_pick(rng, spans)]
        ids = [i for i in f.ids_in(frames) if f.solid(i, frames)]
        if not ids:
            continue
        oid = ids[_pick(rng, ids)]
        ref = f.refer(oid, frames, REF_NO_SHAPE, rng)
        if ref is None:
            continue
        o = f.some(oid)
        return QA(
            "shape", L.say("shape", rng, the_obj=ref), L.capitalise(o.shape), _span(frames), o.size == "small"
        )
    return None


def ask_count(f: Facts, rng: np.random.Generator) -> QA | None:
    spans = _time_spans(f)
    for _ in range(8):
        if not spans:
            return None
        suffix, frames = spans[_pick(rng, spans)]
        present = [f.some(i) for i in f.ids_in(frames)]
        if rng.random() < 0.15 or not present:  # often a count of zero
            some_colour, some_shape = (
                str(COLOUR_NAMES[_pick(rng, COLOUR_NAMES)]),
                str(SHAPES[_pick(rng, SHAPES)]),
            )
        else:
            o = present[_pick(rng, present)]
            some_colour, some_shape = o.colour, o.shape
        form = int(rng.integers(4))  # objects, red objects, circles, red circles
        colour = some_colour if form in (1, 3) else None
        shape = some_shape if form in (2, 3) else None
        if shape is None and f.has_needle(frames):
            continue  # a card or a needle object would blur "objects" and "red objects"
        clips = [c for c in f.clips if c.start >= frames.start and c.stop <= frames.stop]
        sets = [f.count(c, colour, shape) for c in clips]
        if any(s is None for s in sets) or len(set(sets)) != 1:
            continue
        ids = sets[0]
        assert ids is not None
        hires = any(f.some(i).size == "small" for i in ids)
        noun = L.noun(shape, rng) if shape is not None else None
        question = L.say("count" + suffix, rng, things=L.things(colour=colour, shape=noun))
        return QA("count", question, str(len(ids)), _span(frames), hires, value=len(ids))
    return None


def ask_motion(f: Facts, rng: np.random.Generator) -> QA | None:
    spans = [s for s in _time_spans(f) if s[0] != "_start"]
    for _ in range(8):
        if not spans:
            return None
        suffix, frames = spans[_pick(rng, spans)]
        ids = [i for i in f.ids_in(frames) if f.solid(i, frames)]
        if not ids:
            continue
        oid = ids[_pick(rng, ids)]
        label = f.motion(oid, frames)
        if label is None:
            continue
        ref = f.refer(oid, frames, REF_ANY, rng)
        if ref is None:
            continue
        answer = L.capitalise(L.MOTION_ANSWER[label])
        return QA(
            "motion",
            L.say("motion" + suffix, rng, the_obj=ref),
            answer,
            _span(frames),
            f.some(oid).size == "small",
        )
    return None


def ask_presence(f: Facts, rng: np.random.Generator) -> QA | None:
    if not f.clips:
        return None
    whole = rng.random() < 0.4
    frames = range(f.clips[0].start, f.clips[-1].stop) if whole else f.clips[-1]
    if f.has_needle(frames):
        return None
    for _ in range(8):
        if rng.random() < 0.5:  # a yes: something that is there
            ids = [i for i in f.ids_in(frames) if f.solid(i, frames if not whole else _solid_clip(f, i))]
            if not ids:
                continue
            o = f.some(ids[_pick(rng, ids)])
            cs = f.colours(o.id, frames)
            if len(cs) != 1:
                continue
            colour, shape, answer = next(iter(cs)), o.shape, "Yes"
            hires = o.size == "small"
        else:  # a no: a colour+shape that is nowhere in these frames (often one seen at another time)
            earlier = [f.some(i) for i in f.ids_in(f.all)]
            if earlier and rng.random() < 0.5:
                o = earlier[_pick(rng, earlier)]
                colour, shape = o.colour, o.shape
            else:
                colour, shape = str(COLOUR_NAMES[_pick(rng, COLOUR_NAMES)]), str(SHAPES[_pick(rng, SHAPES)])
            answer, hires = "No", False
        matching = [
            i for i in f.ids_in(frames) if f.some(i).shape == shape and colour in f.colours(i, frames)
        ]
        if answer == "No" and matching:
            continue
        if answer == "Yes" and not all(
            f.solid(i, frames if not whole else _solid_clip(f, i)) for i in matching
        ):
            continue
        a_obj = L.a_obj(colour=colour, shape=L.noun(shape, rng))
        question = L.say("presence" if whole else "presence_now", rng, a_obj=a_obj)
        return QA("presence", question, answer, _span(frames), hires)
    return None


def _solid_clip(f: Facts, oid: int) -> range:
    """The first clip in which oid is clearly there (or the first clip, to fail the check)."""
    return next((c for c in f.clips if f.solid(oid, c)), f.clips[0])


def ask_now(f: Facts, rng: np.random.Generator) -> QA | None:
    if not f.clips or f.has_needle(f.clips[-1]):
        return None
    last = f.clips[-1]
    seen = [s for s in f.observed(rng) if s.frame == last.start]
    changes = (
        [t for t in f.happenings() if f.times[last.start - 1] < t <= f.times[last.start]]
        if last.start
        else []
    )
    movers, unclear = [], False
    for oid in f.ids_in(last):
        label = f.motion(oid, last) if f.solid(oid, last) else None
        if label is None:
            unclear = True
        elif label != "static":
            movers.append((oid, label))
    if unclear or len(changes) + len(movers) != 1:
        return None
    if seen:
        answer = L.capitalise(event_text(L.EVENT_JUST, seen[0])) + "."
        span = (last.start - EVENT_MARGIN, last.stop - 1)
    elif movers and not changes:
        oid, label = movers[0]
        ref = f.refer(oid, last, REF_ANY, rng)
        if ref is None:
            return None
        answer = L.capitalise(L.fill(L.MOTION_NOW[label], the_obj=ref)) + "."
        span = _span(last)
    else:
        return None
    return QA("now", L.say("now", rng), answer, span)


def ask_just(f: Facts, rng: np.random.Generator) -> QA | None:
    if len(f.clips) < 2:
        return None
    last = f.clips[-1]
    latest = [t for t in f.happenings() if t <= f.times[-1]]
    seen = [s for s in f.observed(rng) if s.frame == last.start]
    if len(seen) != 1 or not latest or latest[-1] != seen[0].event.t or latest.count(latest[-1]) != 1:
        return None
    answer = L.capitalise(event_text(L.EVENT_PAST, seen[0])) + "."
    return QA("just", L.say("just", rng), answer, (last.start - EVENT_MARGIN, last.stop - 1))


def _two_events(f: Facts, rng: np.random.Generator) -> tuple[_Seen, _Seen] | None:
    seen = f.observed(rng)
    if len(seen) < 2:
        return None
    i, j = (int(k) for k in rng.choice(len(seen), size=2, replace=False))
    return seen[i], seen[j]


def ask_first(f: Facts, rng: np.random.Generator) -> QA | None:
    pair = _two_events(f, rng)
    if pair is None:
        return None
    a, b = pair
    first = a if a.event.t < b.event.t else b
    question = L.say("first", rng, event=event_text(L.EVENT_PAST, a), event2=event_text(L.EVENT_PAST, b))
    answer = L.capitalise(event_text(L.EVENT_PAST, first)) + "."
    return QA("first", question, answer, _event_span(a, b))


def _event_span(*seen: _Seen) -> tuple[int, int]:
    return min(s.frame for s in seen) - EVENT_MARGIN, max(s.frame for s in seen) + EVENT_MARGIN - 1


def _neighbour(f: Facts, rng: np.random.Generator, step: int) -> tuple[_Seen, _Seen] | None:
    """An observed event and the observed event right after (step 1) or before (step -1) it, with
    nothing else happening in between."""
    seen = sorted(f.observed(rng), key=lambda s: s.event.t)
    times = f.happenings()
    pairs = []
    for a, b in itertools.pairwise(seen):
        between = [t for t in times if a.event.t < t < b.event.t]
        if not between and times.count(a.event.t) == 1 and times.count(b.event.t) == 1:
            pairs.append((a, b) if step > 0 else (b, a))
    return pairs[_pick(rng, pairs)] if pairs else None


def ask_after(f: Facts, rng: np.random.Generator) -> QA | None:
    pair = _neighbour(f, rng, 1)
    if pair is None:
        return None
    a, b = pair
    question = L.say("after", rng, event=event_text(L.EVENT_PAST, a))
    return QA("after", question, L.capitalise(event_text(L.EVENT_PAST, b)) + ".", _event_span(a, b))


def ask_before(f: Facts, rng: np.random.Generator) -> QA | None:
    pair = _neighbour(f, rng, -1)
    if pair is None:
        return None
    a, b = pair
    question = L.say("before", rng, event=event_text(L.EVENT_PAST, a))
    return QA("before", question, L.capitalise(event_text(L.EVENT_PAST, b)) + ".", _event_span(a, b))


def ask_before_after(f: Facts, rng: np.random.Generator) -> QA | None:
    pair = _two_events(f, rng)
    if pair is None:
        return None
    a, b = pair  # is a before or after b?
    question = L.say(
        "before_after",
        rng,
        event_base=event_text(L.EVENT_BASE, a),
        event=event_text(L.EVENT_PAST, b),
        event2=event_text(L.EVENT_PAST, a),
    )
    answer = "Before" if a.event.t < b.event.t else "After"
    return QA("before_after", question, answer, _event_span(a, b))


def ask_when(f: Facts, rng: np.random.Generator) -> QA | None:
    seen = f.observed(rng)
    if not seen:
        return None
    s = seen[_pick(rng, seen)]
    t = s.event.t - f.video.start
    question = L.say("when", rng, event_base=event_text(L.EVENT_BASE, s))
    return QA("when", question, "At " + L.seconds(round(t)), _event_span(s), value=t)


# --- needles -----------------------------------------------------------------------------------------
def shown_needles(f: Facts) -> dict[int, tuple[Needle, list[int]]]:
    """Needles visible in at least MIN_SEEN sampled frames: index -> (needle, frames)."""
    seen: dict[int, tuple[Needle, list[int]]] = {}
    for k, fr in enumerate(f.frames):
        for nt in fr.needles:
            seen.setdefault(nt.index, (nt.needle, []))[1].append(k)
    return {i: v for i, v in seen.items() if len(v[1]) >= MIN_SEEN}


def _options(
    rng: np.random.Generator, right: str, pool: Sequence[str], prefer: Sequence[str] = ()
) -> tuple[list[str], int]:
    """Four distinct options with `right` at a random letter; wrong ones from `prefer` first."""
    wrong = [p for p in dict.fromkeys(prefer) if p != right][:3]
    rest = [p for p in pool if p != right and p not in wrong]
    rng.shuffle(rest)
    wrong += rest[: 3 - len(wrong)]
    options = [*wrong, right]
    order = rng.permutation(4)
    options = [options[k] for k in order]
    return options, options.index(right)


def _glyph_pool(glyph: str) -> str:
    return DIGITS if glyph in DIGITS else LETTERS


def _glyph_question(glyph: str, rng: np.random.Generator) -> str:
    qs = L.PHRASES["needle_question"]
    choices = [qs[0], qs[1], qs[3]] if glyph in DIGITS else [qs[0], qs[2], qs[4]]
    return choices[_pick(rng, choices)]


def _mc(
    kind: str,
    fmt: str,
    rng: np.random.Generator,
    options: list[str],
    right: int,
    frames: list[int],
    value: float | None = None,
    **slots: str,
) -> QA:
    question = L.multiple_choice(fmt, options, **slots)
    return QA(
        kind,
        question,
        L.OPTION_LETTERS[right],
        (min(frames), max(frames)),
        options=tuple(options),
        value=value,
    )


def _single_needle(f: Facts, rng: np.random.Generator) -> tuple[Needle, list[int], str, str] | None:
    """A needle that a short description picks out: (needle, frames, description, what it names:
    "card", "shape" or "colour")."""
    shown = list(shown_needles(f).values())
    cards = [(n, fr) for n, fr in shown if n.kind == "card"]
    objects = [(n, fr) for n, fr in shown if n.kind == "object"]
    candidates: list[tuple[Needle, list[int], str, str]] = []
    if len(cards) == 1 and cards[0][0].glyph is not None:
        n, fr = cards[0]
        assert n.border is not None
        desc = (
            "a card"
            if rng.random() < 0.5
            else L.fill(L.PHRASES["needle_desc"][0], a=L.article(n.border), colour=n.border)
        )
        candidates.append((n, fr, desc, "card"))
    for n, fr in objects:
        assert n.shape is not None and n.colour is not None
        if sum(m.shape == n.shape for m, _ in objects) == 1:
            candidates.append((n, fr, L.fill(L.PHRASES["needle_desc"][2], shape=n.shape), "shape"))
        if not cards and sum(m.colour == n.colour for m, _ in objects) == 1:
            candidates.append((n, fr, L.fill(L.PHRASES["needle_desc"][3], colour=n.colour), "colour"))
    return candidates[_pick(rng, candidates)] if candidates else None


def ask_needle(f: Facts, rng: np.random.Generator, fmt: str | None = None) -> QA | None:
    """Single-hop NIAH, multiple choice. `fmt`: "niah" (the paper's) or "llava"; None picks one."""
    found = _single_needle(f, rng)
    if found is None:
        return None
    n, frames, desc, by = found
    fmt = fmt or ("niah" if rng.random() < 0.8 else "llava")
    qs = L.PHRASES["needle_question"]
    if by == "card":
        assert n.glyph is not None
        options, right = _options(rng, n.glyph, _glyph_pool(n.glyph))
        question = _glyph_question(n.glyph, rng)
    elif by == "shape":  # named by its shape: ask its colour
        assert n.colour is not None and n.shape is not None
        options, right = _options(rng, n.colour, COLOUR_NAMES)
        question = L.fill(qs[5 + _pick(rng, [0, 1])], shape=n.shape)
    else:  # named by its colour: ask its shape
        assert n.shape is not None
        options, right = _options(rng, n.shape, ALL_SHAPES)
        question = qs[7 + _pick(rng, [0, 1])]
    return _mc("needle", fmt, rng, options, right, frames, needle_desc=desc, needle_question=question)


def ask_needle_open(f: Facts, rng: np.random.Generator) -> QA | None:
    found = _single_needle(f, rng)
    if found is None:
        return None
    n, frames, _, by = found
    qs = L.QUESTIONS["needle_open"]
    if by == "card":
        assert n.glyph is not None
        question = qs[0] if rng.random() < 0.5 else qs[1 if n.glyph in DIGITS else 2]
        answer = n.glyph
    else:
        assert n.shape is not None and n.colour is not None
        if by != "shape":
            return None
        question, answer = L.fill(qs[3 + _pick(rng, [0, 1])], shape=n.shape), L.capitalise(n.colour)
    return QA("needle_open", question, answer, (min(frames), max(frames)))


def chains(f: Facts) -> list[list[tuple[Needle, list[int]]]]:
    """Multi-hop chains among the shown cards: a pointer card nobody points to, then the card whose
    border is its pointer colour, and so on, ending on a glyph card (at least two cards)."""
    cards = [(n, fr) for n, fr in shown_needles(f).values() if n.kind == "card"]
    by_border: dict[str, list[tuple[Needle, list[int]]]] = {}
    for n, fr in cards:
        assert n.border is not None
        by_border.setdefault(n.border, []).append((n, fr))
    if any(len(v) > 1 for v in by_border.values()):
        return []  # two cards with one border: a pointer would be ambiguous
    pointed = {n.pointer for n, _ in cards if n.pointer is not None}
    out = []
    for n, fr in cards:
        if n.pointer is None or n.border in pointed:
            continue
        chain = [(n, fr)]
        while chain[-1][0].pointer is not None and len(chain) <= len(cards):
            nxt = by_border.get(chain[-1][0].pointer or "")
            if not nxt:
                break
            chain.append(nxt[0])
        if chain[-1][0].glyph is not None:
            out.append(chain)
    return out


def ask_multihop(f: Facts, rng: np.random.Generator, start: str | None = None) -> QA | None:
    """Multi-hop NIAH in the paper's format; `start` picks the chain by its first card's border."""
    found = [c for c in chains(f) if start is None or c[0][0].border == start]
    if not found:
        return None
    chain = found[_pick(rng, found)]
    first, end = chain[0][0], chain[-1][0]
    assert first.border is not None and end.glyph is not None
    decoys = [n.glyph for n, _ in shown_needles(f).values() if n.glyph is not None and n is not end]
    options, right = _options(rng, end.glyph, _glyph_pool(end.glyph), prefer=decoys)
    q = _glyph_question(end.glyph, rng)
    frames = [k for _, fr in chain for k in fr]
    desc = L.fill(L.PHRASES["needle_desc"][0], a=L.article(first.border), colour=first.border)
    return _mc(
        "multihop",
        "niah_multi",
        rng,
        options,
        right,
        frames,
        value=len(chain),
        needle_desc=desc,
        needle_question_lc=q[:1].lower() + q[1:],
    )


# --- captions ------------------------------------------------------------------------------------------
def clip_caption(f: Facts, clip: range, background: str) -> list[str]:
    """Sentences describing one clip: its objects and what they do, then any needle in it."""
    first = f.frames[clip[0]]
    items: list[str] = []
    for o in sorted(first.objects, key=lambda o: o.x):
        if not f.solid(o.id, clip) or len(f.colours(o.id, clip)) != 1:
            continue
        label = f.motion(o.id, clip) or "around"
        size = None if o.size == "medium" else o.size
        items.append(L.a_obj(colour=o.colour, shape=o.shape, size=size) + " " + L.ACTION[label])
    if len(items) > L.MAX_CAPTION_ITEMS:
        items = items[: L.MAX_CAPTION_ITEMS]
    if items:
        template = L.caption_objects(len(items)).replace("{item}", "{}")
        sentence = template.format(*items, a=L.article(background), background=background)
    else:
        sentence = L.fill("An empty {background} background.", background=background)
    sentences = [L.capitalise(sentence)]
    needles = {nt.index: nt.needle for k in clip for nt in f.frames[k].needles}
    sentences += [needle_sentence(n) for n in needles.values()]
    return sentences


def needle_sentence(n: Needle) -> str:
    if n.kind == "object":
        assert n.colour is not None and n.shape is not None
        return L.fill(L.NEEDLE_SENTENCE["object"], colour=n.colour, shape=n.shape)
    assert n.border is not None
    if n.pointer is not None:
        return L.fill(
            L.NEEDLE_SENTENCE["pointer"],
            a=L.article(n.border),
            colour=n.border,
            a2=L.article(n.pointer),
            colour2=n.pointer,
        )
    assert n.glyph is not None
    key = "digit" if n.glyph in DIGITS else "letter"
    return L.fill(L.NEEDLE_SENTENCE[key], a=L.article(n.border), colour=n.border, glyph=n.glyph)


def caption(video: VideoTruth, rng: np.random.Generator | None = None) -> str:
    """A caption of the whole video: its first clip, then what happens at each later clip boundary."""
    f = Facts(video)
    rng = rng or np.random.default_rng(0)
    if not f.clips:
        return ""
    sentences = clip_caption(f, f.clips[0], BACKGROUND_WORDS[video.frames[0].background])
    seen = {s.frame: s for s in f.observed(rng)}
    for prev, clip in zip(f.clips, f.clips[1:], strict=False):
        a, b = f.frames[prev[-1]], f.frames[clip[0]]
        if a.scene != b.scene:
            sentences.append(L.CAPTION_EVENT["cut"])
            sentences += clip_caption(f, clip, BACKGROUND_WORDS[b.background])
            continue
        s = seen.get(clip.start)
        if s is not None:
            sentences.append(caption_event(f, s))
        new_needles = {nt.index for nt in b.needles} - {nt.index for nt in a.needles}
        sentences += [needle_sentence(nt.needle) for nt in b.needles if nt.index in new_needles]
    return " ".join(sentences)


def caption_event(f: Facts, s: _Seen) -> str:
    e = s.event
    if e.kind == "appear":
        return L.fill(L.CAPTION_EVENT["appear"], a_obj=L.a_obj(colour=e.colour, shape=e.shape))
    if e.kind == "disappear":
        return L.fill(L.CAPTION_EVENT["disappear"], the_obj=s.ref)
    assert e.new_colour is not None
    return L.fill(L.CAPTION_EVENT["recolour"], the_obj=s.ref, colour=e.new_colour)


GENERATORS: dict[str, Callable[[Facts, np.random.Generator], QA | None]] = {
    "colour": ask_colour,
    "shape": ask_shape,
    "count": ask_count,
    "motion": ask_motion,
    "presence": ask_presence,
    "now": ask_now,
    "just": ask_just,
    "first": ask_first,
    "after": ask_after,
    "before": ask_before,
    "before_after": ask_before_after,
    "when": ask_when,
    "needle": ask_needle,
    "multihop": ask_multihop,
    "needle_open": ask_needle_open,
}


def ask(video: VideoTruth, rng: np.random.Generator, kinds: Iterable[str] = KINDS) -> list[QA]:
    """At most one question of each kind that this video can answer unambiguously (call again with
    another rng for more)."""
    f = Facts(video)
    out = []
    for kind in kinds:
        if kind == "caption":
            text = caption(video, rng)
            if text:
                q = L.say("caption", rng)
                out.append(QA("caption", q, text, (0, f.clips[-1].stop - 1)))
            continue
        if kind not in GENERATORS:
            raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
        qa = GENERATORS[kind](f, rng)
        if qa is not None:
            out.append(qa)
    return out
