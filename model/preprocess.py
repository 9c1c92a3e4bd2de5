"""Frame pre-processing for the vision tower: uint8 RGB clips -> normalised float pixels.

The release (`umt_encoder.py::UMTImageProcessor.preprocess`, in the training tree and the HF remote
code alike) runs transformers' `resize` on each uint8 frame, which hands it to Pillow:
`Image.resize((S, S), BICUBIC)` (antialiased when shrinking, uint8 out), then `rescale` (x * (1/255)
in float64, cast to float32) and `normalize` ((x - mean) / std in float32). We do the same with Pillow
directly, and normalise through a 256-entry table per channel computed with those same operations, so
the pixels are bit-identical to the release's (tests/test_vision.py checks against transformers).

Frames already on a GPU cannot go through Pillow without a round trip to the CPU; for those (and only
those) `resize_frames_torch` uses torch's antialiased bicubic in Pillow's two passes (width, then height,
rounded to whole levels after each), which differs on ~0.03 % of pixels by one level. Cost of each:
bench/preprocess.py.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@cache
def normalisation_table() -> Tensor:
    """[3, 256] float32: each uint8 level normalised per channel, computed as the release computes it."""
    levels = np.arange(256, dtype=np.uint8)
    scaled = (levels.astype(np.float64) * (1 / 255)).astype(np.float32)  # transformers' rescale
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None]
    return torch.from_numpy((scaled[None, :] - mean) / std)  # float32 throughout, as in normalize


def resize_frames_pil(frames: np.ndarray, image_size: int) -> np.ndarray:
    """Pillow bicubic straight to image_size x image_size (no crop, aspect not kept).

    frames: [F, H, W, 3] uint8 -> [F, S, S, 3] uint8.
    """
    if frames.shape[1:3] == (image_size, image_size):
        return frames
    out = np.empty((frames.shape[0], image_size, image_size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
        out[i] = np.asarray(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return out


def resize_frames_torch(frames: Tensor, image_size: int) -> Tensor:
    """Antialiased bicubic in torch, for frames already on a GPU, as Pillow does it.

    frames: [F, 3, H, W] uint8 -> [F, 3, S, S] uint8, on the frames' device.

    Pillow resizes in two passes, width then height, rounding and clipping to uint8 after each; doing
    the same in fp32 differs from Pillow on ~0.03 % of pixels by one level (torch's one-pass uint8
    kernel: ~0.4 % by up to two), and CUDA has no uint8 kernel for it anyway (torch 2.11).
    """
    if frames.shape[-2:] == (image_size, image_size):
        return frames
    x = frames.float()
    for size in ((x.shape[-2], image_size), (image_size, image_size)):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x.to(torch.uint8)


def _check(t: np.ndarray | Tensor, image_size: int) -> None:
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if t.ndim != 5 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB clips as [N, T, H, W, 3], got shape {tuple(t.shape)}")
    if t.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"expected uint8 pixels (0-255), got {t.dtype}")
    if min(t.shape) == 0:
        raise ValueError(f"empty clip batch: shape {tuple(t.shape)}")


def preprocess_clips(frames: np.ndarray | Tensor, image_size: int) -> Tensor:
    """uint8 RGB clips [N, T, H, W, 3] -> float32 [N, 3, T, S, S], ready for VisionTower.

    NumPy arrays and CPU tensors go through Pillow (the release's resize) and come back on the CPU;
    tensors on a GPU are resized there by torch and stay there.
    """
    _check(frames, image_size)
    n, nt, h, w, _ = frames.shape
    if isinstance(frames, Tensor) and frames.device.type != "cpu":
        flat = frames.reshape(n * nt, h, w, 3).permute(0, 3, 1, 2)  # [F, 3, H, W]
        resized = resize_frames_torch(flat, image_size).reshape(n, nt, 3, image_size, image_size)
        table = normalisation_table().to(resized.device)
        out = torch.empty((n, 3, nt, image_size, image_size), dtype=torch.float32, device=resized.device)
        for c in range(3):
            out[:, c] = table[c][resized[:, :, c].long()]
        return out
    array = frames.numpy() if isinstance(frames, Tensor) else frames
    hwc = resize_frames_pil(array.reshape(n * nt, h, w, 3), image_size)  # [F, S, S, 3]
    hwc = hwc.reshape(n, nt, image_size, image_size, 3)
    table_np = normalisation_table().numpy()
    pixels = np.empty((n, 3, nt, image_size, image_size), dtype=np.float32)
    for c in range(3):  # a table look-up per channel, straight into [N, 3, T, S, S]
        np.take(table_np[c], hwc[..., c], out=pixels[:, c])
    return torch.from_numpy(pixels)
