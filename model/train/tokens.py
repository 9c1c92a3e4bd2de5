"""Prompts as the model reads them: the release's ChatML template, tokenized with the real Qwen2
tokenizer. Token ids stay ids here; a model with a restricted vocabulary maps them to its rows itself
(`Qwen2LM.embed`, `Qwen2LM.rows`). Built once per process (data workers too): building the tokenizer
from its ranks takes a few seconds.
"""

from __future__ import annotations

import functools
import logging

from flashlive.model.prompt import question_text, video_prefix_text
from flashlive.model.tokenizer import IM_END_ID, load_tokenizer

log = logging.getLogger(__name__)


class Prompter:
    """Token ids of the prompt around a video, of questions and of answers."""

    def __init__(self) -> None:
        self.tokenizer = load_tokenizer()
        self.prefix = self.ids(video_prefix_text())

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def question(self, question: str, num_frames: int, fps: float = 1.0) -> list[int]:
        """The text after the video, up to where the answer starts."""
        return self.ids(question_text(question, num_frames / fps, num_frames))

    def answer(self, answer: str) -> list[int]:
        """The answer as the model should write it, with the end-of-turn token that stops it."""
        return [*self.ids(answer), IM_END_ID]


@functools.cache
def prompter() -> Prompter:
    """One prompter per process."""
    return Prompter()
