"""Choosing the next token: `SamplingParams` (how to generate) and `Sampler` (one per sequence).

`SamplingParams` is what a generation runs with; `flashlive.model.generation_config.resolve_sampling`
fills it from a request, chat()'s arguments and a checkpoint's generation_config.json.

The processing follows transformers' `generate()` so that a checkpoint's generation_config.json means
here what it means there, in the same order: repetition penalty, then (sampling only) temperature,
top-k, top-p, then a draw from the softmax; greedy is the argmax after the repetition penalty.

- repetition penalty: each token already generated has its logit divided by the penalty when
  positive, multiplied when negative. Only generated tokens count: the release generates from
  `inputs_embeds` (the video has no ids), so transformers' `input_ids` holds the answer alone.
- top-k: keep the tokens whose logit is at least the k-th largest (ties kept).
- top-p: sort ascending, remove the tokens whose cumulative probability is <= 1 - top_p; the most
  likely token always stays.

Each sequence draws from its own `torch.Generator`, so its tokens do not depend on which other
sequences share its batch, and a seed reproduces an answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from flashlive.model.errors import GenerationError

MAX_NEW_TOKENS = 1024  # the release's chat() and evaluation default


@dataclass(frozen=True)
class SamplingParams:
    """How to generate one answer. Plain data: a request or a checkpoint's generation_config fills it.

    temperature 0 means greedy decoding (transformers' do_sample=False); top_k 0 and top_p 1 are off;
    stop_ids None means the tokenizer's end tokens (see `default_stop_ids`).
    """

    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] | None = None
    origin: dict[str, str] = field(default_factory=dict, compare=False, hash=False)  # setting -> source

    def __post_init__(self) -> None:
        def bad(what: str) -> GenerationError:
            return GenerationError(f"bad generation setting: {what}")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise bad(f"max_new_tokens must be a whole number, not {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise bad(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise bad(f"{name} must be a finite number, not {value!r}")
        if self.temperature < 0:
            raise bad(f"temperature must be >= 0 (0 is greedy), not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad(f"top_p must lie in (0, 1], not {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad(f"top_k must be a whole number >= 0 (0 is off), not {self.top_k!r}")
        if self.repetition_penalty <= 0:
            raise bad(f"repetition_penalty must be > 0 (1 is off), not {self.repetition_penalty}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad(f"seed must be a whole number, not {self.seed!r}")
        if self.stop_ids is not None and any(
            isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.stop_ids
        ):
            raise bad(f"stop_ids must be token ids, not {self.stop_ids!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def default_stop_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The tokenizer's end tokens: its eos, and ChatML's <|im_end|> and <|endoftext|> where it has them."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for text in ("<|im_end|>", "<|endoftext|>"):
        if text in vocab and vocab[text] not in ids:
            ids.append(vocab[text])
    return tuple(ids)


def process_logits(logits: Tensor, params: SamplingParams, generated: Sequence[int]) -> Tensor:
    """The scores the next token is drawn from (or the argmax of, when greedy): [V] float32."""
    scores = logits.float()
    if params.repetition_penalty != 1.0 and generated:
        ids = torch.tensor(sorted(set(generated)), device=scores.device)
        seen = scores[ids]
        scores = scores.clone()
        scores[ids] = torch.where(
            seen < 0, seen * params.repetition_penalty, seen / params.repetition_penalty
        )
    if params.greedy:
        return scores
    scores = scores / params.temperature
    if params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - params.top_p)
        remove[-1] = False
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return scores


class Sampler:
    """The next-token rule of one sequence, with its own random stream."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator()
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)

    def __call__(self, logits: Tensor, generated: Sequence[int]) -> int:
        """Next token id from logits [V] given the tokens generated so far."""
        scores = process_logits(logits.detach().float().cpu(), self.params, generated)
        if self.generator is None:
            return int(scores.argmax())
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
