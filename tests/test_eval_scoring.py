"""Scoring rules: every generated truth scores right, a near miss scores wrong, and a model's own
phrasing of the right answer is accepted (each rule reads its closed vocabulary, not the wording)."""

from __future__ import annotations

from collections import Counter

import pytest
from eval_sources import near_miss

from flashlive.model.evaluation.errors import EvalError
from flashlive.model.evaluation.items import Question, world_items
from flashlive.model.evaluation.scoring import GROUPS, RULES, Truth, score
from flashlive.model.world import KINDS


@pytest.fixture(scope="module")
def questions() -> list[Question]:
    return [q for item in world_items(16, 32) for q in item.questions]


def test_the_questions_cover_every_kind_but_captions(questions: list[Question]) -> None:
    kinds = Counter(q.kind for q in questions)
    assert set(kinds) == set(KINDS) - {"caption"}
    assert {k for members in GROUPS.values() for k in members} == set(kinds)


def test_the_truth_is_right_and_a_near_miss_is_wrong(questions: list[Question]) -> None:
    for q in questions:
        assert score(q.truth, q.truth.answer), q
        wrong = near_miss(q)
        assert wrong != q.truth.answer
        assert not score(q.truth, wrong), (q, wrong)
        assert not score(q.truth, ""), q


@pytest.mark.parametrize(
    ("kind", "truth", "value", "answer", "right"),
    [
        ("needle", "C", None, "C", True),
        ("needle", "C", None, "C) J", True),
        ("needle", "C", None, "(c).", True),
        ("needle", "C", None, "D", False),
        ("needle", "C", None, "Cat", False),  # a word starting with the letter is not the letter
        ("needle", "C", None, "The answer is C", False),  # the paper reads the first token only
        ("niah_video_qa", "B", None, "B. suitcases", True),
        ("colour", "Purple", None, "The triangle is purple.", True),
        ("colour", "Purple", None, "purple or red", False),
        ("shape", "Circle", None, "It is a ball.", True),
        ("shape", "Cross", None, "crosses", True),
        ("count", "3", 3.0, "three", True),
        ("count", "3", 3.0, "There are 3 of them.", True),
        ("count", "0", 0.0, "zero", True),
        ("count", "3", 3.0, "2", False),
        ("motion", "Moving left", None, "It moves to the left.", True),
        ("motion", "Standing still", None, "It is static.", True),
        ("motion", "Bouncing around", None, "bounces", True),
        ("motion", "Moving left", None, "left, then up", False),
        ("presence", "Yes", None, "Yes, there is one.", True),
        ("presence", "No", None, "Yes", False),
        ("before_after", "Before", None, "before", True),
        ("just", "The red square appeared.", None, "The red square just appeared.", True),
        ("just", "The red square appeared.", None, "The red square disappeared.", False),
        ("just", "The red square appeared.", None, "The large red square appeared.", False),
        ("after", "The red circle turned blue.", None, "the red circle turned blue", True),
        ("after", "The red circle turned blue.", None, "The blue circle turned red.", False),
        ("now", "The purple triangle is moving up.", None, "The purple triangle moves upwards.", True),
        ("needle_open", "J", None, "The card shows J.", True),
        ("needle_open", "J", None, "It is a J", True),
        ("needle_open", "7", None, "7 or 1", False),
        ("needle_open", "Red", None, "red", True),
    ],
)
def test_a_models_own_phrasing(kind: str, truth: str, value: float | None, answer: str, right: bool) -> None:
    assert score(Truth(kind, truth, value), answer) is right


def test_when_allows_one_sampling_interval() -> None:
    t = Truth("when", "At 8 seconds", 8.0, tolerance=1.0)
    assert score(t, "At 8 seconds") and score(t, "9") and score(t, "At 7 seconds")
    assert not score(t, "At 10 seconds") and not score(t, "soon")


def test_kinds_without_a_rule_fail_clearly() -> None:
    with pytest.raises(EvalError, match="captions are not scored"):
        score(Truth("caption", "A red circle moves left."), "A red circle.")
    with pytest.raises(EvalError, match="no scoring rule"):
        score(Truth("haiku", "x"), "x")
    with pytest.raises(EvalError, match="names nothing"):
        score(Truth("colour", "Teal"), "teal")
    assert "caption" not in RULES
