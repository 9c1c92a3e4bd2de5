"""Qwen2LM against transformers' Qwen2ForCausalLM, and the KV cache against full recomputation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from flashlive.model.config import PRESETS, DropoutConfig, LLMConfig
from flashlive.model.decoding import SamplingParams
from flashlive.model.dropout import DropoutError
from flashlive.model.generate import generate
from flashlive.model.llm import Qwen2LM, random_init_

TINY = PRESETS["tiny"].llm  # hidden 64, 4 layers, 4 heads, 2 kv heads, vocab 151936, tied


def hf_config(cfg: LLMConfig) -> Qwen2Config:
    kwargs: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="eager",
    )
    return Qwen2Config(**kwargs)


def make_pair(cfg: LLMConfig, seed: int = 0) -> tuple[Qwen2LM, Qwen2ForCausalLM]:
    lm = random_init_(Qwen2LM(cfg), seed).eval()
    hf = Qwen2ForCausalLM(hf_config(cfg)).eval()
    hf.load_state_dict(lm.state_dict(), strict=True)
    return lm, hf


@pytest.fixture(scope="module")
def pair() -> tuple[Qwen2LM, Qwen2ForCausalLM]:
    return make_pair(TINY)


def spliced_prompt(lm: Qwen2LM, n_prefix: int, n_visual: int, n_suffix: int, seed: int = 1) -> torch.Tensor:
    """[1, T, C]: embedded text ids, random 'visual' embeddings, embedded text ids."""
    gen = torch.Generator().manual_seed(seed)
    pre = torch.randint(0, 151643, (1, n_prefix), generator=gen)
    suf = torch.randint(0, 151643, (1, n_suffix), generator=gen)
    vis = torch.randn(1, n_visual, lm.config.hidden_size, generator=gen) * 0.5
    with torch.no_grad():
        return torch.cat([lm.embed(pre), vis, lm.embed(suf)], dim=1)


def test_state_dict_keys_identical_to_transformers() -> None:
    for tied in (True, False):
        cfg = replace(TINY, tie_word_embeddings=tied)
        ours = Qwen2LM(cfg).state_dict()
        ref = Qwen2ForCausalLM(hf_config(cfg)).state_dict()
        assert list(ours) == list(ref)
        assert all(ours[k].shape == ref[k].shape for k in ref)


def test_tied_checkpoint_without_lm_head_loads_strictly(pair: tuple[Qwen2LM, Qwen2ForCausalLM]) -> None:
    lm, hf = pair
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    fresh = Qwen2LM(TINY)
    fresh.load_state_dict(state, strict=True)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert torch.equal(fresh.lm_head.weight, lm.lm_head.weight)
    untied = Qwen2LM(replace(TINY, tie_word_embeddings=False))
    with pytest.raises(RuntimeError, match=r"lm_head\.weight"):
        untied.load_state_dict(state, strict=True)


def test_logits_match_transformers_with_visual_embeddings(pair: tuple[Qwen2LM, Qwen2ForCausalLM]) -> None:
    lm, hf = pair
    embeds = spliced_prompt(lm, 9, 48, 14)
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds).logits.float()  # [1, T, V]
        full = lm(embeds)
    assert ref.abs().max() > 1.0  # weights large enough that the comparison means something
    assert (full - ref).abs().max() <= 1e-4
    out = lm.prefill(embeds, visual=(9, 48))
    assert (out.logits - ref[:, -1]).abs().max() <= 1e-4
    assert out.stages == [] and out.cache.lengths == [embeds.shape[1]] * TINY.num_hidden_layers


def test_decode_logits_match_transformers(pair: tuple[Qwen2LM, Qwen2ForCausalLM]) -> None:
    lm, hf = pair
    embeds = spliced_prompt(lm, 5, 20, 6, seed=2)
    out = lm.prefill(embeds, visual=(5, 20))
    tokens = [11, 2000, 151644]
    for i, tok in enumerate(tokens):
        logits = lm.decode(torch.tensor([[tok]]), out.cache)
        ids = torch.tensor([tokens[: i + 1]])
        with torch.no_grad():
            ref = hf(inputs_embeds=torch.cat([embeds, lm.embed(ids)], dim=1)).logits[:, -1].float()
        assert (logits - ref).abs().max() <= 1e-4


def test_greedy_generation_cached_equals_recomputed(pair: tuple[Qwen2LM, Qwen2ForCausalLM]) -> None:
    lm, _ = pair
    embeds = spliced_prompt(lm, 7, 32, 9, seed=3)
    cached = list(
        generate(lm, lm.prefill(embeds, visual=(7, 32)), SamplingParams(max_new_tokens=10), stop_ids=())
    )
    # without a cache: rerun the whole sequence for every new token
    seq, recomputed = embeds, []
    with torch.no_grad():
        for _ in range(10):
            tok = int(lm(seq)[0, -1].argmax())
            recomputed.append(tok)
            seq = torch.cat([seq, lm.embed(torch.tensor([[tok]]))], dim=1)
    assert cached == recomputed
    assert len(set(cached)) > 1  # not a degenerate constant stream


def test_generation_stops_at_im_end_and_respects_max_new_tokens(
    pair: tuple[Qwen2LM, Qwen2ForCausalLM],
) -> None:
    lm, _ = pair
    embeds = spliced_prompt(lm, 4, 8, 4, seed=4)
    free = list(generate(lm, lm.prefill(embeds), SamplingParams(max_new_tokens=6), stop_ids=()))
    assert len(free) == 6
    # make the third greedy token the stop token: generation yields the two before it and ends
    stopped = list(generate(lm, lm.prefill(embeds), SamplingParams(max_new_tokens=6), stop_ids=(free[2],)))
    assert stopped == free[: free.index(free[2])]


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(pair: tuple[Qwen2LM, Qwen2ForCausalLM]) -> None:
    lm, _ = pair
    embeds = spliced_prompt(lm, 4, 8, 4, seed=5)

    def run(**kw: Any) -> list[int]:
        return list(generate(lm, lm.prefill(embeds), SamplingParams(max_new_tokens=8, **kw), stop_ids=()))

    a, b = run(temperature=1.5, seed=7), run(temperature=1.5, seed=7)
    assert a == b
    assert a != run(temperature=1.5, seed=8)
    assert run(temperature=1.0, top_p=1e-6, seed=1) == run(temperature=0.0)


def test_prefill_continues_from_a_cached_prefix(pair: tuple[Qwen2LM, Qwen2ForCausalLM]) -> None:
    """The visual prefix is prefilled once; each question continues from a copy of its cache."""
    lm, _ = pair
    embeds = spliced_prompt(lm, 6, 24, 0, seed=6)
    prefix = lm.prefill(embeds, visual=(6, 24))
    for seed in (7, 8):
        question = spliced_prompt(lm, 5, 0, 0, seed=seed)
        whole = lm.prefill(torch.cat([embeds, question], dim=1), visual=(6, 24))
        cont = lm.prefill(question, cache=prefix.cache.copy())
        assert (cont.logits - whole.logits).abs().max() <= 1e-4
        assert cont.cache.lengths == whole.cache.lengths
    assert prefix.cache.lengths == [30] * TINY.num_hidden_layers  # the copies left the prefix alone
    with pytest.raises(DropoutError, match="cached prefix"):
        lm.prefill(
            question, visual=(0, 2), dropout=DropoutConfig("uniform", (1,), (1.0, 0.5)), cache=prefix.cache
        )


def test_bad_visual_span_is_rejected(pair: tuple[Qwen2LM, Qwen2ForCausalLM]) -> None:
    lm, _ = pair
    with pytest.raises(ValueError, match="visual span"):
        lm.prefill(spliced_prompt(lm, 2, 3, 2), visual=(4, 5))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precision_tracks_fp32(pair: tuple[Qwen2LM, Qwen2ForCausalLM], dtype: torch.dtype) -> None:
    lm, _ = pair
    embeds = spliced_prompt(lm, 6, 40, 8, seed=9)
    ref = lm.prefill(embeds, visual=(6, 40))
    gpu = make_pair(TINY)[0].to("cuda", dtype)
    out = gpu.prefill(
        embeds.cuda(), visual=(6, 40), dropout=DropoutConfig("uniform0_attention", (1, 3), (1, 0.5, 0.25))
    )
    plain = gpu.prefill(embeds.cuda(), visual=(6, 40))
    assert out.visual_kept == [20, 10]
    assert torch.allclose(plain.logits.cpu(), ref.logits, atol=0.1, rtol=0.05)
    tokens = list(generate(gpu, out, SamplingParams(max_new_tokens=4), stop_ids=()))
    assert len(tokens) == 4
