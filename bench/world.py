"""Speed of the generated world: frames rendered per second and ground-truth/question generation.

Variants are measured in the same run, so their ratios hold on a noisy machine:
- plain 224x224 and 448x448 (flat colours, solid background): the renderer's floor;
- "styled": textures, gradient/stripes/noise backgrounds, sensor noise, blur;
- the codec-artefact paths: JPEG round trip per frame, x264 round trip per run of frames;
- random styles at their native sizes (144-400 px short side, any aspect), one fresh world per
  16-frame video, as training draws them;
- ground truth alone (what a 3,000-frame haystack costs before rendering), questions on it, and one
  NIAH item end to end.
Prints one JSON object.

    python bench/world.py [--frames 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

from flashlive.model.world import KINDS, Style, World, ask, make_niah

STYLED = {
    "backgrounds": ("gradient", "stripes", "noise"),
    "background": None,
    "textures": True,
    "shade": True,
    "noise": 4.0,
    "blur": True,
}


def per_frame_ms(make_world: Callable[[int], World], frames: int, video: int | None = None) -> float:
    """Mean ms per sampled frame at 1 fps; with `video`, a new world every `video` frames."""
    count = 0
    t0 = time.perf_counter()
    seed = 0
    while count < frames:
        n = video or frames
        for frame in make_world(seed).frames(1.0, 0.0, n):
            assert frame.image is not None
            count += 1
        seed += 1
    return (time.perf_counter() - t0) / count * 1e3


def render_rows(frames: int) -> dict[str, dict[str, float]]:
    def style(size: int, **kw: object) -> Callable[[int], World]:
        return lambda seed: World(seed, style=Style(width=size, height=size, **kw))  # type: ignore[arg-type]

    variants: dict[str, tuple[Callable[[int], World], int | None]] = {
        "plain_224": (style(224), None),
        "plain_448": (style(448), None),
        "styled_224": (style(224, **STYLED), None),
        "styled_448": (style(448, **STYLED), None),
        "jpeg_224": (style(224, **STYLED, codec="jpeg", quality=50), None),
        "jpeg_448": (style(448, **STYLED, codec="jpeg", quality=50), None),
        "h264_224": (style(224, **STYLED, codec="h264", quality=28), None),
        "h264_448": (style(448, **STYLED, codec="h264", quality=28), None),
        "random_style_fresh_world_per_16": (lambda seed: World(seed, style=Style.random(seed)), 16),
    }
    per_frame_ms(style(224), 32)  # warm caches and imports
    rows = {}
    for name, (make, video) in variants.items():
        ms = per_frame_ms(make, frames, video)
        rows[name] = {"ms_per_frame": round(ms, 3), "frames_per_s": round(1e3 / ms, 1)}
    base = rows["plain_224"]["ms_per_frame"]
    for row in rows.values():
        row["x_plain_224"] = round(row["ms_per_frame"] / base, 2)
    return rows


def truth_rows() -> dict[str, float]:
    world = World(1)
    t0 = time.perf_counter()
    video = world.video(0.0, 3000)
    t_truth = time.perf_counter() - t0
    t0 = time.perf_counter()
    qas = ask(video, np.random.default_rng(0), [k for k in KINDS if k != "caption"])
    t_ask = time.perf_counter() - t0
    t0 = time.perf_counter()
    for seed in range(5):
        make_niah(seed, frames=3000, depth=0.5, hops=2)
    t_niah = (time.perf_counter() - t0) / 5
    short = [World(s).video(0.0, 16) for s in range(50)]
    t0 = time.perf_counter()
    for s, v in enumerate(short):
        ask(v, np.random.default_rng(s), [k for k in KINDS if k != "caption"])
    t_short = (time.perf_counter() - t0) / len(short)
    return {
        "truth_us_per_frame": round(t_truth / 3000 * 1e6, 1),
        "ask_all_kinds_3000_frames_s": round(t_ask, 3),
        "questions_on_3000_frames": len(qas),
        "niah_2hop_3000_frames_s": round(t_niah, 3),
        "ask_all_kinds_16_frames_ms": round(t_short * 1e3, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=400, help="frames per variant")
    args = ap.parse_args()
    if args.frames < 16:
        print("--frames must be at least 16", file=sys.stderr)
        return 2
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "frames_per_variant": args.frames,
        "render": render_rows(args.frames),
        "truth_and_questions": truth_rows(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
