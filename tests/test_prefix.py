"""A shared visual prefix + batched question prefills + batched decode == a plain full prefill, per question.

The reference is `Qwen2LM.prefill` of the whole prompt (text before the video, video, question) with
the same dropout setting: the tokens each stage keeps must be the same, the logits equal within float
tolerance, and greedy decoding must produce the same tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flashlive.model import cascade
from flashlive.model.config import PRESETS, DropoutConfig
from flashlive.model.decoding import SamplingParams
from flashlive.model.generate import generate
from flashlive.model.kv_cache import BatchKVCache, KVCache
from flashlive.model.llm import Qwen2LM, random_init_
from flashlive.model.runner import ModelRunner, PrefixCancelled

TINY = PRESETS["tiny"].llm  # 4 layers, hidden 64, 4 heads, 2 kv heads
P, N = 6, 48  # text tokens before the video, visual tokens
MODES = {
    "off": None,
    "uniform": DropoutConfig("uniform", (1, 3), (1.0, 0.5, 0.25)),
    "attention": DropoutConfig("attention", (1, 3), (1.0, 0.5, 0.25)),
    "uniform0_attention": DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.5, 0.25)),
    "uniform1_attention": DropoutConfig("uniform1_attention", (1, 2, 3), (1.0, 0.5, 0.3, 0.25)),
}


@pytest.fixture(scope="module")
def lm() -> Qwen2LM:
    return random_init_(Qwen2LM(TINY), seed=0).eval()


@pytest.fixture(scope="module")
def prompt(lm: Qwen2LM) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        text = lm.embed(torch.randint(0, 151643, (1, P), generator=gen))[0]
    visual = torch.randn(N, TINY.hidden_size, generator=gen) * 0.5
    questions = [torch.randint(0, 151643, (n,), generator=gen).tolist() for n in (5, 9, 2)]
    return text, visual, questions


def full(lm: Qwen2LM, text: torch.Tensor, visual: torch.Tensor, question: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([text, visual, lm.embed(torch.tensor([question]))[0]])[None]


def greedy_batch(runner: ModelRunner, cache: BatchKVCache, first: list[int], steps: int) -> list[list[int]]:
    seqs = [[t] for t in first]
    for _ in range(steps):
        logits = runner.decode(cache, [s[-1] for s in seqs])
        for row, s in enumerate(seqs):
            s.append(int(logits[row].argmax()))
    return seqs


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("chunk", [2048, 7])  # 7: the prefix in chunks, the questions one row at a time
def test_shared_prefix_equals_full_prefill(lm: Qwen2LM, prompt: tuple, mode: str, chunk: int) -> None:
    text, visual, questions = prompt
    dropout = MODES[mode]
    runner = ModelRunner(lm, chunk=chunk, question_tokens=chunk)
    prefix = runner.compute_prefix(text, visual, dropout)
    batch = runner.prefill(prefix, questions)
    decoded = greedy_batch(runner, batch.cache, [int(x.argmax()) for x in batch.logits], 5)
    for row, question in enumerate(questions):
        ref = lm.prefill(full(lm, text, visual, question), (P, N), dropout)
        assert (batch.logits[row] - ref.logits[0]).abs().max() <= 1e-4
        assert len(batch.stages[row]) == len(ref.stages)
        for ours, theirs in zip(batch.stages[row], ref.stages, strict=True):
            assert (ours.layer, ours.mode) == (theirs.layer, theirs.mode)
            assert torch.equal(ours.candidates, theirs.candidates)
            assert torch.equal(ours.kept, theirs.kept)
            if theirs.scores is not None:
                assert ours.scores is not None and torch.allclose(ours.scores, theirs.scores, atol=1e-6)
        alone = list(generate(lm, ref, SamplingParams(max_new_tokens=6), stop_ids=()))
        assert decoded[row] == alone
    if dropout is not None:  # the stages really dropped something
        assert [len(s.kept) for s in batch.stages[0]] == [int(N * r) for r in dropout.ratios[1:]]


def test_what_the_prefix_holds_per_mode(lm: Qwen2LM, prompt: tuple) -> None:
    text, visual, _ = prompt
    runner = ModelRunner(lm)
    off = runner.compute_prefix(text, visual, None)
    assert off.cache.lengths == [P + N] * 4 and not off.has_attention  # every layer is shared
    uniform = runner.compute_prefix(text, visual, MODES["uniform"])
    assert uniform.cache.lengths == [P + N, P + 24, P + 24, P + 12] and not uniform.has_attention
    u0a = runner.compute_prefix(text, visual, MODES["uniform0_attention"])
    # layers 0-2 shared (the uniform stage before layer 1 included); layer 3 follows the question
    assert u0a.cache.lengths == [P + N, P + 24, P + 24, 0]
    assert u0a.hidden is not None and u0a.hidden.shape == (P + 24, TINY.hidden_size)
    attention = runner.compute_prefix(text, visual, MODES["attention"])
    assert attention.cache.lengths == [P + N, 0, 0, 0]
    assert attention.keys is not None and attention.keys.shape == (2, P + N, TINY.head_dim)


def test_questions_read_the_prefix_in_place(lm: Qwen2LM, prompt: tuple) -> None:
    text, visual, questions = prompt
    runner = ModelRunner(lm)
    prefix = runner.compute_prefix(text, visual, None)
    before = [(prefix.cache.get(i)[0].data_ptr(), prefix.cache.get(i)[0].clone()) for i in range(4)]
    batch = runner.prefill(prefix, questions)
    runner.decode(batch.cache, [1, 2, 3])
    for i, (ptr, values) in enumerate(before):
        k, _ = prefix.cache.get(i)
        assert k.data_ptr() == ptr and torch.equal(k, values)  # untouched, same storage
    assert prefix.cache.lengths == [P + N] * 4
    # the rows hold only their own tokens (question + answer so far), never the prefix's
    assert [int(n) for n in batch.cache.own_lengths(0)] == [6, 10, 3]
    assert batch.cache.nbytes() <= 3 * 2 * 10 * prefix.cache.nbytes() // (P + N)  # capacity <= 2x longest
    with pytest.raises(RuntimeError, match="read-only"):
        prefix.cache.append(0, *prefix.cache.get(0))


def test_rows_leave_and_join_between_decode_steps(lm: Qwen2LM, prompt: tuple) -> None:
    text, visual, questions = prompt
    dropout = MODES["uniform0_attention"]
    runner = ModelRunner(lm)
    prefix = runner.compute_prefix(text, visual, dropout)

    def alone(question: list[int], steps: int) -> list[int]:
        b = runner.prefill(prefix, [question])
        return greedy_batch(runner, b.cache, [int(b.logits[0].argmax())], steps)[0]

    first = runner.prefill(prefix, questions[:2])
    seqs = greedy_batch(runner, first.cache, [int(x.argmax()) for x in first.logits], 2)
    first.cache.select([1])  # the first question finished (or was cancelled)
    late = runner.prefill(prefix, [questions[2]])  # a new question joins the running batch
    cache = BatchKVCache.concat([first.cache, late.cache])
    running = [seqs[1], [int(late.logits[0].argmax())]]
    for _ in range(3):
        logits = runner.decode(cache, [s[-1] for s in running])
        for row, s in enumerate(running):
            s.append(int(logits[row].argmax()))
    assert running[0] == alone(questions[1], 5)
    assert running[1] == alone(questions[2], 3)
    assert seqs[0] == alone(questions[0], 2)


def test_rows_of_different_prefixes_decode_together(lm: Qwen2LM, prompt: tuple) -> None:
    text, visual, questions = prompt
    runner = ModelRunner(lm)
    a = runner.compute_prefix(text, visual, None)
    b = runner.compute_prefix(text, visual[:20], MODES["uniform"])
    ba, bb = runner.prefill(a, questions[:1]), runner.prefill(b, questions[1:2])
    cache = BatchKVCache.concat([ba.cache, bb.cache])
    together = greedy_batch(runner, cache, [int(ba.logits[0].argmax()), int(bb.logits[0].argmax())], 4)
    ra = lm.prefill(full(lm, text, visual, questions[0]), (P, N))
    rb = lm.prefill(full(lm, text, visual[:20], questions[1]), (P, 20), MODES["uniform"])
    assert together[0] == list(generate(lm, ra, SamplingParams(max_new_tokens=5), stop_ids=()))
    assert together[1] == list(generate(lm, rb, SamplingParams(max_new_tokens=5), stop_ids=()))


@pytest.mark.parametrize("mode", ["off", "uniform"])
def test_evidence_attention_is_the_last_tokens_attention_at_one_layer(
    lm: Qwen2LM, prompt: tuple, mode: str
) -> None:
    text, visual, questions = prompt
    dropout = MODES[mode]
    runner = ModelRunner(lm)
    assert runner.evidence_layer == 3  # round(4 * 18 / 28): the model card's depth, scaled
    batch = runner.prefill(runner.compute_prefix(text, visual, dropout), questions)
    captured: list[torch.Tensor] = []
    hook = lm.model.layers[3].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        for row, question in enumerate(questions):
            captured.clear()
            ref = lm.prefill(full(lm, text, visual, question), (P, N), dropout)
            present = ref.stages[-1].kept if ref.stages else torch.arange(N)
            want = lm.visual_attention(captured[0][0], 3, P, len(present))
            found = batch.attention[row]
            assert found is not None
            indices, scores = found
            assert torch.equal(indices, present)
            assert torch.allclose(scores, want, atol=1e-6)
    finally:
        hook.remove()


def test_prefix_computation_can_be_cancelled(lm: Qwen2LM, prompt: tuple) -> None:
    text, visual, _ = prompt
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(PrefixCancelled):
        ModelRunner(lm, chunk=10).compute_prefix(text, visual, None, cancel=cancel)
    assert len(calls) == 2  # stopped after the second of six chunks


@pytest.mark.parametrize("score_elements", [1 << 26, 64])  # one chunk, and many small ones
def test_cascade_attention_equals_attention_over_concatenated_keys(
    monkeypatch: pytest.MonkeyPatch, score_elements: int
) -> None:
    monkeypatch.setattr(cascade, "SCORE_ELEMENTS", score_elements)
    gen = torch.Generator().manual_seed(0)
    b, h, hkv, t, d, ls = 3, 4, 2, 5, 16, 11
    q = torch.randn(b, h, t, d, generator=gen)
    own_k, own_v = torch.randn(b, hkv, t, d, generator=gen), torch.randn(b, hkv, t, d, generator=gen)
    pk, pv = torch.randn(1, hkv, ls, d, generator=gen), torch.randn(1, hkv, ls, d, generator=gen)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    o1, l1 = cascade.attention_lse(q, own_k, own_v, causal[None, None])
    o2, l2 = cascade.attention_shared(q, pk, pv)
    merged = cascade.merge(o1, l1, o2, l2)
    keys = torch.cat([pk.expand(b, -1, -1, -1), own_k], dim=2)
    values = torch.cat([pv.expand(b, -1, -1, -1), own_v], dim=2)
    mask = torch.cat([torch.ones(t, ls, dtype=torch.bool), causal], dim=1)
    want = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    assert torch.allclose(merged, want, atol=1e-5)
    assert torch.allclose(
        o2,
        F.scaled_dot_product_attention(
            q, pk.expand(b, -1, -1, -1), pv.expand(b, -1, -1, -1), enable_gqa=True
        ),
        atol=1e-5,
    )


def test_batch_cache_checks() -> None:
    open_prefix = KVCache(2)
    with pytest.raises(ValueError, match="frozen"):
        BatchKVCache(2, [open_prefix])
    cache = BatchKVCache(2, [None, None])
    with pytest.raises(ValueError, match="one valid count per row"):
        cache.set_valid([1, 2, 3])
