"""UMT-L tower cost per 4-frame clip at 224 and 448: analytic FLOPs and measured CPU seconds.

Real width (1024, 23 blocks, 16 heads), random weights, fp32, inference mode. Also times HiCo merging on
the tower's output and reports it as a fraction of the tower time. Prints one JSON object.

    python bench/tower.py [--frames 4] [--merge-repeats 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import torch

from flashlive.model.config import MergeConfig, VisionConfig
from flashlive.model.merge import hico_merge, merge_schedule
from flashlive.model.vision import VisionTower

log = logging.getLogger(__name__)
T = TypeVar("T")


def tower_flops(cfg: VisionConfig, frames: int) -> dict[str, float]:
    """Multiply-adds x 2 for the matrix work; norms, softmax, GELU and residual adds are left out (<1%)."""
    n = frames * cfg.grid * cfg.grid  # tokens per clip
    c, m, p = cfg.width, cfg.mlp_dim, cfg.patch_size
    patch = 2 * n * (3 * p * p) * c
    qkv = 2 * n * c * 3 * c
    attn = 2 * 2 * n * n * c  # QK^T and AV over all heads: H * N^2 * D = N^2 * C each
    proj = 2 * n * c * c
    mlp = 2 * 2 * n * c * m
    block = qkv + attn + proj + mlp
    return {
        "tokens": n,
        "patch_embed": patch,
        "per_block": block,
        "per_block_attention_share": attn / block,
        "total": patch + cfg.layers * block,
    }


def _clip(cfg: VisionConfig, frames: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, frames, cfg.image_size, cfg.image_size, generator=g)


def _time(fn: Callable[[], T], repeats: int = 1) -> tuple[float, T]:
    """Median seconds over `repeats` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--merge-repeats", type=int, default=5)
    args = ap.parse_args(argv)

    base = VisionConfig()  # the release: width 1024, 23 blocks, 16 heads, MLP 4096
    merge_cfg = MergeConfig()
    t0 = time.perf_counter()
    tower = VisionTower(base).init_random(0).eval()
    init_s = time.perf_counter() - t0

    def merge(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hico_merge(feats, merge_cfg.tokens_per_clip, metric_chunks=merge_cfg.metric_chunks)

    results: dict[str, object] = {}
    with torch.inference_mode():
        tower(_clip(base, args.frames))  # warm-up: allocator, kernels, 224 position table
        for size in (224, 448):
            cfg = replace(base, image_size=size)
            with torch.device("meta"):  # a shell for this size that shares the warm tower's weights
                sized = VisionTower(cfg)
            sized.encoder = tower.encoder
            x = _clip(cfg, args.frames)
            tower_s, feats = _time(lambda: sized(x))  # noqa: B023 (called right here)
            merge_s, _ = _time(lambda: merge(feats), args.merge_repeats)  # noqa: B023
            flops = tower_flops(cfg, args.frames)
            results[str(size)] = {
                "flops": flops,
                "tflops_total": flops["total"] / 1e12,
                "tower_s_per_clip": tower_s,
                "tower_gflops_per_s": flops["total"] / tower_s / 1e9,
                "merge_schedule": merge_schedule(int(flops["tokens"]), merge_cfg.tokens_per_clip),
                "merge_s_per_clip": merge_s,
                "merge_fraction_of_tower": merge_s / tower_s,
            }

    r224, r448 = results["224"], results["448"]
    assert isinstance(r224, dict) and isinstance(r448, dict)
    report = {
        "bench": "tower",
        "model": "UMT-L width 1024, 23 blocks, 16 heads, random weights, fp32, torch.inference_mode",
        "frames_per_clip": args.frames,
        "runs": "1 warm-up clip at 224, then 1 timed clip per size; merge: median of "
        f"{args.merge_repeats} on that clip's tower output",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "init_random_s": init_s,
        "results": results,
        "ratio_448_over_224": {
            "flops": r448["tflops_total"] / r224["tflops_total"],
            "seconds": r448["tower_s_per_clip"] / r224["tower_s_per_clip"],
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
