"""MLP projector from the vision width to the LLM width (the `mlp` of the release's tome16_mlp_hd64).

Released keys: `model.mm_projector.mlp.0.{weight,bias}`, `model.mm_projector.mlp.2.{weight,bias}`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class Projector(nn.Module):
    """Linear(vision_width -> hidden), exact GELU, Linear(hidden -> hidden)."""

    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(vision_width, hidden_size),
            nn.GELU(),  # erf GELU (nn.GELU's default), as in the release
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., vision_width] -> [..., hidden]
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        return self.mlp(x.to(first.weight.dtype))

    @torch.no_grad()
    def init_random(self, seed: int) -> Projector:
        """Deterministic weights from `seed`, for tiny presets and tests."""
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            if p.dim() == 1:
                values = 0.02 * torch.randn(p.shape, generator=g)
            else:
                values = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1])
            p.copy_(values.to(p.dtype))
        return self
