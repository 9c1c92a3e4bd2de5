"""UMT-L video ViT, the clip encoder of VideoChat-Flash.

Module and parameter names follow the release (`encoder.patch_embed.proj`, `encoder.blocks.N.attn.qkv`,
`encoder.vision_layernorm`, ...), so a released state dict loads with strict key matching once the
`model.vision_tower.vision_tower.` prefix is stripped. Numbers are in ../shared/DESIGN.md §2.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attend
from .config import VisionConfig

log = logging.getLogger(__name__)


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """The fixed transformer sinusoid table over a flat position index: [n_position, dim] float32.

    Column 2i holds sin(p / 10000^(2i/dim)) and column 2i+1 the matching cos (interleaved, not split).
    Computed in float64 and rounded once, as the release does with numpy.
    """
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)


def position_table(frames: int, grid: int, dim: int, base_frames: int = 4, base_grid: int = 14) -> Tensor:
    """Position embeddings for a clip of `frames` frames on a `grid` x `grid` patch grid: [T*g*g, dim].

    The table is defined for base_frames x base_grid x base_grid positions (the pre-training shape) and
    resized: space first (bicubic per frame), then time (linear per spatial position), as the release
    does. A single frame uses the table of one frame (the release's image table), not a time-resized
    clip table.
    """
    if frames < 1 or grid < 1:
        raise ValueError(f"position table needs frames >= 1 and grid >= 1, got {frames}, {grid}")
    t0 = 1 if frames == 1 else base_frames
    table = sinusoid_table(t0 * base_grid * base_grid, dim)  # [t0*bg*bg, C]
    if grid != base_grid:
        t = table.reshape(t0, base_grid, base_grid, dim).permute(0, 3, 1, 2)  # [t0, C, bg, bg]
        t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
        table = t.permute(0, 2, 3, 1).reshape(-1, dim)  # [t0*g*g, C]
    if frames != t0:
        t = table.reshape(t0, grid * grid, dim).permute(1, 2, 0)  # [g*g, C, t0]
        t = F.interpolate(t, size=frames, mode="linear", align_corners=False)  # [g*g, C, T]
        table = t.permute(2, 0, 1).reshape(-1, dim)  # [T*g*g, C]
    return table.contiguous()


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        # Tubelet size 1: every frame is patchified on its own, time mixing happens only in attention.
        self.proj = nn.Conv3d(3, cfg.width, kernel_size=(1, p, p), stride=(1, p, p))

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, 3, T, S, S] -> [B, T*g*g, C], tokens in (t, h, w) order
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        # The release learns biases for q and v only; k's bias is fixed at zero.
        self.q_bias = nn.Parameter(torch.zeros(cfg.width))
        self.v_bias = nn.Parameter(torch.zeros(cfg.width))
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, N, C]
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3C]
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [B, H, N, D]
        out = attend(q, k, v)  # [B, H, N, D]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.act = nn.GELU()  # exact (erf) GELU, nn.GELU's default, as in the release
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block without layer-scale."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.vision_layernorm = nn.LayerNorm(cfg.width, eps=cfg.final_norm_eps)


class VisionTower(nn.Module):
    """forward([B, 3, T, S, S]) -> [B, T*(S/16)^2, width]; each batch row is one clip.

    Attention is joint over all T*(S/16)^2 tokens of a clip. Only `cfg.layers` blocks exist (23 for
    the release, which reads the output of layer -2 of 24), followed by `vision_layernorm`.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not a multiple of heads {cfg.heads}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        # Computed, never stored: the checkpoint holds no position table. Keyed by (frames, device, dtype).
        self._pos_cache: dict[tuple[int, str, torch.dtype], Tensor] = {}

    def positions(self, frames: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (frames, str(device), dtype)
        table = self._pos_cache.get(key)
        if table is None:
            c = self.cfg
            table = position_table(frames, c.grid, c.width, c.base_frames, c.base_grid).to(device, dtype)
            self._pos_cache[key] = table
        return table

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, 3, T, S, S]
        c = self.cfg
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"vision tower expects clips as [B, 3, T, S, S], got {tuple(x.shape)}")
        if x.shape[-1] != c.image_size or x.shape[-2] != c.image_size:
            raise ValueError(
                f"vision tower is configured for {c.image_size}x{c.image_size} frames, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        weight = self.encoder.patch_embed.proj.weight
        x = x.to(weight.device, weight.dtype)
        frames = x.shape[2]
        h = self.encoder.patch_embed(x)  # [B, N, C], N = T*g*g
        h = h + self.positions(frames, h.device, h.dtype)
        for block in self.encoder.blocks:
            h = block(h)
        return self.encoder.vision_layernorm(h)  # [B, N, C]

    @torch.no_grad()
    def init_random(self, seed: int) -> VisionTower:
        """Fill every weight from `seed` (same seed, same weights on any machine), for tiny presets.

        Biases and norm affines get small random values too, so that tests exercise every parameter.
        """
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 1 and name.endswith(".weight"):  # LayerNorm scales
                values = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() == 1:
                values = 0.02 * torch.randn(p.shape, generator=g)
            else:
                fan_in = math.prod(p.shape[1:])
                values = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
            p.copy_(values.to(p.dtype))
        return self
