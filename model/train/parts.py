"""The model as training sees it: tower, projector and LLM in one module, their initial weights, and
the path from uint8 clips to the LLM's visual embeddings (normalise, tower, HiCo merge, projector).

The same tower weights run at any frame size (the position table is interpolated), so a stage at
448 builds its tower for 448 and loads the weights the 224 stages left.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from flashlive.model.config import FlashConfig
from flashlive.model.llm import Qwen2LM
from flashlive.model.merge import hico_merge
from flashlive.model.preprocess import normalisation_table
from flashlive.model.projector import Projector
from flashlive.model.vision import VisionTower

log = logging.getLogger(__name__)

PART_NAMES = ("tower", "projector", "llm")
INIT_STD = 0.02
# Output layers of residual branches: their init shrinks with depth (GPT-2's rule), so a deep stack
# starts near the identity.
RESIDUAL_OUTPUTS = ("attn.proj.weight", "mlp.fc2.weight", "o_proj.weight", "down_proj.weight")


class Parts(nn.Module):
    """VideoChat-Flash's three trained parts; `tower` is built for frames of `image_size`."""

    def __init__(self, cfg: FlashConfig, image_size: int | None = None) -> None:
        super().__init__()
        vision = cfg.vision if image_size is None else replace(cfg.vision, image_size=image_size)
        self.cfg = replace(cfg, vision=vision)
        self.tower = VisionTower(vision)
        self.projector = Projector(vision.width, cfg.llm.hidden_size)
        self.llm = Qwen2LM(cfg.llm)

    @property
    def device(self) -> torch.device:
        return self.llm.device

    def part(self, name: str) -> nn.Module:
        if name not in PART_NAMES:
            raise ValueError(f"unknown part {name!r}; parts: {', '.join(PART_NAMES)}")
        module = getattr(self, name)
        assert isinstance(module, nn.Module)
        return module

    def train_only(self, names: tuple[str, ...] | set[str]) -> list[nn.Parameter]:
        """Freeze every part not named; return the parameters of the named ones."""
        params: list[nn.Parameter] = []
        for name in PART_NAMES:
            on = name in names
            for p in self.part(name).parameters():
                p.requires_grad_(on)
                if on:
                    params.append(p)
        return params

    def encode(self, clips: Tensor) -> Tensor:
        """uint8 clips [N, T, S, S, 3] (already resized) -> merged tower tokens [N, tokens, width].

        Gradients flow when the tower has trainable parameters and grad mode is on.
        """
        merge = self.cfg.merge
        features = self.tower(pixels(clips.to(self.device)))  # [N, P, C]
        merged, _ = hico_merge(features, merge.tokens_per_clip, metric_chunks=merge.metric_chunks)
        return merged

    def project(self, tokens: Tensor) -> Tensor:
        """Merged tokens [N, tokens, width] -> the LLM's visual embeddings [N * tokens, hidden]."""
        return self.projector(tokens).reshape(-1, self.cfg.llm.hidden_size)


def pixels(clips: Tensor) -> Tensor:
    """uint8 [N, T, S, S, 3] -> normalised float32 [N, 3, T, S, S], on the clips' device, exactly as
    `preprocess_clips` normalises (a table look-up per channel)."""
    table = normalisation_table().to(clips.device)
    index = clips.long().permute(0, 4, 1, 2, 3)  # [N, 3, T, S, S]
    return torch.stack([table[c][index[:, c]] for c in range(3)], dim=1)


@torch.no_grad()
def init_weights(module: nn.Module, seed: int, *, layers: int) -> None:
    """Fresh weights for training from scratch: normal(0, 0.02) matrices (residual outputs scaled by
    1/sqrt(2 * layers)), zero biases, unit norm gains. Drawn on the CPU from `seed`, so every device
    starts from the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() == 1:
            is_gain = name.endswith("weight") and "norm" in name
            values = torch.ones(p.shape) if is_gain else torch.zeros(p.shape)
        else:
            std = INIT_STD / math.sqrt(2 * layers) if name.endswith(RESIDUAL_OUTPUTS) else INIT_STD
            values = torch.empty(p.shape).normal_(0.0, std, generator=gen)
        p.copy_(values.to(p.device, p.dtype))


def fresh_parts(cfg: FlashConfig, seed: int, image_size: int | None = None) -> Parts:
    """Parts with freshly initialised weights, each part from its own seed."""
    parts = Parts(cfg, image_size)
    init_weights(parts.tower, seed * 3 + 0, layers=cfg.vision.layers)
    init_weights(parts.projector, seed * 3 + 1, layers=1)
    init_weights(parts.llm, seed * 3 + 2, layers=cfg.llm.num_hidden_layers)
    return parts
