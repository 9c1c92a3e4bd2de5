"""Attention over two key sets merged by their log-sum-exp: a shared prefix read in place, plus own keys.

A sequence that continues a shared visual prefix attends to [prefix keys | own keys]. Stacking the
prefix into every row would copy it per question and per decode step; instead each part is attended
separately and the two softmaxes are merged exactly (the "cascade" or "split-K" trick):

    out = (o1 * e^(lse1 - m) + o2 * e^(lse2 - m)) / (e^(lse1 - m) + e^(lse2 - m)),  m = max(lse1, lse2)

The prefix part reads the prefix's K/V once for all rows of a batch: rows are folded into the query
dimension, and query heads are grouped by the KV head they read (GQA) so no KV head is repeated.
Plain torch (no fused kernel returns the log-sum-exp portably); scores are formed in chunks of query
rows so memory stays bounded for long prefixes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# upper bound on one chunk's score matrix, in elements (fp32: 256 MiB)
SCORE_ELEMENTS = 1 << 26


def attention_lse(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Softmax attention that also returns the log-sum-exp of the scores.

    q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D] with Hkv dividing H (query head h reads kv head
    h // (H // Hkv)); mask: bool, broadcastable to [B, 1, Tq, Tk], True where a key may be seen.
    Returns out [B, H, Tq, D] in q's dtype and lse [B, H, Tq] float32. Every query must see a key.
    """
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = h // hkv
    scale = 1.0 / math.sqrt(d)
    # [B, Hkv, G*Tq, D]: the G query heads of one kv head side by side, so k and v are read in place
    qg = q.reshape(b, hkv, g * tq, d)
    if mask is not None:
        mask = mask.expand(b, 1, tq, tk).unsqueeze(2).expand(b, 1, g, tq, tk).reshape(b, 1, g * tq, tk)
    rows = max(1, SCORE_ELEMENTS // max(1, b * hkv * tk))
    outs, lses = [], []
    for r in range(0, g * tq, rows):
        # in place where possible: for long prefixes these score blocks are the memory traffic
        scores = torch.matmul(qg[:, :, r : r + rows] * scale, k.transpose(-1, -2)).float()
        if mask is not None:
            scores.masked_fill_(~mask[:, :, r : r + rows], float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # [B, Hkv, rows]
        probs = scores.sub_(lse.unsqueeze(-1)).exp_()
        outs.append(torch.matmul(probs.to(v.dtype), v))
        lses.append(lse)
    out = torch.cat(outs, dim=2).reshape(b, h, tq, d)
    return out, torch.cat(lses, dim=2).reshape(b, h, tq)


def attention_shared(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Every row of q attends to all of one shared k, v: [1, Hkv, Tk, D] (no mask, no copy of k/v).

    q: [B, H, Tq, D] -> out [B, H, Tq, D], lse [B, H, Tq].
    """
    b, h, tq, d = q.shape
    folded = q.transpose(0, 1).reshape(1, h, b * tq, d)  # rows become extra queries of one sequence
    out, lse = attention_lse(folded, k, v)
    return out.reshape(h, b, tq, d).transpose(0, 1), lse.reshape(h, b, tq).transpose(0, 1)


def merge(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> Tensor:
    """Combine two partial attentions over disjoint key sets. o: [B, H, T, D]; lse: [B, H, T]."""
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
    total = (w1 + w2).unsqueeze(-1)
    out = (o1.float() * w1.unsqueeze(-1) + o2.float() * w2.unsqueeze(-1)) / total
    return out.to(o1.dtype)
