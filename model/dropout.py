"""Progressive visual dropout: which visual tokens survive each stage (prefill only).

Semantics follow the public VideoChat-Flash release (`Qwen2Model_Flash.flash_rank_drop` in
llava-train_videochat/llava/model/language_model/modeling_qwen2_flash.py):

- Stage s runs after layer `layers[s] - 1`, before layer `layers[s]`.
- Counts are relative to the ORIGINAL number of visual tokens N: stage s sees int(N * ratios[s])
  tokens and keeps int(N * ratios[s + 1]) of them (Python float multiply, truncated).
- Stage modes: `uniform` and `attention` apply to every stage; `uniform0_attention` makes stage 0
  uniform and the rest attention; `uniform1_attention` makes stages 0 and 1 uniform and the rest
  attention.
- Uniform keeps `torch.linspace(0, n - 1, k, dtype=torch.long)`.
- Attention keeps the top-k of the last prompt token's attention to the visual tokens (computed with
  layer `layers[s]`'s input norm, q/k projections and rotary embedding; softmax in fp32 over ALL keys,
  then averaged over all query heads, then the visual columns are taken), sorted back to temporal order.

This module holds the pure selection functions; `flashlive.model.llm` computes the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flashlive.model.config import DropoutConfig
from flashlive.model.errors import DropoutError


def stage_modes(mode: str, num_stages: int) -> list[str]:
    """The selection rule ("uniform" or "attention") of each stage for a `DropoutConfig.mode`."""
    uniform_stages = {"uniform": num_stages, "attention": 0, "uniform0_attention": 1, "uniform1_attention": 2}
    if mode not in uniform_stages:
        raise DropoutError(f"unknown dropout mode {mode!r}")
    n_uniform = uniform_stages[mode]
    return ["uniform" if s < n_uniform else "attention" for s in range(num_stages)]


def stage_counts(num_visual: int, ratios: tuple[float, ...]) -> list[int]:
    """Visual tokens present before stage 0, then after each stage: [int(N * r) for r in ratios]."""
    return [int(num_visual * r) for r in ratios]


def check_dropout(dropout: DropoutConfig, num_layers: int) -> None:
    """Reject settings the release's code would mishandle, with a message saying why."""
    if dropout.ratios[0] != 1.0:
        raise DropoutError(
            "dropout ratios[0] must be 1 (the share of visual tokens the first layer sees), "
            f"got {dropout.ratios[0]}"
        )
    if any(b > a for a, b in zip(dropout.ratios, dropout.ratios[1:], strict=False)):
        raise DropoutError(
            f"dropout ratios must not increase from stage to stage, got {list(dropout.ratios)}"
        )
    if dropout.layers[-1] >= num_layers:
        raise DropoutError(
            f"dropout layer {dropout.layers[-1]} does not exist: the LLM has layers 0..{num_layers - 1}"
            " and a drop happens before the layer named"
        )


def uniform_keep(n: int, k: int) -> Tensor:
    """Evenly spaced indices of k tokens out of n (the release's integer rounding)."""
    return torch.linspace(0, n - 1, k, dtype=torch.long)


def attention_keep(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores, in increasing (temporal) order. scores: [n]."""
    return scores.topk(k).indices.sort().values.cpu()


def last_token_visual_attention(
    q_last: Tensor, keys: Tensor | Sequence[Tensor], start: int, count: int
) -> Tensor:
    """Attention of the last token to the visual tokens, averaged over query heads.

    q_last: [H, D] (rotary applied), keys: [Hkv, T, D] (rotary applied; the last token is key T-1, so
    causality masks nothing), or a sequence of such tensors that together make the T keys in order
    (a shared prefix's keys and a question's own, without concatenating them). Returns [count]
    float32: softmax over all T keys, mean over heads, then the columns start..start+count. The logits
    are formed in the compute dtype and the softmax in fp32 cast back to it, as the release does, so
    bf16 runs choose the same tokens it would.
    """
    parts = [keys] if isinstance(keys, Tensor) else list(keys)
    heads, dim = q_last.shape
    hkv = parts[0].shape[0]
    qg = q_last.view(hkv, heads // hkv, dim)  # query head h reads kv head h // groups
    logits = torch.cat([torch.einsum("kgd,ktd->kgt", qg, k) for k in parts], dim=-1) / math.sqrt(dim)
    probs = torch.softmax(logits.reshape(heads, -1), dim=-1, dtype=torch.float32).to(q_last.dtype)
    return probs.mean(dim=0)[start : start + count].float()


@dataclass(frozen=True)
class DropoutPlan:
    """What progressive dropout does to N visual tokens in a model of `num_layers` layers.

    Stage s runs before layer `layers[s]` in mode `modes[s]`, taking `counts[s]` tokens to
    `counts[s + 1]`. Uniform stages depend only on N; attention stages need the question. In every
    mode the uniform stages come first, so the layers before the first attention stage
    (`shared_layers`) can run without the question: that is what a shared visual prefix computes.
    """

    layers: tuple[int, ...]
    modes: tuple[str, ...]
    counts: tuple[int, ...]
    num_layers: int

    @classmethod
    def build(cls, dropout: DropoutConfig | None, num_visual: int, num_layers: int) -> DropoutPlan:
        if dropout is None or num_visual == 0:
            return cls((), (), (num_visual,), num_layers)
        check_dropout(dropout, num_layers)
        modes = stage_modes(dropout.mode, len(dropout.layers))
        counts = stage_counts(num_visual, dropout.ratios)
        return cls(tuple(dropout.layers), tuple(modes), tuple(counts), num_layers)

    @property
    def shared_layers(self) -> int:
        """Layers [0, shared_layers) do not depend on the question: up to the first attention stage."""
        for layer, mode in zip(self.layers, self.modes, strict=True):
            if mode == "attention":
                return layer
        return self.num_layers

    def stage_at(self, layer: int) -> int | None:
        """The stage that runs before `layer`, if any."""
        return self.layers.index(layer) if layer in self.layers else None

    def visual_at(self, layer: int) -> int:
        """Visual tokens present in `layer`."""
        done = sum(1 for k in self.layers if k <= layer)
        return self.counts[done]
