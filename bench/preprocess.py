"""Frame pre-processing cost: Pillow bicubic (the release's resize, used on the CPU) vs torch's uint8
antialiased bicubic (kept for frames already on a GPU), per 4-frame clip, at 224 and 448.

Both variants run in the same process on the same frames, so the ratio is what to read on a noisy
machine. Also reports how many pixels the two disagree on and by how much, and the time of the whole
`preprocess_clips` (resize + normalisation table) per clip. Prints one JSON object.

    python bench/preprocess.py [--repeats 5] [--sources 640x360,1280x720,1920x1080]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from flashlive.model.preprocess import preprocess_clips, resize_frames_pil, resize_frames_torch


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _frames(width: int, height: int) -> np.ndarray:
    """4 frames of smooth gradients with noise and hard edges, like a camera image with overlays."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], -1)
    frames = np.repeat(base[None], 4, axis=0).astype(np.int16)
    frames += rng.integers(-20, 21, frames.shape, dtype=np.int16)
    frames[:, height // 4 : height // 2, width // 4 : width // 2] = 255
    return np.clip(frames, 0, 255).astype(np.uint8)  # [4, H, W, 3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sources", default="640x360,1280x720,1920x1080")
    args = ap.parse_args(argv)

    results: dict[str, dict[str, object]] = {}
    for source in args.sources.split(","):
        width, height = (int(v) for v in source.split("x"))
        frames = _frames(width, height)
        chw = torch.from_numpy(frames).permute(0, 3, 1, 2)  # [4, 3, H, W] uint8
        for size in (224, 448):
            pil_s = _median_s(lambda: resize_frames_pil(frames, size), args.repeats)  # noqa: B023
            torch_s = _median_s(lambda: resize_frames_torch(chw, size), args.repeats)  # noqa: B023
            full_s = _median_s(lambda: preprocess_clips(frames[None], size), args.repeats)  # noqa: B023
            pil = torch.from_numpy(resize_frames_pil(frames, size)).permute(0, 3, 1, 2).int()
            diff = (pil - resize_frames_torch(chw, size).int()).abs()
            results[f"{source}->{size}"] = {
                "pillow_resize_s_per_clip": pil_s,
                "torch_resize_s_per_clip": torch_s,
                "torch_over_pillow": torch_s / pil_s,
                "preprocess_clips_s_per_clip": full_s,
                "pixels_differing": float((diff > 0).float().mean()),
                "max_level_difference": int(diff.max()),
            }

    report = {
        "bench": "preprocess",
        "what": "resize of one 4-frame uint8 clip straight to SxS; preprocess_clips = Pillow resize + table",
        "runs": f"median of {args.repeats} after one warm-up, both variants in this process",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
