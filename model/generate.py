"""Token-by-token generation over a prefilled KV cache: greedy, or temperature + top-p sampling."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from flashlive.model.llm import PrefillOutput, Qwen2LM

IM_END_ID = 151645
ENDOFTEXT_ID = 151643
DEFAULT_STOP_IDS = (IM_END_ID, ENDOFTEXT_ID)


def sample_next(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Next token from logits [V] (one sequence). temperature 0 is greedy."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        drop = sorted_p.cumsum(0) - sorted_p >= top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    lm: Qwen2LM,
    prefill: PrefillOutput,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_ids: tuple[int, ...] = DEFAULT_STOP_IDS,
) -> Iterator[int]:
    """Yield token ids as they are made, continuing `prefill` (its cache is extended in place).

    Stops after `max_new_tokens` or at a stop id (not yielded). Only batch size 1.
    """
    if prefill.logits.shape[0] != 1:
        raise ValueError(f"generate handles one sequence, got a batch of {prefill.logits.shape[0]}")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    generator = None
    if temperature > 0:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    logits = prefill.logits[0]
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_p, generator)
        if token in stop_ids:
            return
        yield token
        if step + 1 < max_new_tokens:
            ids = torch.tensor([[token]], device=lm.device)
            logits = lm.decode(ids, prefill.cache)[0]
