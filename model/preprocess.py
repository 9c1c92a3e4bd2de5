"""Frame pre-processing for the vision tower: uint8 RGB clips -> normalised float pixels.

The release runs transformers' `resize` with PIL bicubic on uint8 frames (PIL filters with antialiasing
when shrinking and returns uint8), then /255 and ImageNet mean/std. PIL is not a dependency here:
torch's uint8 antialiased bicubic follows PIL's integer algorithm (checked against Pillow 13: >99% of
pixels equal, the rest within 1 level when shrinking, 2 when enlarging), while a float resize differs
by up to ~20 levels next to clipped edges.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_frames(frames: Tensor, image_size: int) -> Tensor:
    """Bicubic resize straight to image_size x image_size (no crop, aspect not kept), uint8 in and out.

    frames: [F, 3, H, W] uint8 on the CPU -> [F, 3, S, S] uint8.
    """
    if frames.shape[-2:] == (image_size, image_size):
        return frames
    # channels_last takes torch's vectorised uint8 path, which is the one written to match PIL.
    frames = frames.contiguous(memory_format=torch.channels_last)
    return F.interpolate(
        frames, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False
    )


def preprocess_clips(frames: np.ndarray | Tensor, image_size: int) -> Tensor:
    """uint8 RGB clips [N, T, H, W, 3] -> float32 [N, 3, T, S, S] on the CPU, ready for VisionTower."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.dim() != 5 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB clips as [N, T, H, W, 3], got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels (0-255), got {t.dtype}")
    n, nt, h, w, _ = t.shape
    if min(n, nt, h, w) == 0:
        raise ValueError(f"empty clip batch: shape {tuple(t.shape)}")
    flat = t.cpu().reshape(n * nt, h, w, 3).permute(0, 3, 1, 2)  # [F, 3, H, W]
    resized = resize_frames(flat, image_size).to(torch.float32)  # [F, 3, S, S], still 0-255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = (resized / 255.0 - mean) / std
    # [N*T, 3, S, S] -> [N, 3, T, S, S]
    return pixels.reshape(n, nt, 3, image_size, image_size).permute(0, 2, 1, 3, 4).contiguous()
