"""Every sentence the world can say, as one small grammar: the question generator fills it, and
`vocabulary_texts` enumerates it, so the two cannot drift apart.

A template is a str.format string whose fields are grammar symbols: leaves (closed word lists) or
phrases (lists of templates). Builders (`the_obj`, `event_past`, ...) pick the template for what they
are given; generators call `say(family, rng, ...)`, which picks one of a family's phrasings.

Answers are short and canonical (one right string per question): "Red", "3", "Moving left", "Yes",
"At 12 seconds", "B"; event answers are one sentence ("The red circle appeared.").
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

import numpy as np

from .palette import ALL_SHAPES, COLOUR_NAMES, GLYPHS, SIZE_NAMES

OPTION_LETTERS = ("A", "B", "C", "D")


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ss")) else "s")


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# Other nouns a question may use for a shape (answers always use the shape's own name).
SYNONYMS: dict[str, tuple[str, ...]] = {"circle": ("ball",)}
NOUNS: tuple[str, ...] = ALL_SHAPES + tuple(w for ws in SYNONYMS.values() for w in ws)


def noun(shape: str, rng: np.random.Generator, synonym_rate: float = 0.3) -> str:
    """The word for `shape` in a question: its name, or now and then a synonym ("ball")."""
    others = SYNONYMS.get(shape, ())
    if others and rng.random() < synonym_rate:
        return others[int(rng.integers(len(others)))]
    return shape


# --- leaves ---------------------------------------------------------------------------------------
LEAVES: dict[str, tuple[str, ...]] = {
    "colour": COLOUR_NAMES,
    "shape": NOUNS,
    "shapes": tuple(plural(s) for s in NOUNS),
    "size": SIZE_NAMES,
    "a": ("a", "an"),
    "a2": ("a", "an"),
    "colour2": COLOUR_NAMES,
    "direction": ("left", "right", "up", "down"),
    # numbers are written with digits; Qwen2 splits digits one by one, so these cover every number
    "number": (*string.digits, "1234567890"),
    "glyph": tuple(GLYPHS),
    "letter": OPTION_LETTERS,
    "background": ("plain", "gradient", "mottled", "striped", "checked"),
}

MAX_CAPTION_ITEMS = 9


def caption_objects(n: int) -> str:
    """The caption sentence template for n objects: "{item}, {item} and {item} on a ... background."."""
    items = ["{item}"] * n
    joined = items[0] if n == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return joined + " on {a} {background} background."


# --- phrases: builders pick the template by the attributes they are given -------------------------
THE_OBJ = {
    ("shape",): "the {shape}",
    ("colour", "shape"): "the {colour} {shape}",
    ("shape", "size"): "the {size} {shape}",
    ("colour", "shape", "size"): "the {size} {colour} {shape}",
    ("colour",): "the {colour} object",
    ("colour", "size"): "the {size} {colour} object",
}
A_OBJ = {
    ("shape",): "{a} {shape}",
    ("colour", "shape"): "{a} {colour} {shape}",
    ("shape", "size"): "{a} {size} {shape}",
    ("colour", "shape", "size"): "{a} {size} {colour} {shape}",
}
THINGS = {
    (): "objects",
    ("shape",): "{shapes}",
    ("colour",): "{colour} objects",
    ("colour", "shape"): "{colour} {shapes}",
}
EVENT_PAST = {
    "appear": "{the_obj} appeared",
    "disappear": "{the_obj} disappeared",
    "recolour": "{the_obj} turned {colour}",
}
EVENT_BASE = {
    "appear": "{the_obj} appear",
    "disappear": "{the_obj} disappear",
    "recolour": "{the_obj} turn {colour}",
}
EVENT_JUST = {
    "appear": "{the_obj} just appeared",
    "disappear": "{the_obj} just disappeared",
    "recolour": "{the_obj} just turned {colour}",
}
MOTION_ANSWER = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "static": "standing still",
    "bouncing": "bouncing around",
}
MOTION_NOW = {
    "left": "{the_obj} is moving left",
    "right": "{the_obj} is moving right",
    "up": "{the_obj} is moving up",
    "down": "{the_obj} is moving down",
    "bouncing": "{the_obj} is bouncing around",
}
ACTION = {
    "left": "moves left",
    "right": "moves right",
    "up": "moves up",
    "down": "moves down",
    "static": "stays still",
    "bouncing": "bounces around",
    "around": "moves around",
}
CAPTION_EVENT = {
    "appear": "Then {a_obj} appears.",
    "disappear": "Then {the_obj} disappears.",
    "recolour": "Then {the_obj} turns {colour}.",
    "cut": "Then the scene changes.",
}
NEEDLE_SENTENCE = {
    "digit": "A card with {a} {colour} border shows the number {glyph}.",
    "letter": "A card with {a} {colour} border shows the letter {glyph}.",
    "pointer": "A card with {a} {colour} border shows {a2} {colour2} dot.",
    "object": "A big {colour} {shape} appears.",
}

PHRASES: dict[str, tuple[str, ...]] = {
    "the_obj": tuple(THE_OBJ.values()),
    "a_obj": tuple(A_OBJ.values()),
    "things": tuple(THINGS.values()),
    "event": tuple(EVENT_PAST.values()),
    "event2": tuple(EVENT_PAST.values()),
    "event_base": tuple(EVENT_BASE.values()),
    "event_just": tuple(EVENT_JUST.values()),
    "motion_answer": tuple(MOTION_ANSWER.values()),
    "motion_now": tuple(MOTION_NOW.values()),
    "item": tuple("{a_obj} " + a for a in ACTION.values()),
    "seconds": ("{number} seconds", "{number} second"),
    "option": ("{glyph}", "{colour}", "{shape}"),
    "needle_desc": (
        "a card with {a} {colour} border",
        "a card",
        "a big {shape}",
        "a big {colour} object",
    ),
    "needle_question": (
        "What is written on the card?",
        "What number is on the card?",
        "What letter is on the card?",
        "Which number does the card show?",
        "Which letter does the card show?",
        "What colour is the {shape}?",
        "What color is the {shape}?",
        "What shape is the object?",
        "Which shape is it?",
    ),
    "caption_part": (
        *CAPTION_EVENT.values(),
        *NEEDLE_SENTENCE.values(),
        *(caption_objects(n) for n in range(1, MAX_CAPTION_ITEMS + 1)),
        "An empty {background} background.",
    ),
}
# the multi-hop format continues a sentence with the question, so it starts in lower case
PHRASES["needle_question_lc"] = tuple(q[:1].lower() + q[1:] for q in PHRASES["needle_question"])

# --- sentence families: several phrasings each -----------------------------------------------------
QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is {the_obj}?",
        "What color is {the_obj}?",
        "Which colour is {the_obj}?",
        "What is the colour of {the_obj}?",
        "Tell me the colour of {the_obj}.",
    ),
    "colour_now": (
        "What colour is {the_obj} now?",
        "What color is {the_obj} right now?",
        "What colour is {the_obj} at the end?",
        "Which colour does {the_obj} have now?",
    ),
    "colour_start": (
        "What colour was {the_obj} at the start?",
        "What color was {the_obj} at the beginning?",
        "Which colour did {the_obj} have at first?",
    ),
    "shape": (
        "What shape is {the_obj}?",
        "Which shape is {the_obj}?",
        "What is the shape of {the_obj}?",
        "What kind of shape is {the_obj}?",
    ),
    "count": (
        "How many {things} are there?",
        "How many {things} can you see?",
        "How many {things} are in the video?",
        "Count the {things}.",
    ),
    "count_now": (
        "How many {things} are there now?",
        "How many {things} can you see right now?",
        "How many {things} are there at the end?",
    ),
    "count_start": (
        "How many {things} were there at the start?",
        "How many {things} were there at the beginning?",
    ),
    "motion": (
        "Which way is {the_obj} moving?",
        "In which direction does {the_obj} move?",
        "How is {the_obj} moving?",
        "What is {the_obj} doing?",
    ),
    "motion_now": (
        "Which way is {the_obj} moving now?",
        "What is {the_obj} doing right now?",
        "How is {the_obj} moving at the moment?",
    ),
    "presence_now": (
        "Is there {a_obj}?",
        "Is there {a_obj} now?",
        "Can you see {a_obj}?",
        "Do you see {a_obj} right now?",
    ),
    "presence": (
        "Is there {a_obj} in the video?",
        "Does {a_obj} appear in the video?",
        "Did you see {a_obj} at any point?",
    ),
    "now": (
        "What is happening now?",
        "What is going on right now?",
        "What is happening at the moment?",
        "What is happening at the end of the video?",
    ),
    "just": (
        "What just happened?",
        "What happened just now?",
        "What changed most recently?",
    ),
    "first": (
        "What happened first: {event} or {event2}?",
        "Which came first, {event} or {event2}?",
        "Which happened earlier: {event} or {event2}?",
    ),
    "after": (
        "What happened right after {event}?",
        "What happened next, after {event}?",
        "What was the next thing to happen after {event}?",
    ),
    "before": (
        "What happened just before {event}?",
        "What happened right before {event}?",
        "What was the last thing to happen before {event}?",
    ),
    "before_after": (
        "Did {event_base} before or after {event}?",
        "Was it before or after {event} that {event2}?",
    ),
    "when": (
        "When did {event_base}?",
        "At what time did {event_base}?",
        "How many seconds into the video did {event_base}?",
    ),
    "caption": (
        "Describe the video.",
        "Describe what you see.",
        "What is in this video?",
        "Give a short description of the video.",
        "Briefly describe this clip.",
    ),
    "needle_open": (
        "What was written on the card?",
        "What number was shown on the card?",
        "What letter was shown on the card?",
        "What colour was the {shape}?",
        "What color was the {shape}?",
    ),
}
# Multiple choice, in the paper's NIAH format (and LLaVA's, for variety in training).
NIAH_SINGLE = (
    "Find the frame of {needle_desc}. {needle_question}\nOptions: (A) {option}\n(B) {option}\n"
    "(C) {option}\n(D) {option}\nOnly give the best option. Best option: ("
)
NIAH_MULTI = (
    "Find the frame of {needle_desc}. Locate the final frame based on the instructions in the image, and"
    " answer the following question based on the final frame: {needle_question_lc}\nOptions: (A) {option}\n"
    "(B) {option}\n(C) {option}\n(D) {option}\nOnly give the best option. Best option: ("
)
LLAVA_MC = (
    "{needle_question}\nA. {option}\nB. {option}\nC. {option}\nD. {option}\n"
    "Answer with the option's letter from the given choices directly."
)
MC_FORMATS = {"niah": NIAH_SINGLE, "niah_multi": NIAH_MULTI, "llava": LLAVA_MC}

ANSWERS: dict[str, tuple[str, ...]] = {
    "word": ("{colour}", "{shape}", "{number}", "{glyph}", "{letter}", "{motion_answer}"),
    "yes_no": ("Yes", "No"),
    "before_after": ("Before", "After"),
    "event": ("{event}.", "{event_just}.", "{motion_now}."),
    "when": ("At {seconds}",),
}

FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, **slots: str) -> str:
    """Fill a template; every field must be given (a typo fails loudly, never prints '{shape}')."""
    missing = set(FIELD.findall(template)) - slots.keys()
    if missing:
        raise KeyError(f"template {template!r} needs {sorted(missing)}")
    return template.format(**slots)


def say(family: str, rng: np.random.Generator, **slots: str) -> str:
    """One phrasing of a question family, filled."""
    options = QUESTIONS[family]
    return fill(options[int(rng.integers(len(options)))], **slots)


def _pick(table: dict[tuple[str, ...], str], **attrs: str | None) -> tuple[str, dict[str, str]]:
    given = {k: v for k, v in attrs.items() if v is not None}
    key = tuple(sorted(given))
    if key not in table:
        raise KeyError(f"no phrase for attributes {key}")
    return table[key], given


def the_obj(*, colour: str | None = None, shape: str | None = None, size: str | None = None) -> str:
    template, given = _pick(THE_OBJ, colour=colour, shape=shape, size=size)
    return fill(template, **given)


def a_obj(*, colour: str | None = None, shape: str, size: str | None = None) -> str:
    template, given = _pick(A_OBJ, colour=colour, shape=shape, size=size)
    first = size or colour or shape
    return fill(template, a=article(first), **given)


def things(*, colour: str | None = None, shape: str | None = None) -> str:
    template, given = _pick(THINGS, colour=colour, shape=shape)
    if "shape" in given:
        given["shapes"] = plural(given.pop("shape"))
    return fill(template, **given)


def event_phrase(table: dict[str, str], kind: str, ref: str, new_colour: str | None = None) -> str:
    slots = {"the_obj": ref}
    if kind == "recolour":
        assert new_colour is not None
        slots["colour"] = new_colour
    return fill(table[kind], **slots)


def seconds(n: int) -> str:
    return fill(PHRASES["seconds"][1 if n == 1 else 0], number=str(n))


def multiple_choice(fmt: str, options: list[str], **slots: str) -> str:
    """A multiple-choice question: `fmt` is one of MC_FORMATS; options fill (A) to (D) in order."""
    if len(options) != len(OPTION_LETTERS):
        raise ValueError(f"need {len(OPTION_LETTERS)} options, got {len(options)}")
    template = MC_FORMATS[fmt]
    head, *rest = template.split("{option}")
    parts = [fill(head, **slots)]
    for opt, tail in zip(options, rest, strict=True):
        parts.append(opt + tail)
    return "".join(parts)


# --- enumeration ----------------------------------------------------------------------------------
def _expansions(symbol: str) -> Iterator[str]:
    if symbol in LEAVES:
        yield from LEAVES[symbol]
        return
    for template in PHRASES[symbol]:
        yield from expand(template)


def _default(symbol: str) -> str:
    return next(_expansions(symbol))


def expand(template: str) -> Iterator[str]:
    """Texts covering every word of `template` in every context it can have: each field in turn takes
    each of its expansions while the others keep their first. Linear in the grammar's size, and a
    superset of the tokens of any fill (byte-level BPE pre-tokenises at word boundaries, so a word's
    tokens depend only on the characters next to it, which the template fixes)."""
    fields = list(dict.fromkeys(FIELD.findall(template)))
    if not fields:
        yield template
        return
    defaults = {f: _default(f) for f in fields}
    for f in fields:
        for value in _expansions(f):
            yield template.format(**{**defaults, f: value})


def vocabulary_texts() -> list[str]:
    """Every kind of text the world produces: questions, answers (capitalised, as generated), caption
    sentences (capitalised, as generated) and multiple-choice prompts. Deduplicated, sorted."""
    plain: list[str] = [t for family in QUESTIONS.values() for t in family] + list(MC_FORMATS.values())
    capitalised = [t for family in ANSWERS.values() for t in family] + list(PHRASES["caption_part"])
    texts: set[str] = set()
    for template in plain:
        texts.update(expand(template))
    for template in capitalised:
        texts.update(capitalise(text) for text in expand(template))
    return sorted(texts)
