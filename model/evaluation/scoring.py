"""Scoring an answer against the truth: one rule per question kind, all here.

The world's answers are short and canonical ("Purple", "3", "Moving left", "The red circle appeared."),
but a model may phrase them its own way ("The triangle is purple.", "three", "It moves to the left").
So each rule reads only the words of a closed vocabulary — colours, shapes, sizes, numbers, yes/no,
motions, event verbs, glyphs — and compares what it finds with what the truth says:

- multiple choice (NIAH needles, multi-hop chains, NIAH-Video): the option letter the answer starts
  with, as the paper scores it (its prediction with parentheses removed must equal the letter);
- yes/no and before/after: the first such word;
- colour, shape, motion: the set of colours (shapes, motions) named must be exactly the truth's;
- count: the first number (digits or a word up to twenty) must equal it;
- when: the first number must lie within `tolerance` seconds of the event (one sampling interval: the
  event happened somewhere in the interval before the first frame that shows it);
- events (now, just, first, after, before): the answer's vocabulary words, in order, must be the
  truth's (colours, shapes, sizes, appear/disappear/turn, motions), so "The red square just
  appeared." and "the red square appeared" agree and "The blue square appeared." does not;
- needle_open: the glyph (or, for a needle object, the colour) named must be the truth's.

Captions are not scored (they describe one canonical order; docs/world.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from flashlive.model.evaluation.errors import EvalError
from flashlive.model.world.language import OPTION_LETTERS, SYNONYMS
from flashlive.model.world.palette import ALL_SHAPES, COLOUR_NAMES, GLYPHS, SIZE_NAMES


@dataclass(frozen=True)
class Truth:
    """What an answer is scored against: the kind's rule, the canonical answer and its number."""

    kind: str
    answer: str
    value: float | None = None  # the count, or the event's seconds for "when"
    tolerance: float = 0.0  # seconds either way, for "when"


# kinds the world asks (model/world/questions.py) and the NIAH-Video kinds (niah_video.py)
MULTIPLE_CHOICE = frozenset({"needle", "multihop", "niah_video", "niah_video_caption", "niah_video_qa"})
EVENT_KINDS = frozenset({"now", "just", "first", "after", "before"})
UNSCORED = frozenset({"caption"})

# Groups the targets are stated for.
GROUPS: dict[str, tuple[str, ...]] = {
    "attributes": ("colour", "shape", "count", "motion", "presence"),
    "temporal": ("now", "just", "first", "after", "before", "before_after", "when"),
    "needles": ("needle", "multihop", "needle_open"),
}

NUMBER_WORDS = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"),
    *("nineteen", "twenty"),
)
_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_GLYPH_TOKEN = re.compile(r"[A-Za-z0-9]+")
_LETTER = re.compile(r"^\W*([A-Za-z])(?![A-Za-z])")

_SHAPE_WORDS = {s: s for s in ALL_SHAPES} | {syn: s for s, syns in SYNONYMS.items() for syn in syns}
_SHAPE_WORDS |= {w + ("es" if w.endswith(("s", "x")) else "s"): s for w, s in list(_SHAPE_WORDS.items())}
_MOTION_WORDS = {
    "left": "left",
    "right": "right",
    "up": "up",
    "upward": "up",
    "upwards": "up",
    "down": "down",
    "downward": "down",
    "downwards": "down",
    "bouncing": "bouncing",
    "bounces": "bouncing",
    "bounce": "bouncing",
    "still": "static",
    "static": "static",
    "stationary": "static",
}
_EVENT_WORDS = {
    "appear": "appear",
    "appears": "appear",
    "appeared": "appear",
    "disappear": "disappear",
    "disappears": "disappear",
    "disappeared": "disappear",
    "vanished": "disappear",
    "turn": "recolour",
    "turns": "recolour",
    "turned": "recolour",
    "changed": "recolour",
    "became": "recolour",
}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def option_letter(text: str) -> str | None:
    """The option letter an answer starts with ("C", "(C) J", "c." -> "C"), if it is one of A-D."""
    m = _LETTER.match(text)
    if m is None or m.group(1).upper() not in OPTION_LETTERS:
        return None
    return m.group(1).upper()


def first_number(text: str) -> float | None:
    for w in words(text):
        if w[0].isdigit():
            return float(w)
        if w in NUMBER_WORDS:
            return float(NUMBER_WORDS.index(w))
    return None


def colours(text: str) -> set[str]:
    return {w for w in words(text) if w in COLOUR_NAMES}


def shapes(text: str) -> set[str]:
    return {_SHAPE_WORDS[w] for w in words(text) if w in _SHAPE_WORDS}


def motions(text: str) -> set[str]:
    return {_MOTION_WORDS[w] for w in words(text) if w in _MOTION_WORDS}


def glyphs(text: str) -> set[str]:
    """Single-character tokens that are card glyphs (digits, and letters cards use: no A-D, I, O, Q)."""
    return {t.upper() for t in _GLYPH_TOKEN.findall(text) if len(t) == 1 and t.upper() in GLYPHS}


def event_signature(text: str) -> list[str]:
    """The vocabulary words of an event sentence, in order: colours, shapes, sizes, event verbs, motions."""
    out = []
    for w in words(text):
        if w in COLOUR_NAMES or w in SIZE_NAMES:
            out.append(w)
        elif w in _SHAPE_WORDS:
            out.append(_SHAPE_WORDS[w])
        elif w in _EVENT_WORDS:
            out.append(_EVENT_WORDS[w])
        elif w in _MOTION_WORDS:
            out.append(_MOTION_WORDS[w])
    return out


def first_of(text: str, choices: tuple[str, ...]) -> str | None:
    return next((w for w in words(text) if w in choices), None)


# --- the rules ------------------------------------------------------------------------------------------
def _multiple_choice(t: Truth, answer: str) -> bool:
    return option_letter(answer) == t.answer.strip().upper()


def _yes_no(t: Truth, answer: str) -> bool:
    return first_of(answer, ("yes", "no")) == t.answer.strip().lower()


def _before_after(t: Truth, answer: str) -> bool:
    return first_of(answer, ("before", "after")) == t.answer.strip().lower()


def _same_set(extract: Callable[[str], set[str]]) -> Callable[[Truth, str], bool]:
    def rule(t: Truth, answer: str) -> bool:
        truth = extract(t.answer)
        if not truth:
            raise EvalError(f"the truth {t.answer!r} of a {t.kind!r} question names nothing to compare")
        return extract(answer) == truth

    return rule


def _count(t: Truth, answer: str) -> bool:
    truth = t.value if t.value is not None else first_number(t.answer)
    got = first_number(answer)
    return got is not None and truth is not None and got == truth


def _when(t: Truth, answer: str) -> bool:
    truth = t.value if t.value is not None else first_number(t.answer)
    got = first_number(answer)
    return got is not None and truth is not None and abs(got - truth) <= t.tolerance + 1e-9


def _event(t: Truth, answer: str) -> bool:
    truth = event_signature(t.answer)
    if not truth:
        raise EvalError(f"the truth {t.answer!r} of a {t.kind!r} question names no event")
    return event_signature(answer) == truth


def _needle_open(t: Truth, answer: str) -> bool:
    if t.answer.strip().lower() in COLOUR_NAMES:
        return colours(answer) == {t.answer.strip().lower()}
    return glyphs(answer) == {t.answer.strip().upper()}


RULES: dict[str, Callable[[Truth, str], bool]] = {
    **{k: _multiple_choice for k in MULTIPLE_CHOICE},
    **{k: _event for k in EVENT_KINDS},
    "presence": _yes_no,
    "before_after": _before_after,
    "colour": _same_set(colours),
    "shape": _same_set(shapes),
    "motion": _same_set(motions),
    "count": _count,
    "when": _when,
    "needle_open": _needle_open,
}


def is_scored(kind: str) -> bool:
    return kind in RULES


def score(truth: Truth, answer: str) -> bool:
    """Whether `answer` is right for `truth` (EvalError for kinds without a rule, e.g. captions)."""
    rule = RULES.get(truth.kind)
    if rule is None:
        why = "captions are not scored" if truth.kind in UNSCORED else "no scoring rule for it"
        raise EvalError(f"cannot score a {truth.kind!r} question: {why}")
    return rule(truth, answer)
