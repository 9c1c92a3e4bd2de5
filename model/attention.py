"""Scaled dot-product attention: flash-attn on CUDA when installed, PyTorch SDPA everywhere else.

flash-attn is an optional extra (`pip install flashlive[gpu]`); it has no CPU build, so it is imported
lazily and any failure to import it just means SDPA is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


def _import_flash() -> Callable[..., Any] | None:
    try:  # optional: only the `gpu` extra installs it
        from flash_attn import flash_attn_func

        return flash_attn_func
    except Exception as exc:  # ImportError, or a broken CUDA build (OSError, undefined symbols)
        log.debug("flash-attn not usable, attention uses PyTorch SDPA: %s", exc)
        return None


_flash_attn_func = _import_flash()

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_FLASH_MAX_HEAD_DIM = 256


def flash_available() -> bool:
    return _flash_attn_func is not None


def _use_flash(q: Tensor) -> bool:
    return (
        _flash_attn_func is not None
        and q.is_cuda
        and q.dtype in _FLASH_DTYPES
        and q.shape[-1] <= _FLASH_MAX_HEAD_DIM
    )


def _check(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attend expects 4-d tensors [B, H, T, D]; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    b, h, tq, d = q.shape
    bk, hkv, tk, dk = k.shape
    if b != bk or d != dk:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head size")
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hkv})")
    if causal and tq > tk:
        raise ValueError(f"causal attention needs at least as many keys as queries; got {tq} > {tk}")


def _bottom_right_causal_mask(tq: int, tk: int, device: torch.device) -> Tensor:
    # Query i sits at absolute position tk - tq + i (the queries are the newest tokens), so it may see
    # keys 0 .. tk - tq + i. SDPA's is_causal aligns to the top-left instead, hence the explicit mask.
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def attend(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> Tensor:
    """Softmax attention with scale 1/sqrt(D).

    q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D] with Hkv dividing H (query head h reads kv head
    h // (H // Hkv), the grouping flash-attn and Qwen2 use). Returns [B, H, Tq, D].
    With `causal` and Tq < Tk the mask is bottom-right aligned: query i sees keys up to Tk - Tq + i.
    """
    _check(q, k, v, causal)
    h, tq = q.shape[1], q.shape[2]
    hkv, tk = k.shape[1], k.shape[2]

    if _use_flash(q):
        assert _flash_attn_func is not None
        # flash-attn wants [B, T, H, D], handles GQA itself and aligns causal masks bottom-right.
        out = _flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0, causal=causal
        )
        return out.transpose(1, 2)

    gqa = hkv != h  # SDPA reads grouped kv heads in place: no copy of the (possibly long) cache
    if causal and tq == 1:
        causal = False  # the newest token sees every key
    if causal and tq != tk:
        mask = _bottom_right_causal_mask(tq, tk, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
