"""Assembling the model: the clip encoder for ingest, and the question answerer for workers.

The two halves load separately on purpose: ingest needs only the tower (no LLM in memory), workers
need only projector + LLM (tokens come from memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from flashlive.model.checkpoint import (
    PROJECTOR_PREFIX,
    TOWER_PREFIX,
    llm_key,
    load_strict,
    preset_or_dir,
    projector_key,
    read_tensors,
    resolve_dtype,
    tower_key,
)
from flashlive.model.config import FlashConfig
from flashlive.model.device import resolve_device
from flashlive.model.llm import Qwen2LM, random_init_
from flashlive.model.merge import hico_merge
from flashlive.model.preprocess import preprocess_clips
from flashlive.model.projector import Projector
from flashlive.model.vision import VisionTower

log = logging.getLogger(__name__)

M = TypeVar("M", bound=torch.nn.Module)

# Seeds for the generated weights of presets without a checkpoint; one per part, so loading the
# tower alone gives the same tower as loading everything.
TOWER_SEED_OFFSET, PROJECTOR_SEED_OFFSET, LLM_SEED_OFFSET = 0, 1, 2


@dataclass
class LoadedSpec:
    cfg: FlashConfig
    ckpt: Path | None
    device: str
    dtype: torch.dtype


def resolve(spec: str, *, device: str = "cpu", dtype: str = "auto", download: bool = False) -> LoadedSpec:
    device = resolve_device(device)
    cfg, ckpt = preset_or_dir(spec, download=download)
    return LoadedSpec(cfg, ckpt, device, resolve_dtype(dtype, device))


def load_part(
    module: M,
    spec: LoadedSpec,
    *,
    part: str,
    prefix: str,
    select: Callable[[str], str | None],
    seed_offset: int,
    init_random: Callable[[M, int], object],
    progress: bool = False,
) -> M:
    """Fill `module` from the checkpoint (keys under `prefix`) or, for seeded presets, from its seed."""
    if spec.ckpt is None:
        assert spec.cfg.seed is not None
        init_random(module, spec.cfg.seed + seed_offset)
    else:
        tensors = read_tensors(spec.ckpt, select, dtype=spec.dtype, progress=progress)
        load_strict(module, tensors, part, prefix=prefix)
    return module.to(spec.device, spec.dtype).eval()


def build_tower(spec: LoadedSpec, *, progress: bool = False) -> VisionTower:
    return load_part(
        VisionTower(spec.cfg.vision),
        spec,
        part="vision tower",
        prefix=TOWER_PREFIX,
        select=tower_key,
        seed_offset=TOWER_SEED_OFFSET,
        init_random=VisionTower.init_random,
        progress=progress,
    )


def build_projector(spec: LoadedSpec, *, progress: bool = False) -> Projector:
    return load_part(
        Projector(spec.cfg.vision.width, spec.cfg.llm.hidden_size),
        spec,
        part="projector",
        prefix=PROJECTOR_PREFIX,
        select=projector_key,
        seed_offset=PROJECTOR_SEED_OFFSET,
        init_random=Projector.init_random,
        progress=progress,
    )


def build_llm(spec: LoadedSpec, *, progress: bool = False) -> Qwen2LM:
    return load_part(
        Qwen2LM(spec.cfg.llm),
        spec,
        part="LLM",
        prefix="",
        select=llm_key,
        seed_offset=LLM_SEED_OFFSET,
        init_random=random_init_,
        progress=progress,
    )


class TowerEncoder:
    """ClipEncoder: uint8 clips -> HiCo tokens (fp16), batched, on CPU or CUDA."""

    def __init__(self, cfg: FlashConfig, tower: VisionTower, *, device: str, batch_size: int = 4) -> None:
        self.cfg = cfg
        self.tower = tower
        self.device = device
        self.batch_size = batch_size
        self.encoder_id = cfg.encoder_id
        self.clip_frames = cfg.vision.clip_frames
        self.tokens_per_clip = cfg.merge.tokens_per_clip
        self.width = cfg.vision.width

    @torch.inference_mode()
    def encode(self, clips: np.ndarray) -> np.ndarray:
        # clips: [N, T, H, W, 3] uint8 -> [N, 64, C] float16
        if clips.ndim != 5 or clips.shape[1] != self.clip_frames:
            raise ValueError(f"expected clips as [N, {self.clip_frames}, H, W, 3], got {clips.shape}")
        out = []
        for i in range(0, len(clips), self.batch_size):
            pixels = preprocess_clips(clips[i : i + self.batch_size], self.cfg.vision.image_size)
            features = self.tower(pixels.to(self.device))  # [b, P, C]
            merged, _ = hico_merge(features, self.tokens_per_clip, metric_chunks=self.cfg.merge.metric_chunks)
            out.append(merged.to("cpu", torch.float16).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.tokens_per_clip, self.width), np.float16)


def load_tower_encoder(
    model: str = "tiny", *, device: str = "cpu", dtype: str = "auto", download: bool = False
) -> TowerEncoder:
    spec = resolve(model, device=device, dtype=dtype, download=download)
    return TowerEncoder(spec.cfg, build_tower(spec, progress=spec.ckpt is not None), device=spec.device)
