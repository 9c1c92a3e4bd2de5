"""The `mini` preset on the CPU: its size, the tower per clip at 224 and 448, and one answer over N clips.

python bench/mini.py [--clips 60] [--new-tokens 8]  ->  JSON on stdout.

Runs `mini-random` (the mini shape with random weights: the same work as the trained weights, which may
not be there yet; its tower also at 224, as the `mini-224` preset runs it) through the same paths as the
service: `TowerEncoder.encode` (pre-processing, tower, HiCo merge) for ingest, `Engine` (projector,
prefix prefill, the question's prefill, decode) for a worker. The answer is forced to `--new-tokens`
tokens (no stop ids), since random weights never stop by themselves; dropout off (the service's default)
and the model card's recipe at mini's depths (layers [1, 4] of 6) on the same window. Both wall seconds
and process CPU seconds are reported: on a
shared machine CPU seconds are the steadier measure, and the ratios use them.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flashlive.model.checkpoint import SINGLE_FILE, save_checkpoint
from flashlive.model.config import FlashConfig
from flashlive.model.decoding import SamplingParams
from flashlive.model.engine import Engine
from flashlive.model.pipeline import TowerEncoder, build_llm, build_projector, build_tower, resolve
from flashlive.model.vision import VisionTower
from flashlive.model.window import VideoWindow
from flashlive.model.world import Style, World

QUESTION = "What colour is the ball?"


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> dict[str, float]:
    wall, cpu = clocks()
    return {"wall_s": round(wall - t[0], 3), "cpu_s": round(cpu - t[1], 3)}


def world_clips(n: int, size: tuple[int, int] = (400, 300)) -> np.ndarray:
    """n 4-frame clips of a generated world at 1 fps: [n, 4, H, W, 3] uint8."""
    world = World(1, style=Style(width=size[0], height=size[1]))
    frames = [f.image for f in world.frames(fps=1.0, count=4 * n) if f.image is not None]
    return np.stack(frames).reshape(n, 4, size[1], size[0], 3)


def tower_per_clip(image_size: int, clips: np.ndarray) -> dict[str, Any]:
    spec = resolve("mini-random")
    cfg = replace(spec.cfg, vision=replace(spec.cfg.vision, image_size=image_size))
    encoder = TowerEncoder(cfg, VisionTower(cfg.vision).init_random(0).eval(), device="cpu")
    encoder.encode(clips[:1])  # warm up
    t = clocks()
    encoder.encode(clips)
    took = since(t)
    n = len(clips)
    return {
        "patches_per_clip": cfg.vision.patches_per_clip,
        "wall_s_per_clip": round(took["wall_s"] / n, 3),
        "cpu_s_per_clip": round(took["cpu_s"] / n, 3),
    }


def answer(engine: Engine, window: VideoWindow, dropout: Any, new_tokens: int) -> dict[str, Any]:
    t = clocks()
    prefix = engine.prefix(window, dropout)
    prefix_time = since(t)
    seq = engine.add(prefix, QUESTION, SamplingParams(max_new_tokens=new_tokens, stop_ids=()))
    first: dict[str, float] | None = None
    tokens = 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.seq_id == seq and out.token_id is not None:
                tokens += 1
                first = first or since(t)
    return {
        "prefix": prefix_time,
        "first_token": first,
        "answer": since(t),
        "new_tokens": tokens,
        "visual_kept": prefix.visual_kept,
    }


def size_of(cfg: FlashConfig) -> dict[str, Any]:
    spec = resolve("mini-random")
    parts = build_tower(spec), build_projector(spec), build_llm(spec)
    params = [sum(p.numel() for p in m.parameters()) for m in parts]
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), cfg, *parts)
        fp16_bytes = (Path(tmp) / SINGLE_FILE).stat().st_size
    return {
        "params": {"tower": params[0], "projector": params[1], "llm": params[2], "total": sum(params)},
        "embedding_rows": parts[2].model.embed_tokens.num_embeddings,
        "fp16_file_bytes": fp16_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--tower-clips", type=int, default=4)
    args = parser.parse_args()
    wall0 = time.perf_counter()
    engine = Engine.load("mini-random")
    cfg = engine.cfg
    clips = world_clips(args.tower_clips)
    tower = {str(size): tower_per_clip(size, clips) for size in (224, 448)}
    rng = np.random.default_rng(0)
    tokens = (rng.standard_normal((args.clips, 64, cfg.vision.width)) * 0.5).astype(np.float16)
    times = [float(i) + 0.5 for i in range(4 * args.clips)]
    window = VideoWindow.from_file(tokens, times, duration=4.0 * args.clips, name="bench")
    answer(engine, VideoWindow.from_file(tokens[:2], times[:8], duration=8.0), None, 2)  # warm up
    off = answer(engine, window, None, args.new_tokens)
    recipe = answer(engine, window, cfg.dropout, args.new_tokens)
    report = {
        "benchmark": "mini",
        "model": "mini-random (the mini shape, random weights)",
        "size": size_of(cfg),
        "tower": tower,
        "answer": {
            "clips": args.clips,
            "visual_tokens": window.visual_tokens,
            "dropout_off": off,
            "recipe": recipe,
            "recipe_layers": list(cfg.dropout.layers) if cfg.dropout else None,
            "ratio_cpu_answer": round(recipe["answer"]["cpu_s"] / off["answer"]["cpu_s"], 3),
        },
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "total_wall_s": round(time.perf_counter() - wall0, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
