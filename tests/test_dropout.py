"""Progressive visual dropout: counts, uniform and attention selection, KV lengths, cached decoding."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from flashlive.model.config import PRESETS, DropoutConfig
from flashlive.model.decoding import SamplingParams
from flashlive.model.dropout import DropoutError, stage_counts, stage_modes
from flashlive.model.generate import generate
from flashlive.model.kv_cache import KVCache
from flashlive.model.llm import Qwen2LM, random_init_

TINY = PRESETS["tiny"].llm  # 4 layers, hidden 64, 4 heads of 16, 2 kv heads


@pytest.fixture(scope="module")
def lm() -> Qwen2LM:
    return random_init_(Qwen2LM(TINY), seed=0).eval()


def prompt(lm: Qwen2LM, n_prefix: int, n_visual: int, n_suffix: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 151643, (1, n_prefix + n_suffix), generator=gen)
    vis = torch.randn(1, n_visual, lm.config.hidden_size, generator=gen) * 0.5
    with torch.no_grad():
        text = lm.embed(ids)
    return torch.cat([text[:, :n_prefix], vis, text[:, n_prefix:]], dim=1)


def test_stage_modes_and_counts() -> None:
    assert stage_modes("uniform0_attention", 2) == ["uniform", "attention"]
    assert stage_modes("uniform1_attention", 3) == ["uniform", "uniform", "attention"]
    assert stage_modes("attention", 2) == ["attention", "attention"]
    assert stage_modes("uniform", 2) == ["uniform", "uniform"]
    # counts are fractions of the ORIGINAL count, truncated: 2048 -> 1536 -> 512; 10 -> 7 -> 2
    assert stage_counts(2048, (1, 0.75, 0.25)) == [2048, 1536, 512]
    assert stage_counts(10, (1, 0.75, 0.25)) == [10, 7, 2]


@pytest.mark.parametrize("mode", ["uniform", "attention", "uniform0_attention", "uniform1_attention"])
def test_ratios_of_one_change_nothing(lm: Qwen2LM, mode: str) -> None:
    x = prompt(lm, 6, 30, 8)
    plain = lm.prefill(x, visual=(6, 30))
    out = lm.prefill(x, visual=(6, 30), dropout=DropoutConfig(mode, (1, 2, 3), (1.0, 1.0, 1.0, 1.0)))
    assert torch.equal(out.logits, plain.logits)
    assert out.visual_kept == [30, 30, 30]
    assert all(torch.equal(k, torch.arange(30)) for k in out.kept_indices)
    assert out.cache.lengths == plain.cache.lengths == [44] * 4
    for i in range(4):
        assert all(torch.equal(a, b) for a, b in zip(out.cache.get(i), plain.cache.get(i), strict=True))


def test_uniform_stages_keep_linspace_indices(lm: Qwen2LM) -> None:
    x = prompt(lm, 5, 37, 6)
    out = lm.prefill(x, visual=(5, 37), dropout=DropoutConfig("uniform", (1, 2), (1.0, 0.5, 0.2)))
    first = torch.linspace(0, 36, 18, dtype=torch.long)  # int(37 * 0.5) = 18 of 37
    second = first[torch.linspace(0, 17, 7, dtype=torch.long)]  # int(37 * 0.2) = 7 of those 18
    assert torch.equal(out.kept_indices[0], first)
    assert torch.equal(out.kept_indices[1], second)
    assert out.visual_kept == [18, 7]
    assert [s.mode for s in out.stages] == ["uniform", "uniform"] and out.attention == [None, None]


def test_no_visual_tokens_means_no_drop(lm: Qwen2LM) -> None:
    x = prompt(lm, 5, 0, 6)
    drop = DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.5, 0.25))
    for visual in (None, (5, 0)):
        out = lm.prefill(x, visual=visual, dropout=drop)
        assert out.stages == [] and out.cache.lengths == [11] * 4


def aligned_model(select_layer: int, hot: list[int]) -> tuple[Qwen2LM, torch.Tensor, tuple[int, int]]:
    """A model and prompt where the last token's attention at `select_layer` is known to favour `hot`.

    Layers before `select_layer` add nothing to the residual (o_proj and down_proj zero), so the hidden
    states reaching it are the embeddings. There, every query head reads hidden channel 1 into head dim 7
    and every key head reads channel 0 into head dim 7 (the slowest rotary frequency, so the rotation is
    negligible): the score of visual token j is proportional to its channel-0 value. Hot tokens get
    channel-0 values 4, 5, 6, ... in a scrambled order; every other token gets 0. The q/k weights of all
    other layers are random, so selecting with the wrong layer would give another answer.
    """
    lm = random_init_(Qwen2LM(TINY), seed=3).eval()
    d = TINY.head_dim
    layers: Any = lm.model.layers
    with torch.no_grad():
        for i in range(select_layer):
            layers[i].self_attn.o_proj.weight.zero_()
            layers[i].mlp.down_proj.weight.zero_()
        attn = layers[select_layer].self_attn
        layers[select_layer].input_layernorm.weight.fill_(1.0)
        for p in (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias):
            p.zero_()
        for h in range(TINY.num_attention_heads):
            attn.q_proj.weight[h * d + 7, 1] = 3.0
        for h in range(TINY.num_key_value_heads):
            attn.k_proj.weight[h * d + 7, 0] = 3.0
    gen = torch.Generator().manual_seed(5)
    n_pre, n_vis, n_suf = 4, 16, 5
    x = torch.randn(1, n_pre + n_vis + n_suf, TINY.hidden_size, generator=gen) * 0.3
    x[0, :, 0] = 0.0
    strengths = torch.randperm(len(hot), generator=gen).float() + 4.0
    for j, s in zip(hot, strengths.tolist(), strict=True):
        x[0, n_pre + j, 0] = s
    x[0, -1, 1] = 6.0  # the last prompt token's query
    return lm, x, (n_pre, n_vis)


def test_attention_stage_keeps_what_the_last_token_attends_to() -> None:
    hot = [2, 5, 11, 14]
    lm, x, visual = aligned_model(1, hot)
    out = lm.prefill(x, visual=visual, dropout=DropoutConfig("attention", (1,), (1.0, 0.25)))
    assert out.kept_indices[0].tolist() == hot
    scores = out.attention[0]
    assert scores is not None and scores.shape == (16,)
    cold = [j for j in range(16) if j not in hot]
    assert scores[hot].min() > scores[cold].max()


def test_uniform_then_attention_stage() -> None:
    # stage 0 (before layer 1) keeps linspace(0, 15, 8) = [0, 2, 4, 6, 8, 10, 12, 15];
    # stage 1 (before layer 2) keeps the 4 of those the last token attends to most
    hot = [2, 6, 10, 15]
    model, x, visual = aligned_model(2, hot)
    out = model.prefill(
        x, visual=visual, dropout=DropoutConfig("uniform0_attention", (1, 2), (1.0, 0.5, 0.25))
    )
    assert out.kept_indices[0].tolist() == [0, 2, 4, 6, 8, 10, 12, 15]
    assert out.kept_indices[1].tolist() == hot
    assert torch.equal(out.stages[1].candidates, out.kept_indices[0])
    assert [s.mode for s in out.stages] == ["uniform", "attention"]


def test_kv_lengths_per_layer(lm: Qwen2LM) -> None:
    x = prompt(lm, 5, 40, 7)  # T = 52
    out = lm.prefill(x, visual=(5, 40), dropout=DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.5, 0.25)))
    assert out.visual_kept == [20, 10]
    assert out.cache.lengths == [52, 32, 32, 22]  # layer 0 full; layers 1-2 lost 20; layer 3 lost 30
    tokens = list(generate(lm, out, SamplingParams(max_new_tokens=4), stop_ids=()))
    assert len(tokens) == 4
    assert out.cache.lengths == [55, 35, 35, 25]  # the last token is not fed back


@pytest.mark.parametrize("mode", ["uniform0_attention", "attention", "uniform1_attention"])
def test_cached_decoding_after_a_drop_equals_recomputation(lm: Qwen2LM, mode: str) -> None:
    """What "uncached" means here: for each new token, prefill again from scratch with the generated
    tokens appended after the prompt and with the drop decisions of the original prefill replayed
    (`forced_keep`). Re-selecting would be a different computation: the attention stage must keep
    looking from the last PROMPT token. In that recomputation every layer renumbers its shortened
    sequence 0..T'-1, so agreement shows that a decoded token's rotary position in each layer is that
    layer's own (shortened) length, and that layers before a drop attend over the full prompt.
    """
    x = prompt(lm, 6, 48, 9, seed=4)
    drop = DropoutConfig(mode, (1, 2, 3), (1.0, 0.5, 0.3, 0.25))
    out = lm.prefill(x, visual=(6, 48), dropout=drop)
    assert out.visual_kept == [24, 14, 12]
    cached: list[int] = []
    logits = [out.logits]
    for tok in generate(lm, out, SamplingParams(max_new_tokens=6), stop_ids=()):
        cached.append(tok)
    # the cache now holds 5 decoded tokens; rebuild the same logits step by step without it
    seq = x
    for step, tok in enumerate(cached):
        ref = lm.prefill(seq, visual=(6, 48), dropout=drop, forced_keep=out.kept_indices)
        assert int(ref.logits.argmax()) == tok
        if step == 0:
            assert torch.allclose(ref.logits, logits[0], atol=1e-5)
        seq = torch.cat([seq, lm.embed(torch.tensor([[tok]]))], dim=1)
    # and logits of a further decode step against the recomputation
    fresh = lm.prefill(x, visual=(6, 48), dropout=drop)
    for tok in cached[:3]:
        step_logits = lm.decode(torch.tensor([[tok]]), fresh.cache)
    ref = lm.prefill(
        torch.cat([x, lm.embed(torch.tensor([cached[:3]]))], dim=1),
        visual=(6, 48),
        dropout=drop,
        forced_keep=out.kept_indices,
    )
    assert (step_logits - ref.logits).abs().max() <= 1e-4
    assert len(set(cached)) > 1


class FullLengthPositions(KVCache):
    """A cache that reports layer 0's (full) length for every layer: positions that ignore the drop."""

    def length(self, layer: int) -> int:
        return super().length(0)


def test_decode_positions_shift_by_the_number_dropped(lm: Qwen2LM) -> None:
    x = prompt(lm, 4, 40, 4, seed=6)
    out = lm.prefill(x, visual=(4, 40), dropout=DropoutConfig("uniform", (1,), (1.0, 0.25)))
    assert out.cache.lengths == [48, 18, 18, 18]
    right = lm.decode(torch.tensor([[42]]), out.cache.copy())
    unshifted = FullLengthPositions(4)
    for i in range(4):
        unshifted.append(i, *out.cache.get(i))
    wrong = lm.decode(torch.tensor([[42]]), unshifted)
    # same keys and values, only the new token's rotary position differs in layers 1-3
    assert (right - wrong).abs().max() > 1e-3


def test_bad_dropout_settings_are_rejected(lm: Qwen2LM) -> None:
    x = prompt(lm, 3, 12, 3)
    with pytest.raises(DropoutError, match=r"ratios\[0\]"):
        lm.prefill(x, visual=(3, 12), dropout=DropoutConfig("uniform", (1,), (0.5, 0.25)))
    with pytest.raises(DropoutError, match="increase"):
        lm.prefill(x, visual=(3, 12), dropout=DropoutConfig("uniform", (1, 2), (1.0, 0.25, 0.5)))
    with pytest.raises(DropoutError, match="layer 4 does not exist"):
        lm.prefill(x, visual=(3, 12), dropout=DropoutConfig("uniform", (4,), (1.0, 0.5)))
    with pytest.raises(DropoutError, match="batch"):
        lm.prefill(x.expand(2, -1, -1), visual=(3, 12), dropout=DropoutConfig("uniform", (1,), (1.0, 0.5)))
    with pytest.raises(DropoutError, match="forced_keep"):
        lm.prefill(
            x,
            visual=(3, 12),
            dropout=DropoutConfig("uniform", (1,), (1.0, 0.5)),
            forced_keep=[torch.tensor([0, 1, 2])],
        )
    with pytest.raises(ValueError, match="unknown dropout mode"):
        DropoutConfig("random", (1,), (1.0, 0.5))
