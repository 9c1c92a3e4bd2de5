"""attend(): SDPA path against a naive softmax reference; flash path on CUDA where installed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flashlive.model.attention import attend


def naive_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """Loop-level reference: query head h reads kv head h // (H // Hkv); causal = bottom-right."""
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // hkv)
            for i in range(tq):
                last = tk - tq + i if causal else tk - 1  # newest queries see the most keys
                s = torch.tensor([float(q[bi, hi, i] @ k[bi, kv, j]) / math.sqrt(d) for j in range(last + 1)])
                w = torch.softmax(s.double(), dim=0).float()
                out[bi, hi, i] = (w[:, None] * v[bi, kv, : last + 1]).sum(0)
    return out


def _qkv(b: int, h: int, hkv: int, tq: int, tk: int, d: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, tq, d, generator=g),
        torch.randn(b, hkv, tk, d, generator=g),
        torch.randn(b, hkv, tk, d, generator=g),
    )


@pytest.mark.parametrize(
    ("h", "hkv", "tq", "tk", "causal"),
    [
        (4, 4, 6, 6, False),
        (4, 4, 6, 6, True),
        (4, 2, 3, 7, True),  # decode-like: few new queries over a longer cache, GQA
        (4, 1, 1, 5, True),  # one new token sees every key
        (2, 2, 4, 9, False),
    ],
)
def test_sdpa_matches_naive(h: int, hkv: int, tq: int, tk: int, causal: bool) -> None:
    q, k, v = _qkv(2, h, hkv, tq, tk, 8)
    got = attend(q, k, v, causal=causal)
    assert got.shape == (2, h, tq, 8)
    torch.testing.assert_close(got, naive_attention(q, k, v, causal), atol=1e-5, rtol=1e-5)


def test_causal_short_query_is_bottom_right_aligned() -> None:
    # With 2 queries over 5 keys, the last query must see key 4 and the first must not: a top-left
    # mask (SDPA's is_causal) would hide keys 2..4 from both.
    q, k, v = _qkv(1, 1, 1, 2, 5, 4, seed=3)
    v = torch.zeros_like(v)
    v[0, 0, 4] = 1.0  # only the newest key carries a value
    out = attend(q, k, v, causal=True)
    assert out[0, 0, 0].abs().max() == 0.0  # query 0 sees keys 0..3
    assert out[0, 0, 1].abs().max() > 0.0  # query 1 sees keys 0..4


def test_bad_shapes_are_rejected() -> None:
    q, k, v = _qkv(1, 3, 2, 2, 2, 4)
    with pytest.raises(ValueError, match="multiple"):
        attend(q, k, v)
    q, k, v = _qkv(1, 2, 2, 5, 3, 4)
    with pytest.raises(ValueError, match="at least as many keys"):
        attend(q, k, v, causal=True)
    with pytest.raises(ValueError, match="4-d"):
        attend(q[0], k[0], v[0])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_matches_naive(dtype: torch.dtype) -> None:
    # Runs the flash-attn path when it is installed, SDPA's CUDA kernels otherwise.
    q, k, v = _qkv(2, 4, 2, 3, 7, 64)
    ref = naive_attention(q, k, v, causal=True)
    got = attend(q.cuda().to(dtype), k.cuda().to(dtype), v.cuda().to(dtype), causal=True)
    torch.testing.assert_close(got.float().cpu(), ref, atol=2e-2, rtol=2e-2)
