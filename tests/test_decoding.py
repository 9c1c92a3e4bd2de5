"""Token sampling follows transformers' logits processors; each sequence has its own seeded random stream."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from flashlive.model.decoding import Sampler, SamplingParams, default_stop_ids, process_logits
from flashlive.model.errors import GenerationError
from flashlive.model.tokenizer import load_tokenizer


def transformers_scores(logits: torch.Tensor, params: SamplingParams, generated: list[int]) -> torch.Tensor:
    chain = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.greedy:
        chain.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            chain.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            chain.append(TopPLogitsWarper(params.top_p))
    ids = cast(torch.LongTensor, torch.tensor([generated], dtype=torch.long))
    return chain(ids, logits[None].clone())[0]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(repetition_penalty=1.3),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.2, top_k=20),
        SamplingParams(temperature=0.8, top_p=0.9),
        SamplingParams(temperature=0.6, top_k=50, top_p=0.8, repetition_penalty=1.1),
        SamplingParams(temperature=1.0, top_p=0.3, repetition_penalty=0.8),
    ],
)
def test_processing_matches_transformers(params: SamplingParams) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, generator=gen) * 3
    generated = [5, 17, 5, 999, 400, 3]
    ours = process_logits(logits, params, generated)
    want = transformers_scores(logits, params, generated)
    assert torch.equal(torch.isinf(ours), torch.isinf(want))
    finite = torch.isfinite(want)
    assert torch.allclose(ours[finite], want[finite], atol=1e-6)
    if params.top_k or params.top_p < 1:
        assert int(finite.sum()) < 1000  # the filters removed something


def test_greedy_is_the_argmax_after_the_penalty() -> None:
    logits = torch.tensor([1.0, 3.0, 2.9, -1.0])
    assert Sampler(SamplingParams())(logits, []) == 1
    # token 1 was generated already: 3.0 / 1.2 = 2.5 < 2.9
    assert Sampler(SamplingParams(repetition_penalty=1.2))(logits, [1]) == 2


def test_seeds_reproduce_and_sequences_do_not_share_a_stream() -> None:
    logits = torch.zeros(50)
    params = SamplingParams(temperature=1.0, seed=11)
    a, b = Sampler(params), Sampler(params)
    draws_a = [a(logits, []) for _ in range(20)]
    other = Sampler(SamplingParams(temperature=1.0, seed=12))
    interleaved = []
    for _ in range(20):
        other(logits, [])  # another sequence drawing in between changes nothing for b
        interleaved.append(b(logits, []))
    assert draws_a == interleaved and len(set(draws_a)) > 5
    assert draws_a != [Sampler(SamplingParams(temperature=1.0, seed=12))(logits, []) for _ in range(20)]


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = torch.randn(300, generator=torch.Generator().manual_seed(4))
    best = int(logits.argmax())
    for params in (
        SamplingParams(temperature=2.0, top_k=1, seed=1),
        SamplingParams(temperature=2.0, top_p=1e-6, seed=1),
    ):
        sampler = Sampler(params)
        assert {sampler(logits, []) for _ in range(30)} == {best}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"max_new_tokens": 2.5}, "whole number"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "finite"),
        ({"top_p": 0}, "top_p must lie in"),
        ({"top_p": 1.5}, "top_p must lie in"),
        ({"top_k": -3}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty must be > 0"),
        ({"seed": "x"}, "seed"),
        ({"stop_ids": (1, -2)}, "stop_ids"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(GenerationError, match=message):
        SamplingParams(**kwargs)


def test_stop_ids_come_from_the_tokenizer() -> None:
    tok = load_tokenizer()
    assert default_stop_ids(tok) == (151645, 151643)  # eos is <|im_end|>; <|endoftext|> too
