"""Answering a question over clip tokens: projector, prompt, prefill with dropout, streamed decode.

This is the part a query worker runs; tokens come from memory (or, for `ask-file`, straight from the
clip encoder). Text streams out as it is generated; the final `AnswerResult` carries the numbers a
caller reports (visual tokens kept per dropout stage, timings, evidence).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flashlive.model.checkpoint import llm_key
from flashlive.model.config import DropoutConfig, FlashConfig
from flashlive.model.generate import generate
from flashlive.model.llm import PrefillOutput, Qwen2LM, random_init_
from flashlive.model.pipeline import LLM_SEED_OFFSET, LoadedSpec, build_projector, load_part, resolve
from flashlive.model.projector import Projector
from flashlive.model.prompt import build_prompt, tokenize_with_image
from flashlive.model.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class AnswerResult:
    answer: str = ""
    clips: int = 0
    visual_tokens: int = 0
    visual_kept: list[int] = field(default_factory=list)  # after each dropout stage
    prompt_tokens: int = 0
    new_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prefill, decode_tokens
    evidence_clips: list[int] = field(default_factory=list)  # clips the last attention stage kept most of


class Answerer:
    """Projector + LLM + tokenizer, loaded once, answering many questions."""

    def __init__(self, cfg: FlashConfig, projector: Projector, llm: Qwen2LM, ckpt: Path | None) -> None:
        self.cfg = cfg
        self.projector = projector
        self.llm = llm
        self.tokenizer = load_tokenizer(ckpt)

    @classmethod
    def load(
        cls, model: str, *, device: str = "cpu", dtype: str = "auto", download: bool = False
    ) -> Answerer:
        spec = resolve(model, device=device, dtype=dtype, download=download)
        return cls(spec.cfg, build_projector(spec, progress=True), build_llm(spec, progress=True), spec.ckpt)

    def text(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        assert isinstance(text, str)
        return text

    def visual_embeddings(self, tokens: np.ndarray) -> torch.Tensor:
        # tokens: [N, 64, C] fp16 -> [N*64, H]
        t = torch.from_numpy(np.ascontiguousarray(tokens)).to(self.llm.device, self.llm.dtype)
        with torch.inference_mode():
            return self.projector(t).reshape(-1, self.cfg.llm.hidden_size)

    def stream(
        self,
        tokens: np.ndarray,
        question: str,
        *,
        duration: float,
        num_frames: int,
        dropout: DropoutConfig | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> AnswerStream:
        """Start answering; iterate the result for text pieces, then read `.result`."""
        prompt = build_prompt(question, duration, num_frames)
        visual_count = int(tokens.shape[0] * tokens.shape[1])
        prefix, suffix = tokenize_with_image(
            self.tokenizer,
            prompt,
            visual_tokens=visual_count,
            max_positions=self.cfg.llm.max_position_embeddings,
            max_new_tokens=max_new_tokens,
        )
        return AnswerStream(self, tokens, prefix, suffix, dropout, max_new_tokens, temperature, top_p, seed)


class AnswerStream:
    """Iterates text pieces as tokens are generated; `.result` is complete once iteration ends."""

    def __init__(
        self,
        answerer: Answerer,
        tokens: np.ndarray,
        prefix: list[int],
        suffix: list[int],
        dropout: DropoutConfig | None,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> None:
        self._a = answerer
        self._tokens = tokens
        self._prefix, self._suffix = prefix, suffix
        self._dropout = dropout
        self._sampling = (max_new_tokens, temperature, top_p, seed)
        n_clips, per_clip = tokens.shape[0], tokens.shape[1]
        self.result = AnswerResult(
            clips=n_clips, visual_tokens=n_clips * per_clip, prompt_tokens=len(prefix) + len(suffix)
        )

    def __iter__(self) -> Iterator[str]:
        a, llm = self._a, self._a.llm
        t0 = time.perf_counter()
        visual = a.visual_embeddings(self._tokens)  # [V, H]
        ids = torch.tensor(self._prefix + self._suffix, device=llm.device)[None]
        with torch.inference_mode():
            text = llm.embed(ids)[0]  # [P+S, H]
        embeds = torch.cat([text[: len(self._prefix)], visual, text[len(self._prefix) :]])[None]
        out = llm.prefill(embeds, (len(self._prefix), visual.shape[0]), self._dropout)
        self.result.timings["prefill"] = time.perf_counter() - t0
        self.result.visual_kept = out.visual_kept
        self.result.evidence_clips = evidence_clips(out, self._tokens.shape[1])
        max_new, temperature, top_p, seed = self._sampling
        t1 = time.perf_counter()
        generated: list[int] = []
        shown = ""
        for token in generate(
            llm, out, max_new_tokens=max_new, temperature=temperature, top_p=top_p, seed=seed
        ):
            generated.append(token)
            text_so_far = a.text(generated)
            if text_so_far.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            piece, shown = text_so_far[len(shown) :], text_so_far
            if piece:
                yield piece
        final = a.text(generated)
        if final != shown:
            yield final[len(shown) :]
        self.result.answer = final
        self.result.new_tokens = len(generated)
        self.result.timings["decode_tokens"] = time.perf_counter() - t1


def evidence_clips(out: PrefillOutput, tokens_per_clip: int, top: int = 3) -> list[int]:
    """Clips holding the most attention in the last attention stage (empty without one)."""
    for stage in reversed(out.stages):
        if stage.scores is None:
            continue
        per_clip: dict[int, float] = {}
        for idx, score in zip(stage.candidates.tolist(), stage.scores.tolist(), strict=True):
            clip = idx // tokens_per_clip
            per_clip[clip] = per_clip.get(clip, 0.0) + score
        return sorted(per_clip, key=lambda c: -per_clip[c])[:top]
    return []


def build_llm(spec: LoadedSpec, *, progress: bool = False) -> Qwen2LM:
    return load_part(
        Qwen2LM(spec.cfg.llm),
        spec,
        part="LLM",
        prefix="",
        select=llm_key,
        seed_offset=LLM_SEED_OFFSET,
        init_random=random_init_,
        progress=progress,
    )
