"""GPU figures: bf16 against fp32, the UMT-L tower's clips per second, prefill and time to first token
at Qwen2-7B's width and full depth (28 layers), dropout off against the model card's recipe.

python bench/gpu.py [--sections parity,tower,prefill] [--clips 15,128,150,900]  ->  JSON on stdout

Needs a CUDA device (the numbers in docs/benchmarks.md name the one they came from). Random weights
throughout; the speed of a matrix product does not depend on its values.

- parity: two clips of the generated world (model/world) through UMT-L@448 (real width, 23 blocks,
  seeded random weights) in fp32 and in bf16: cosine of the tower's features; HiCo merging of each,
  and of the fp32 features merged in bf16, compared by each output token's size (how many input
  tokens it stands for: the merge's selection) and by cosine; the tiny preset's LLM answering world
  questions greedily in fp32 and bf16 on the GPU and fp32 on the CPU: same answer text?
- tower: UMT-L at 224 and 448, bf16, batch 1, 8 and 32 clips: tower + HiCo merge, clips per second
  (CUDA events, after warm-up; preprocessing on the CPU not included: bench/preprocess.py).
- prefill: Qwen2-7B widths (hidden 3584, 28 heads / 4 KV heads, MLP 18944, rope 1e6, vocab 152064),
  28 layers, projector 1024 -> 3584, bf16, through `Engine` as a worker calls it: prefix + question
  prefill + first token (TTFT) and decode tokens per second, for each window length in `--clips`
  (128 clips = 8,192 visual tokens), dropout off / the recipe (uniform0_attention, layers [4, 18],
  ratios [1, 0.75, 0.25]) / a harsher [1, 0.5, 0.125].
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flashlive.memory.types import Clip
from flashlive.model.config import DropoutConfig, FlashConfig, LLMConfig, VisionConfig
from flashlive.model.decoding import SamplingParams
from flashlive.model.engine import Engine
from flashlive.model.llm import Qwen2LM
from flashlive.model.merge import hico_merge
from flashlive.model.pipeline import load_tower_encoder
from flashlive.model.preprocess import preprocess_clips
from flashlive.model.projector import Projector
from flashlive.model.tokenizer import load_tokenizer
from flashlive.model.vision import VisionTower
from flashlive.model.window import VideoWindow
from flashlive.model.world import Style, World

RECIPE = DropoutConfig("uniform0_attention", (4, 18), (1.0, 0.75, 0.25))
HARSH = DropoutConfig("uniform0_attention", (4, 18), (1.0, 0.5, 0.125))
QUESTIONS = ("What colour is the ball?", "How many objects are there?", "What just happened?")


def cuda_seconds(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> list[float]:
    """Seconds per call of `fn`, one CUDA-event measurement per call after `warmup` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / 1000)
    return out


def world_clips(n: int, seed: int = 3) -> np.ndarray:
    """[n, 4, H, W, 3] uint8: the world's frames at 1 fps."""
    world = World(seed=seed, style=Style.random(seed))
    frames = np.stack([f.image for f in world.frames(fps=1.0, count=4 * n) if f.image is not None])
    return frames.reshape(n, 4, *frames.shape[1:])


def bench_parity(device: str) -> dict[str, Any]:
    cfg = VisionConfig(image_size=448)
    tower = VisionTower(cfg).init_random(0).to(device).eval()
    pixels = preprocess_clips(world_clips(2), cfg.image_size).to(device)
    with torch.inference_mode():
        f32 = tower(pixels.float())
        bf16_tower = VisionTower(cfg).init_random(0).to(device, torch.bfloat16).eval()
        b16 = bf16_tower(pixels.to(torch.bfloat16)).float()
        cos = torch.nn.functional.cosine_similarity(f32, b16, dim=-1)
        m32, s32 = hico_merge(f32, 64, metric_chunks=16)
        m16, s16 = hico_merge(b16, 64, metric_chunks=16)
        mm, sm = hico_merge(f32.to(torch.bfloat16), 64, metric_chunks=16)
    del tower, bf16_tower
    out: dict[str, Any] = {
        "tower_448_feature_cosine": {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)},
        "merge_sizes_equal_bf16_tower": float((s32 == s16).float().mean()),
        "merge_sizes_equal_bf16_merge_only": float((s32 == sm.float()).float().mean()),
        "merged_cosine_bf16_tower": round(
            float(torch.nn.functional.cosine_similarity(m32, m16.float(), dim=-1).mean()), 5
        ),
        "merged_cosine_bf16_merge_only": round(
            float(torch.nn.functional.cosine_similarity(m32, mm.float(), dim=-1).mean()), 5
        ),
    }
    out["tiny_llm_answers"] = tiny_answers(device)
    return out


def tiny_answers(device: str) -> dict[str, Any]:
    """Greedy answers of the tiny preset: fp32 CPU, fp32 GPU, bf16 GPU, on the same world clips."""
    encoder = load_tower_encoder("tiny", device="cpu")
    tokens = encoder.encode(world_clips(6, seed=5))
    clips = [
        Clip("parity", 4.0 * i, 4.0 * i + 4, 4, tokens[i], encoder.encoder_id) for i in range(len(tokens))
    ]
    window = VideoWindow.from_clips(clips)
    params = SamplingParams(max_new_tokens=24, stop_ids=())
    answers: dict[str, list[str]] = {}
    for name, dev, dtype in (
        ("cpu_fp32", "cpu", "fp32"),
        ("gpu_fp32", device, "fp32"),
        ("gpu_bf16", device, "bf16"),
    ):
        engine = Engine.load("tiny", device=dev, dtype=dtype)
        answers[name] = []
        for q in QUESTIONS:
            stream = engine.answer(window, q, params=params)
            list(stream)
            assert stream.result is not None
            answers[name].append(stream.result.answer)
    same = lambda a, b: sum(x == y for x, y in zip(answers[a], answers[b], strict=True))  # noqa: E731
    return {
        "questions": len(QUESTIONS),
        "new_tokens": params.max_new_tokens,
        "same_gpu_fp32_vs_cpu_fp32": same("gpu_fp32", "cpu_fp32"),
        "same_gpu_bf16_vs_gpu_fp32": same("gpu_bf16", "gpu_fp32"),
        "answers": answers,
    }


def bench_tower(device: str, batches: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in (224, 448):
        cfg = VisionConfig(image_size=size)
        tower = VisionTower(cfg).init_random(0).to(device, torch.bfloat16).eval()
        row = {}
        for b in batches:
            x = torch.randn(b, 3, cfg.clip_frames, size, size, device=device, dtype=torch.bfloat16)

            def run(x: torch.Tensor = x, tower: VisionTower = tower) -> None:
                with torch.inference_mode():
                    hico_merge(tower(x), 64, metric_chunks=16)

            secs = cuda_seconds(run, repeat=5)
            row[f"batch_{b}"] = {
                "clips_per_s": round(b / statistics.median(secs), 1),
                "ms_per_batch": round(1000 * statistics.median(secs), 2),
            }
        out[f"umt_l_{size}"] = row
        del tower
        torch.cuda.empty_cache()
    return out


def build_engine(device: str, max_positions: int) -> Engine:
    llm_cfg = LLMConfig(rope_theta=1_000_000.0, max_position_embeddings=max_positions)
    cfg = FlashConfig(name="bench-7b", vision=VisionConfig(), llm=llm_cfg, seed=0)
    torch.manual_seed(0)
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # build in bf16 on the GPU: 15 GB, not 30
        try:
            llm = Qwen2LM(llm_cfg)
            projector = Projector(cfg.vision.width, llm_cfg.hidden_size)
        finally:
            torch.set_default_dtype(default)
    with torch.no_grad():
        for name, p in [*llm.named_parameters(), *projector.named_parameters()]:
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.02)
    return Engine(cfg, projector.eval(), llm.eval(), load_tokenizer())


def window_of(engine: Engine, n: int) -> VideoWindow:
    rng = np.random.default_rng(0)
    tokens = (rng.standard_normal((n, 64, engine.cfg.vision.width)) * 0.5).astype(np.float16)
    clips = [Clip("bench", 4.0 * i, 4.0 * i + 4, 4, tokens[i], engine.encoder_id) for i in range(n)]
    return VideoWindow.from_clips(clips)


def ttft(engine: Engine, window: VideoWindow, dropout: DropoutConfig | None, decode: int) -> dict[str, Any]:
    params = SamplingParams(max_new_tokens=decode + 1, stop_ids=())
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prefix = engine.prefix(window, dropout)
    seq = engine.add(prefix, QUESTIONS[2], params, arrival=t0)
    engine.step()
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    result = None
    while result is None:
        for out in engine.step():
            if out.seq_id == seq and out.finished:
                result = out.result
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    assert result is not None
    return {
        "ttft_s": t1 - t0,
        "prefix_s": result.timings.prefix,
        "tokens_per_s": (result.new_tokens - 1) / (t2 - t1),
        "visual_kept": result.visual_kept,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def bench_prefill(device: str, clips: list[int], decode: int, repeat: int) -> dict[str, Any]:
    engine = build_engine(device, max(32768, max(clips) * 64 + 4096))
    ttft(engine, window_of(engine, 2), None, 2)  # warm up kernels and the allocator
    out: dict[str, Any] = {}
    for n in clips:
        window = window_of(engine, n)
        rows: dict[str, list[dict[str, Any]]] = {"off": [], "recipe": [], "harsh": []}
        for _ in range(repeat):  # alternate the variants so drift hits all alike
            for name, d in (("off", None), ("recipe", RECIPE), ("harsh", HARSH)):
                torch.cuda.reset_peak_memory_stats()
                rows[name].append(ttft(engine, window, d, decode))
        row: dict[str, Any] = {"visual_tokens": n * 64}
        for name, runs in rows.items():
            row[name] = {
                "ttft_s": round(statistics.median(r["ttft_s"] for r in runs), 4),
                "prefix_s": round(statistics.median(r["prefix_s"] for r in runs), 4),
                "decode_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs), 1),
                "visual_kept": runs[0]["visual_kept"],
                "peak_gib": round(max(r["peak_gib"] for r in runs), 2),
            }
        for name in ("recipe", "harsh"):
            row[f"ttft_speedup_{name}"] = round(row["off"]["ttft_s"] / row[name]["ttft_s"], 2)
            row[f"prefix_speedup_{name}"] = round(row["off"]["prefix_s"] / row[name]["prefix_s"], 2)
        out[f"{n}_clips"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="parity,tower,prefill")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--clips", default="15,128,150,900", help="window lengths in clips (64 tokens each)")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device")
    device = "cuda"
    sections = set(args.sections.split(","))
    report: dict[str, Any] = {
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    t0 = time.perf_counter()
    if "parity" in sections:
        report["parity"] = bench_parity(device)
    if "tower" in sections:
        report["tower"] = bench_tower(device, [int(b) for b in args.batches.split(",")])
    if "prefill" in sections:
        clips = [int(c) for c in args.clips.split(",")]
        report["prefill_7b_width_28_layers_bf16"] = bench_prefill(
            device, clips, args.decode_tokens, args.repeat
        )
    report["total_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
