"""Questions from the world's ground truth: every kind is produced, and every answer checks out.

The checks here do not reuse the generator's logic: they parse the question text with regular
expressions over the world's closed word lists and look the answer up in the sampled frames' truths.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest

from flashlive.model.prompt import build_prompt, tokenize_with_image
from flashlive.model.tokenizer import load_tokenizer
from flashlive.model.world import (
    KINDS,
    QA,
    Event,
    ObjectTruth,
    Style,
    VideoTruth,
    World,
    WorldConfig,
    ask,
    make_niah,
    vocabulary_texts,
    vocabulary_token_ids,
)
from flashlive.model.world.language import NOUNS
from flashlive.model.world.palette import COLOUR_NAMES, SIZE_NAMES

COLOUR = "|".join(COLOUR_NAMES)
SIZE = "|".join(SIZE_NAMES)
NOUN = "|".join(NOUNS)
REF = rf"(?:[Tt]he|a|an) (?:({SIZE}) )?(?:({COLOUR}) )?({NOUN}|object)"
VERB = rf"appeared|disappeared|turned ({COLOUR})|appear|disappear|turn ({COLOUR})"
EVENT = rf"[Tt]he (?:({SIZE}) )?({COLOUR}) ({NOUN}) (?:just )?({VERB})"


def _shape(noun: str) -> str | None:
    return None if noun == "object" else {"ball": "circle"}.get(noun, noun)


def _matches(o: ObjectTruth, size: str | None, colour: str | None, noun: str) -> bool:
    shape = _shape(noun)
    return (
        (size is None or o.size == size)
        and (colour is None or o.colour == colour)
        and (shape in (None, o.shape))
    )


def _frames(video: VideoTruth, qa: QA) -> tuple[int, int]:
    lo, hi = qa.evidence
    assert 0 <= lo <= hi < len(video.frames)
    return lo, hi + 1


def _one_object(video: VideoTruth, qa: QA, text: str) -> int:
    m = re.search(REF, text)
    assert m, text
    size, colour, noun = m.groups()
    lo, hi = _frames(video, qa)
    ids = {o.id for f in video.frames[lo:hi] for o in f.objects if _matches(o, size, colour, noun)}
    assert len(ids) == 1, (qa, ids)
    return ids.pop()


def _track(video: VideoTruth, qa: QA, oid: int) -> list[ObjectTruth]:
    lo, hi = _frames(video, qa)
    objs = [f.object(oid) for f in video.frames[lo:hi]]
    assert all(o is not None for o in objs), qa
    return [o for o in objs if o is not None]


def _event(video: VideoTruth, text: str) -> Event:
    m = re.search(EVENT, text)
    assert m, text
    size, colour, noun, verb, new1, new2 = m.groups()
    kind = (
        "appear" if verb.startswith("appear") else "disappear" if verb.startswith("disappear") else "recolour"
    )
    found = [
        e
        for e in video.events
        if e.kind == kind
        and e.colour == colour
        and e.shape == _shape(noun)
        and (size is None or e.size == size)
        and (kind != "recolour" or e.new_colour == (new1 or new2))
    ]
    assert len(found) == 1, (text, found)
    return found[0]


def _motion(objs: list[ObjectTruth]) -> str:
    dx = np.diff([o.x for o in objs])
    dy = np.diff([o.y for o in objs])
    if np.all(np.hypot(dx, dy) < 1e-6):
        return "Standing still"
    for name, along, across in (("left", -dx, dy), ("right", dx, dy), ("up", -dy, dx), ("down", dy, dx)):
        if np.all(along > 0.02) and np.all(np.abs(across) < 0.02):
            return "Moving " + name
    assert np.any(np.diff(np.sign(dx)) != 0) or np.any(np.diff(np.sign(dy)) != 0)
    return "Bouncing around"


def check(qa: QA, video: VideoTruth) -> None:
    """Fail unless `qa`'s answer follows from the truths of its evidence frames."""
    lo, hi = _frames(video, qa)
    frames = video.frames[lo:hi]
    q, a = qa.question, qa.answer
    if qa.kind == "colour":
        oid = _one_object(video, qa, q)
        assert {o.colour for o in _track(video, qa, oid)} == {a.lower()}
    elif qa.kind == "shape":
        oid = _one_object(video, qa, q)
        assert _track(video, qa, oid)[0].shape == a.lower()
    elif qa.kind == "count":
        things = rf"(?:({COLOUR}) )?(\w+?)s?"
        m = re.search(rf"How many {things} (?:are|can|were)", q) or re.search(rf"Count the {things}\.", q)
        assert m, q
        colour, noun = m.groups()
        noun = {"crosse": "cross", "objects": "object"}.get(noun, noun)
        counts = {len({o.id for o in f.objects if _matches(o, None, colour, noun)}) for f in frames}
        assert counts == {int(a)} and qa.value == int(a), (qa, counts)
    elif qa.kind == "motion":
        oid = _one_object(video, qa, q)
        assert _motion(_track(video, qa, oid)) == a
    elif qa.kind == "presence":
        m = re.search(REF, q)
        assert m
        size, colour, noun = m.groups()
        there = {any(_matches(o, size, colour, noun) for o in f.objects) for f in frames}
        if "video" in q or "at any point" in q:  # at some time in the video
            assert (True in there) == (a == "Yes"), qa
        else:  # now: throughout the last clip
            assert there == {a == "Yes"}, qa
    elif qa.kind == "now":
        if " is " in a:  # the one thing moving in the last clip; everything else stands still
            oid = _one_object(video, qa, a)
            expected = "Bouncing around" if "bouncing" in a else "Moving " + a.split()[-1].rstrip(".")
            assert _motion(_track(video, qa, oid)) == expected
            for o in frames[0].objects:
                if o.id != oid:
                    assert _motion(_track(video, qa, o.id)) == "Standing still", qa
        else:  # the one change between the last two clips
            e = _event(video, a)
            assert frames[0].t < e.t < frames[-1].t
            assert [x for x in video.events if frames[0].t < x.t < frames[-1].t] == [e]
    elif qa.kind in ("just", "after", "before"):
        e = _event(video, a)
        if qa.kind == "just":
            assert video.frames[-5].t < e.t < video.frames[-4].t  # at the start of the last clip
            assert not [x for x in video.events if x.t > e.t]
        else:
            ref = _event(video, q)
            between = [x for x in video.events if min(e.t, ref.t) < x.t < max(e.t, ref.t)]
            assert not between and (e.t > ref.t) == (qa.kind == "after")
    elif qa.kind == "first":
        events = [_event(video, part) for part in re.split(r" or ", q)]
        assert _event(video, a) == min(events, key=lambda e: e.t)
    elif qa.kind == "before_after":
        if q.startswith("Did"):
            e1, e2 = (_event(video, p) for p in q.split(" before or after "))
        else:
            e2, e1 = (_event(video, p) for p in q.split(" that "))
        assert a == ("Before" if e1.t < e2.t else "After")
    elif qa.kind == "when":
        e = _event(video, q)
        assert qa.value == pytest.approx(e.t - video.start)
        n = round(e.t - video.start)
        assert a == f"At {n} second" + ("" if n == 1 else "s")
        after = next(f for f in video.frames if f.t > e.t)
        assert 0 < after.t - e.t <= 1 / video.fps
    elif qa.kind in ("needle", "needle_open"):
        shown = {nt.index: nt.needle for f in frames for nt in f.needles}
        assert len(shown) == 1, qa
        (needle,) = shown.values()
        value = qa.options["ABCD".index(a)] if qa.kind == "needle" else a
        assert value.lower() in {str(needle.glyph).lower(), str(needle.colour), str(needle.shape)}, qa
        if qa.kind == "needle":
            assert q.startswith("Find the frame of") or "Answer with the option's letter" in q
            assert len(set(qa.options)) == 4
    elif qa.kind == "multihop":
        cards = {nt.needle.border: nt.needle for f in video.frames for nt in f.needles}
        m = re.search(rf"a card with an? ({COLOUR}) border", q)
        assert m
        card, hops = cards[m.group(1)], 1
        while card.pointer is not None:
            card, hops = cards[card.pointer], hops + 1
        assert qa.options["ABCD".index(a)] == card.glyph and qa.value == hops >= 2
        decoys = {n.glyph for n in cards.values() if n.glyph is not None} - {card.glyph}
        assert decoys <= set(qa.options)
    elif qa.kind == "caption":
        first = video.frames[0]
        for o in first.objects:
            if all(f.object(o.id) is not None and f.object(o.id).occlusion == 0 for f in video.frames[:4]):  # type: ignore[union-attr]
                assert f"{o.colour} {o.shape}" in a, (a, o)
    else:
        raise AssertionError(f"unchecked kind {qa.kind}")


def corpus() -> Iterator[tuple[VideoTruth, QA]]:
    """Short videos (1-8 clips) of busy worlds, long streams, and needle haystacks."""
    busy = WorldConfig(event_rate=0.8, scene_clips=(6, 12))
    for seed in range(60):
        world = World(seed, config=busy if seed % 2 else WorldConfig())
        video = world.video(start=4.0 * (seed % 3), num_frames=4 * (1 + seed % 8))
        for qa in ask(video, np.random.default_rng(seed)):
            yield video, qa
    for seed, (hops, kind) in enumerate([(1, "card"), (1, "object"), (2, "card"), (3, "card")] * 3):
        item = make_niah(seed, frames=120, depth=seed / 11, hops=hops, kind=kind)
        video = item.video()
        yield video, item.question
        for qa in ask(video, np.random.default_rng(seed), ["needle", "needle_open", "multihop", "count"]):
            yield video, qa


@pytest.fixture(scope="module")
def items() -> list[tuple[VideoTruth, QA]]:
    return list(corpus())


def test_every_kind_is_generated(items: list[tuple[VideoTruth, QA]]) -> None:
    kinds = {qa.kind for _, qa in items}
    assert kinds == set(KINDS)
    assert any(qa.needs_hires for _, qa in items)
    phrasings = {qa.question.split("{")[0][:12] for _, qa in items if qa.kind == "colour"}
    assert len(phrasings) >= 4


def test_every_answer_follows_from_the_sampled_frames(items: list[tuple[VideoTruth, QA]]) -> None:
    for video, qa in items:
        check(qa, video)


def test_the_checker_catches_wrong_answers(items: list[tuple[VideoTruth, QA]]) -> None:
    wrong = {
        "colour": "Purple",
        "shape": "Heart",
        "count": "9",
        "presence": None,
        "before_after": None,
        "needle": None,
        "multihop": None,
    }
    caught = 0
    for video, qa in items:
        if qa.kind not in wrong:
            continue
        bad = wrong[qa.kind]
        if bad is None:
            flip = {"Yes": "No", "No": "Yes", "Before": "After", "After": "Before"}
            bad = flip.get(qa.answer) or "ABCD"[("ABCD".index(qa.answer) + 1) % 4]
        if bad == qa.answer:
            continue
        with pytest.raises(AssertionError):
            check(QA(qa.kind, qa.question, bad, qa.evidence, qa.needs_hires, qa.options, qa.value), video)
        caught += 1
    assert caught > 50


def test_questions_are_deterministic() -> None:
    world = World(12, config=WorldConfig(event_rate=0.8))
    video = world.video(0, 32)
    a = ask(video, np.random.default_rng(3))
    b = ask(world.video(0, 32), np.random.default_rng(3))
    assert a == b


def test_no_question_about_a_needle_clip_state() -> None:
    """Cards hide the scene: state questions about a needle's clip are not asked."""
    item = make_niah(2, frames=8, depth=1.0, hops=1)
    video = item.video()
    for seed in range(30):
        for qa in ask(video, np.random.default_rng(seed), ["presence", "now"]):
            lo, hi = qa.evidence
            assert not any(video.frames[k].needles for k in range(lo, hi + 1)), qa


@pytest.mark.slow  # builds the Qwen2 tokenizer (~5 s) unless another test already did
def test_the_vocabulary_covers_every_generated_text(items: list[tuple[VideoTruth, QA]]) -> None:
    tok = load_tokenizer()
    ids = vocabulary_token_ids(tok)
    assert 200 < len(ids) < 1000
    assert {151643, 151644, 151645} <= ids
    texts = vocabulary_texts()
    assert "Red" in texts and "At 1 second" in texts
    for video, qa in items:
        for text in (qa.question, " " + qa.question, qa.answer):
            got = set(tok.encode(text, add_special_tokens=False))
            assert got <= ids, (text, got - ids, tok.convert_ids_to_tokens(sorted(got - ids)))
        prefix, suffix = tokenize_with_image(
            tok, build_prompt(qa.question, video.duration, len(video.frames))
        )
        assert set(prefix) | set(suffix) <= ids
    outside = set(tok.encode("What colour is the zebra?", add_special_tokens=False)) - ids
    assert outside  # the set is restrictive, not everything


def test_random_styles_do_not_change_questions() -> None:
    """What is in a world (and so every question) does not depend on how it is drawn."""
    plain, fancy = World(8), World(8, style=Style.random(8))
    a, b = plain.video(0, 24), fancy.video(0, 24)
    assert [[(o.id, o.colour, o.shape, o.x, o.y) for o in f.objects] for f in a.frames] == [
        [(o.id, o.colour, o.shape, o.x, o.y) for o in f.objects] for f in b.frames
    ]
    assert ask(a, np.random.default_rng(0), ["colour", "count"]) == ask(
        b, np.random.default_rng(0), ["colour", "count"]
    )
