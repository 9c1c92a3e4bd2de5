"""HiCo clip-level token merging ("tome16_mlp_hd64"): [B, P, C] -> [B, target, C], one clip per row.

Bipartite soft matching (ToMe) repeated until `target` tokens remain. The output order is part of the
model's behaviour (the LLM was trained on it), so every index operation below follows the release:
argsort of the best-match scores in descending order, unmerged A tokens gathered in that order, then
the B tokens in their original order.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def merge_schedule(p: int, target: int) -> list[int]:
    """Token counts after each merge step, starting with p (3136 -> [3136, 1568, ..., 98, 64]).

    A step merges r = p // 2 tokens while more than half would still have to go, else the remainder.
    """
    if target < 1:
        raise ValueError(f"merge target must be at least 1 token, got {target}")
    if p < target:
        raise ValueError(f"cannot merge {p} tokens up to {target}: merging only removes tokens")
    counts = [p]
    while p != target:
        r = p // 2 if p - target > p // 2 else p - target
        p -= r
        counts.append(p)
    return counts


def _merge_step(x: Tensor, size: Tensor, r: int, metric_chunks: int) -> tuple[Tensor, Tensor]:
    # x: [B, P, C] (size-weighted means), size: [B, P, 1]
    b, p, c = x.shape
    with torch.no_grad():
        # hd64 metric: the C features as `metric_chunks` chunks of C/chunks, averaged chunk-wise
        # (the release reshapes to [B, P, heads, C/heads] and means over heads; heads = 16).
        metric = x.reshape(b, p, metric_chunks, c // metric_chunks).mean(2)  # [B, P, C/chunks]
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, bb = metric[:, ::2], metric[:, 1::2]  # A: even positions, B: odd positions
        scores = a @ bb.transpose(-1, -2)  # [B, Pa, Pb]
        node_max, node_idx = scores.max(dim=-1)  # best B for each A
        order = node_max.argsort(dim=-1, descending=True)[..., None]  # [B, Pa, 1]
        unm_idx = order[:, r:]  # A tokens that stay, best-scoring first
        src_idx = order[:, :r]  # A tokens merged away
        dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)  # their B partners

    def merge(t: Tensor) -> Tensor:
        # t: [B, P, D] -> [B, P - r, D]; sums merged A tokens into their B partners
        src, dst = t[:, ::2], t[:, 1::2]
        d = t.shape[-1]
        unm = src.gather(dim=1, index=unm_idx.expand(-1, -1, d))
        moved = src.gather(dim=1, index=src_idx.expand(-1, -1, d))
        dst = dst.scatter_add(1, dst_idx.expand(-1, -1, d), moved)
        return torch.cat([unm, dst], dim=1)

    # Size-weighted average: sum x*size and size over each merged group, then divide.
    total = merge(x * size)
    size = merge(size)
    return total / size, size


def hico_merge(
    x: Tensor, target: int, size: Tensor | None = None, metric_chunks: int = 16
) -> tuple[Tensor, Tensor]:
    """Merge each clip's tokens down to `target`: x [B, P, C] -> ([B, target, C], sizes [B, target, 1]).

    `size` ([B, P, 1]) gives how many original tokens each input token already stands for (ones when
    None); output sizes sum to the input sizes' sum per clip.
    """
    if x.dim() != 3:
        raise ValueError(f"hico_merge expects tokens as [B, P, C], got {tuple(x.shape)}")
    b, p, c = x.shape
    if metric_chunks < 1 or c % metric_chunks:
        raise ValueError(f"token width {c} is not divisible into {metric_chunks} metric chunks")
    if size is None:
        size = torch.ones_like(x[..., :1])
    elif size.shape != (b, p, 1):
        raise ValueError(f"size must be [B, P, 1] = {[b, p, 1]}, got {list(size.shape)}")
    counts = merge_schedule(p, target)
    for before, after in itertools.pairwise(counts):
        x, size = _merge_step(x, size, before - after, metric_chunks)
    return x, size
