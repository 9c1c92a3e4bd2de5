"""UMT-L tower (positions, keys, forward against a loop-level reference), projector and pre-processing."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from flashlive.model.config import VisionConfig, get_preset
from flashlive.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_clips
from flashlive.model.projector import Projector
from flashlive.model.vision import VisionTower, position_table, sinusoid_table

TINY = get_preset("tiny").vision


# ---------------------------------------------------------------- position table


def test_sinusoid_table_at_224_follows_the_formula() -> None:
    table = position_table(frames=4, grid=14, dim=1024)
    assert table.shape == (784, 1024)
    for pos in (0, 1, 195, 196, 500, 783):  # the flat (t, h, w) index runs across frames
        for i in (0, 1, 2, 3, 100, 101, 1022, 1023):
            angle = pos / 10000 ** (2 * (i // 2) / 1024)
            want = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(float(table[pos, i]) - want) < 1e-6, (pos, i)


def _cubic_matrix(n_out: int, n_in: int) -> Tensor:
    """Bicubic resize (Keys a = -0.75, half-pixel centres, edge clamp) as an [n_out, n_in] matrix."""
    a = -0.75

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            m[i, min(max(tap, 0), n_in - 1)] += kernel(src - tap)
    return m


def _linear_matrix(n_out: int, n_in: int) -> Tensor:
    """Linear resize (half-pixel centres, clamped at 0) as an [n_out, n_in] matrix."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = math.floor(src)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[i, i0] += 1 - lam
        m[i, i1] += lam
    return m


def test_position_table_at_448_is_the_224_table_resized_bicubic_per_frame() -> None:
    dim = 1024
    table = position_table(frames=4, grid=28, dim=dim)
    assert table.shape == (3136, dim)
    base = sinusoid_table(784, dim).double().reshape(4, 14, 14, dim)
    w = _cubic_matrix(28, 14)
    want = torch.einsum("ih,thwc,jw->tijc", w, base, w).reshape(3136, dim)
    torch.testing.assert_close(table.double(), want, atol=1e-5, rtol=0)


def test_position_table_for_other_frame_counts_resizes_time_linearly() -> None:
    dim = 32
    table = position_table(frames=8, grid=14, dim=dim)
    assert table.shape == (8 * 196, dim)
    base = sinusoid_table(784, dim).double().reshape(4, 196, dim)
    want = torch.einsum("st,tpc->spc", _linear_matrix(8, 4), base).reshape(-1, dim)
    torch.testing.assert_close(table.double(), want, atol=1e-6, rtol=0)


def test_single_frame_uses_the_one_frame_table() -> None:
    # The release encodes a lone image with its own 196-position table, not a time-resized clip table.
    torch.testing.assert_close(position_table(1, 14, 64), sinusoid_table(784, 64)[:196])
    assert position_table(1, 28, 64).shape == (784, 64)


# ---------------------------------------------------------------- tower structure


def _expected_keys(layers: int) -> set[str]:
    keys = {"encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias"}
    keys |= {"encoder.vision_layernorm.weight", "encoder.vision_layernorm.bias"}
    for i in range(layers):
        p = f"encoder.blocks.{i}."
        keys |= {p + s for s in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")}
        keys |= {p + s for s in ("attn.qkv.weight", "attn.q_bias", "attn.v_bias")}
        keys |= {p + s for s in ("attn.proj.weight", "attn.proj.bias")}
        keys |= {p + s for s in ("mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    return keys


def test_release_state_dict_keys_and_shapes() -> None:
    with torch.device("meta"):  # the real size, without allocating 300M parameters
        tower = VisionTower(VisionConfig(image_size=448))
    sd = tower.state_dict()
    assert set(sd) == _expected_keys(23)
    assert len(sd) == 2 + 23 * 13 + 2
    assert sd["encoder.patch_embed.proj.weight"].shape == (1024, 3, 1, 16, 16)
    assert sd["encoder.blocks.22.attn.qkv.weight"].shape == (3072, 1024)
    assert sd["encoder.blocks.0.attn.q_bias"].shape == (1024,)
    assert sd["encoder.blocks.0.mlp.fc1.weight"].shape == (4096, 1024)
    assert sd["encoder.blocks.0.mlp.fc2.weight"].shape == (1024, 4096)
    first: Any = tower.encoder.blocks[0]
    assert first.norm1.eps == 1e-6
    assert tower.encoder.vision_layernorm.eps == 1e-12


def test_tiny_tower_keys_and_deterministic_init() -> None:
    a = VisionTower(TINY).init_random(0)
    b = VisionTower(TINY).init_random(0)
    c = VisionTower(TINY).init_random(1)
    assert set(a.state_dict()) == _expected_keys(TINY.layers)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    key = "encoder.blocks.0.attn.q_bias"
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])


# ---------------------------------------------------------------- tower forward


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def reference_tower(sd: dict[str, Tensor], cfg: VisionConfig, x: Tensor) -> Tensor:
    """Straight-line UMT forward from a state dict, written without the model's modules."""
    b, _, t, s, _ = x.shape
    p, g, c, heads = cfg.patch_size, s // cfg.patch_size, cfg.width, cfg.heads
    # Patches in (t, h, w) order, each flattened as (channel, row, col) like the Conv3d kernel.
    patches = x.reshape(b, 3, t, g, p, g, p).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * g * g, 3 * p * p)
    w = sd["encoder.patch_embed.proj.weight"].reshape(c, -1)
    h = patches @ w.T + sd["encoder.patch_embed.proj.bias"]
    assert g == cfg.base_grid and t == cfg.clip_frames, "the reference knows only the base table"
    h = h + sinusoid_table(t * g * g, c)
    for i in range(cfg.layers):
        k = f"encoder.blocks.{i}."
        y = _layer_norm(h, sd[k + "norm1.weight"], sd[k + "norm1.bias"], 1e-6)
        qkv = y @ sd[k + "attn.qkv.weight"].T
        q, kk, v = qkv.split(c, dim=-1)
        q = q + sd[k + "attn.q_bias"]  # no bias on k
        v = v + sd[k + "attn.v_bias"]
        d = c // heads
        q, kk, v = (z.reshape(b, -1, heads, d).transpose(1, 2) for z in (q, kk, v))
        att = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(d), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, -1, c)
        h = h + o @ sd[k + "attn.proj.weight"].T + sd[k + "attn.proj.bias"]
        y = _layer_norm(h, sd[k + "norm2.weight"], sd[k + "norm2.bias"], 1e-6)
        y = y @ sd[k + "mlp.fc1.weight"].T + sd[k + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
        h = h + y @ sd[k + "mlp.fc2.weight"].T + sd[k + "mlp.fc2.bias"]
    return _layer_norm(h, sd["encoder.vision_layernorm.weight"], sd["encoder.vision_layernorm.bias"], 1e-12)


def _clips(n: int, cfg: VisionConfig, frames: int = 4, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, frames, cfg.image_size, cfg.image_size, generator=g)


@torch.inference_mode()
def test_tower_matches_reference_forward() -> None:
    tower = VisionTower(TINY).init_random(0).eval()
    x = _clips(2, TINY)
    out = tower(x)
    assert out.shape == (2, 784, TINY.width)
    want = reference_tower(tower.state_dict(), TINY, x)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_batched_clips_equal_clips_one_by_one() -> None:
    tower = VisionTower(TINY).init_random(2).eval()
    x = _clips(3, TINY, seed=5)
    together = tower(x)
    for i in range(3):
        torch.testing.assert_close(together[i : i + 1], tower(x[i : i + 1]), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_tower_at_448_gives_3136_tokens_and_other_frame_counts_work() -> None:
    cfg = replace(TINY, image_size=448, layers=1)
    tower = VisionTower(cfg).init_random(0).eval()
    assert tower(_clips(1, cfg)).shape == (1, 3136, cfg.width)
    assert tower(_clips(1, cfg, frames=1)).shape == (1, 784, cfg.width)  # a lone image
    assert VisionTower(TINY).init_random(0)(_clips(1, TINY, frames=8)).shape == (1, 8 * 196, TINY.width)


def test_tower_rejects_wrong_frame_size() -> None:
    tower = VisionTower(TINY).init_random(0)
    with pytest.raises(ValueError, match="224x224"):
        tower(torch.zeros(1, 3, 4, 448, 448))
    with pytest.raises(ValueError, match=r"\[B, 3, T, S, S\]"):
        tower(torch.zeros(4, 3, 224, 224))


# ---------------------------------------------------------------- projector


def test_projector_keys_and_forward() -> None:
    proj = Projector(64, 48).init_random(0)
    sd = proj.state_dict()
    assert set(sd) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    assert sd["mlp.0.weight"].shape == (48, 64)
    assert sd["mlp.2.weight"].shape == (48, 48)
    x = torch.randn(3, 64, 64)
    y = x @ sd["mlp.0.weight"].T + sd["mlp.0.bias"]
    y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))  # exact GELU, not the tanh form
    want = y @ sd["mlp.2.weight"].T + sd["mlp.2.bias"]
    torch.testing.assert_close(proj(x), want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- pre-processing


def _normalised(rgb: tuple[int, int, int]) -> Tensor:
    return torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD, strict=True)])


def test_preprocess_shape_order_and_normalisation() -> None:
    # 2 clips x 3 frames of flat colours, 90x160 (not square: the resize ignores the aspect ratio)
    colours = [[(255, 128, 0), (0, 0, 0), (10, 20, 30)], [(255, 255, 255), (1, 2, 3), (200, 100, 50)]]
    frames = np.zeros((2, 3, 90, 160, 3), dtype=np.uint8)
    for n in range(2):
        for t in range(3):
            frames[n, t] = colours[n][t]
    out = preprocess_clips(frames, 224)
    assert out.shape == (2, 3, 3, 224, 224)
    assert out.dtype == torch.float32
    for n in range(2):
        for t in range(3):
            want = _normalised(colours[n][t])
            got = out[n, :, t]  # [3, S, S]
            torch.testing.assert_close(got, want.view(3, 1, 1).expand_as(got), atol=1e-6, rtol=0)


def test_preprocess_resizes_without_crop() -> None:
    # Left half black, right half white at 448: after the resize to 224 the halves stay where they were
    # (a centre crop would not change this, but a crop of a 448x896 frame would: it must be squashed).
    frames = np.zeros((1, 1, 448, 896, 3), dtype=np.uint8)
    frames[..., 448:, :] = 255
    out = preprocess_clips(torch.from_numpy(frames), 224)
    black, white = _normalised((0, 0, 0)), _normalised((255, 255, 255))
    torch.testing.assert_close(out[0, :, 0, :, :100], black.view(3, 1, 1).expand(3, 224, 100))
    torch.testing.assert_close(out[0, :, 0, :, 124:], white.view(3, 1, 1).expand(3, 224, 100))


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess_clips(np.zeros((1, 4, 8, 8, 3), dtype=np.float32), 224)
    with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
        preprocess_clips(np.zeros((4, 8, 8, 3), dtype=np.uint8), 224)
    with pytest.raises(ValueError, match="empty"):
        preprocess_clips(np.zeros((1, 0, 8, 8, 3), dtype=np.uint8), 224)


def _release_pixels(frames: np.ndarray, size: int) -> np.ndarray:
    """The release's UMTImageProcessor steps, run with transformers' own functions (which use Pillow).

    frames: [F, H, W, 3] uint8 -> [F, 3, S, S] float32.
    """
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    first = ChannelDimension.FIRST
    out = []
    for frame in frames:
        x = resize(frame, (size, size), resample=PILImageResampling.BICUBIC, data_format=first)
        x = rescale(x, 1 / 255, data_format=first)
        out.append(normalize(x, IMAGENET_MEAN, IMAGENET_STD, data_format=first))
    return np.stack(out)


@pytest.mark.parametrize(("height", "width", "size"), [(90, 160, 224), (360, 640, 448), (50, 70, 224)])
def test_preprocess_is_bit_identical_to_the_release_processor(height: int, width: int, size: int) -> None:
    # Noise plus hard edges: the pixels where a float or torch resize would round differently.
    rng = np.random.default_rng(height)
    frames = rng.integers(0, 256, (1, 4, height, width, 3), dtype=np.uint8)
    frames[0, 1, :, : width // 3] = 255
    frames[0, 2, height // 2 :] = 0
    out = preprocess_clips(frames, size)  # [1, 3, 4, S, S]
    want = torch.from_numpy(_release_pixels(frames[0], size))  # [4, 3, S, S]
    assert torch.equal(out[0].permute(1, 0, 2, 3), want)


def test_torch_resize_stays_within_one_level_of_pillow() -> None:
    # The GPU path: torch's antialiased bicubic in Pillow's two rounded passes, against Pillow.
    from flashlive.model.preprocess import resize_frames_pil, resize_frames_torch

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 300, 500, 3), dtype=np.uint8)
    frames[:, 100:200, 100:300] = 255
    for size in (224, 448):  # shrinking and enlarging
        pil = torch.from_numpy(resize_frames_pil(frames, size)).permute(0, 3, 1, 2).int()
        tch = resize_frames_torch(torch.from_numpy(frames).permute(0, 3, 1, 2), size).int()
        diff = (pil - tch).abs()
        assert int(diff.max()) <= 1, size
        assert float((diff > 0).float().mean()) < 0.001, size


@pytest.mark.cuda
def test_preprocess_keeps_gpu_frames_on_the_gpu() -> None:
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (1, 4, 120, 160, 3), dtype=np.uint8)
    gpu = preprocess_clips(torch.from_numpy(frames).cuda(), 224)
    cpu = preprocess_clips(frames, 224)
    assert gpu.device.type == "cuda"
    # One level of 255 after normalisation: at most 1 / 255 / min(std).
    assert float((gpu.cpu() - cpu).abs().max()) <= 1 / 255 / min(IMAGENET_STD) + 1e-6
