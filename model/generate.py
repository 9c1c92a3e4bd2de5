"""Token-by-token generation of ONE sequence over a prefilled KV cache (references, tests, scripts).

The service generates through `flashlive.model.engine.Engine`, which batches many sequences; this
loop is the plain single-sequence version the batched one is checked against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from flashlive.model.decoding import Sampler, SamplingParams
from flashlive.model.llm import PrefillOutput, Qwen2LM


def generate(
    lm: Qwen2LM,
    prefill: PrefillOutput,
    params: SamplingParams | None = None,
    *,
    stop_ids: Sequence[int] | None = None,
) -> Iterator[int]:
    """Yield token ids as they are made, continuing `prefill` (its cache is extended in place).

    Stops after `params.max_new_tokens` or at a stop id (not yielded). The stop ids are `stop_ids`,
    else `params.stop_ids`, else none (this loop has no tokenizer to ask). Only batch size 1.
    """
    params = params or SamplingParams()
    if prefill.logits.shape[0] != 1:
        raise ValueError(f"generate handles one sequence, got a batch of {prefill.logits.shape[0]}")
    stops = set(stop_ids if stop_ids is not None else params.stop_ids or ())
    sampler = Sampler(params)
    generated: list[int] = []
    logits = prefill.logits[0]
    for step in range(params.max_new_tokens):
        token = sampler(logits, generated)
        if token in stops:
            return
        generated.append(token)
        yield token
        if step + 1 < params.max_new_tokens:
            ids = torch.tensor([[token]], device=lm.device)
            logits = lm.decode(ids, prefill.cache)[0]
