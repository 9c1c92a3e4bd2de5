"""Prompts as the model reads them: the release's ChatML template, tokenized, and mapped to rows.

A model may keep only some embedding rows (the `mini` preset keeps the world's token ids); `Vocab`
turns token ids into the rows the model computes with. Built once per process (data workers too):
building the Qwen2 tokenizer from its ranks takes a few seconds.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flashlive.model.prompt import question_text, video_prefix_text
from flashlive.model.tokenizer import IM_END_ID, load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vocab:
    """Token id -> embedding row. `rows` None: the identity (every id has its row)."""

    size: int
    rows: tuple[int, ...] | None = None  # rows[i] is the row of token id ids[i]
    ids: tuple[int, ...] | None = None
    unknown: int = 0  # the row of any id not listed

    def __post_init__(self) -> None:
        if (self.rows is None) != (self.ids is None):
            raise ValueError("a vocabulary mapping needs both ids and rows")

    @functools.cached_property
    def _table(self) -> dict[int, int] | None:
        if self.ids is None or self.rows is None:
            return None
        return dict(zip(self.ids, self.rows, strict=True))

    def map(self, ids: Sequence[int]) -> list[int]:
        table = self._table
        if table is None:
            bad = [i for i in ids if not 0 <= i < self.size]
            if bad:
                raise ValueError(f"token id {bad[0]} has no row in a vocabulary of {self.size}")
            return list(ids)
        return [table.get(i, self.unknown) for i in ids]


class Prompter:
    """Token rows of the prompt around a video, of questions and of answers."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.tokenizer = load_tokenizer()
        self.prefix = self.rows(video_prefix_text())
        self.end = vocab.map([IM_END_ID])

    def rows(self, text: str) -> list[int]:
        return self.vocab.map(self.tokenizer.encode(text, add_special_tokens=False))

    def question(self, question: str, num_frames: int, fps: float = 1.0) -> list[int]:
        """The text after the video, up to where the answer starts."""
        return self.rows(question_text(question, num_frames / fps, num_frames))

    def answer(self, answer: str) -> list[int]:
        """The answer as the model should write it, with the end-of-turn token that stops it."""
        return self.rows(answer) + self.end


@functools.lru_cache(maxsize=2)
def prompter(vocab: Vocab) -> Prompter:
    """One prompter per vocabulary per process."""
    return Prompter(vocab)


def as_array(rows: Sequence[int]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64)
