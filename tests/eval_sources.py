"""Answer sources for the evaluation tests: one that answers every question with its truth, one that
gives a near miss (another letter, colour, number, the other event's colour, ...). Both are real
implementations of the harness's `AnswerSource` protocol, not mocks of its internals."""

from __future__ import annotations

from collections.abc import Callable

from flashlive.model.config import DropoutConfig
from flashlive.model.evaluation.items import Item, Question
from flashlive.model.evaluation.scoring import MULTIPLE_CHOICE, colours, first_number
from flashlive.model.evaluation.sources import Answers
from flashlive.model.world import GLYPHS
from flashlive.model.world.language import MOTION_ANSWER, OPTION_LETTERS
from flashlive.model.world.palette import ALL_SHAPES, COLOUR_NAMES


def _next(values: tuple[str, ...] | str, value: str) -> str:
    return values[(values.index(value) + 1) % len(values)]


def _other_colour(text: str) -> str:
    """`text` with its first colour word replaced by the next colour."""
    found = sorted(colours(text), key=lambda c: text.lower().index(c))
    if not found:
        raise AssertionError(f"no colour to change in {text!r}")
    c = found[0]
    i = text.lower().index(c)
    replacement = _next(COLOUR_NAMES, c)
    return text[:i] + (replacement.capitalize() if text[i].isupper() else replacement) + text[i + len(c) :]


def near_miss(q: Question) -> str:
    """A wrong answer that looks like the right one."""
    t = q.truth
    if t.kind in MULTIPLE_CHOICE:
        return _next(OPTION_LETTERS, t.answer)
    if t.kind == "presence":
        return "No" if t.answer == "Yes" else "Yes"
    if t.kind == "before_after":
        return "After" if t.answer == "Before" else "Before"
    if t.kind == "shape":
        return _next(ALL_SHAPES, t.answer.lower()).capitalize()
    if t.kind == "count":
        return str(int(first_number(t.answer) or 0) + 1)
    if t.kind == "when":
        assert t.value is not None
        return f"At {round(t.value + t.tolerance + 2)} seconds"
    if t.kind == "motion":
        answers = tuple(a.capitalize() for a in MOTION_ANSWER.values())
        return _next(answers, t.answer)
    if t.kind == "needle_open" and t.answer in GLYPHS:
        return _next(GLYPHS, t.answer)
    return _other_colour(t.answer)  # colour, events, a needle object's colour


class FixedSource:
    """Answers each question with `answer_of(question)`; a 28-layer model with no context limit unless
    told otherwise."""

    def __init__(
        self, answer_of: Callable[[Question], str], *, name: str = "fixed", max_frames: int | None = None
    ) -> None:
        self.answer_of = answer_of
        self.name = name
        self.num_layers = 28
        self.max_frames = max_frames
        self.calls: list[tuple[str, DropoutConfig | None]] = []

    def answer(self, item: Item, dropout: DropoutConfig | None) -> Answers:
        self.calls.append((item.id, dropout))
        return Answers([self.answer_of(q) for q in item.questions])


def truth_source(max_frames: int | None = None) -> FixedSource:
    return FixedSource(lambda q: q.truth.answer, name="truth", max_frames=max_frames)


def wrong_source(max_frames: int | None = None) -> FixedSource:
    return FixedSource(near_miss, name="near-miss", max_frames=max_frames)
